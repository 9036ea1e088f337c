"""The timeline a checkpointed run keeps in its store, for ``abl report`` and ``--watch``.

A store holds one entry per item but nothing about *when* things happened: how fast items
finished, when 429s came, what each rate-limit scope allowed and achieved, how slow each
model answered. `TimelineRecorder` aggregates that on the workers' path (counters, a
log-bucket latency histogram per model, a bounded heap of the slowest items) and the run
writes it to the store's metadata every ``ProcessorConfig.timeline_interval`` seconds:

* ``timeline:<session>:<chunk>``: a JSON list of up to `CHUNK_POINTS` intervals;
* ``timeline:<session>:summary``: latency histograms, the slowest items, start and update
  times, and whether the run has ended.

Only the current chunk and the summary are rewritten at each interval, so the cost does not
grow with the length of the run, and the size of it all does not grow with its number of
items. `read_timeline` decodes what any number of sessions wrote.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from async_batch_llm.report._model import IntervalPoint, ItemRow, LatencyStats, ScopePoint

if TYPE_CHECKING:
    from async_batch_llm._internal.instruments import Attempt, StrategyFacts
    from async_batch_llm._internal.values import WorkItemResult
    from async_batch_llm.rate_control import ScopeSnapshot
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = [
    "CHUNK_POINTS",
    "LatencyHistogram",
    "TimelineData",
    "TimelineRecorder",
    "read_timeline",
]

TIMELINE_PREFIX = "timeline:"
CHUNK_POINTS = 120
SLOWEST_KEPT = 20

# Latency buckets: geometric, 5% apart, from 1 ms; a percentile read from them is off by at
# most 5%, and a whole day fits in about 400 buckets (sparse: only used ones are stored).
_BUCKET_BASE = 0.001
_BUCKET_GROWTH = 1.05
_LOG_GROWTH = math.log(_BUCKET_GROWTH)


def _bucket(seconds: float) -> int:
    if seconds <= _BUCKET_BASE:
        return 0
    return 1 + int(math.log(seconds / _BUCKET_BASE) / _LOG_GROWTH)


def _bucket_upper(index: int) -> float:
    return float(_BUCKET_BASE * _BUCKET_GROWTH**index)


class LatencyHistogram:
    """Call durations of one model, in geometric buckets (mergeable across runs)."""

    __slots__ = ("buckets", "count", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        index = _bucket(seconds)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count
        self.max = max(self.max, other.max)

    def percentile(self, fraction: float) -> float:
        if not self.count:
            return 0.0
        rank = fraction * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_bucket_upper(index), self.max)
        return self.max

    def to_json(self) -> dict[str, Any]:
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "max": self.max}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        histogram = cls()
        for key, count in dict(data.get("buckets") or {}).items():
            histogram.buckets[int(key)] = int(count)
        histogram.count = sum(histogram.buckets.values())
        histogram.max = float(data.get("max") or 0.0)
        return histogram


class _Interval:
    __slots__ = (
        "attempts",
        "cost",
        "failed",
        "input_tokens",
        "output_tokens",
        "priced",
        "rate_limited",
        "replayed",
        "succeeded",
        "wait_count",
        "wait_sum",
    )

    def __init__(self) -> None:
        self.succeeded = self.failed = self.replayed = self.attempts = self.rate_limited = 0
        self.input_tokens = self.output_tokens = self.wait_count = 0
        self.wait_sum = self.cost = 0.0
        self.priced = False


class TimelineRecorder:
    """Aggregates a run's items and calls into intervals (a listener of `Instruments`).

    Args:
        session: The store session (run number) the timeline belongs to.
        interval: Seconds between samples (informational: the run calls `flush`).
        scopes: The rate-limit scopes' current state (adaptive rate control), or ``None``.
        clock: Wall-clock time (Unix seconds).
    """

    def __init__(
        self,
        session: int,
        *,
        interval: float,
        scopes: Callable[[], Iterable[ScopeSnapshot]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.interval = interval
        self._scopes = scopes
        self._clock = clock
        self.started_at = clock()
        self._last_flush = self.started_at
        self._current = _Interval()
        self._points: list[dict[str, Any]] = []  # the open chunk
        self._chunk = 0
        self._scope_totals: dict[str, tuple[int, int]] = {}  # admitted, rate limited
        self.in_flight = 0
        self.latency: dict[str, LatencyHistogram] = {}
        self._slowest: list[tuple[float, str, str, int]] = []  # a min-heap of the slowest

    # -- listener hooks ----------------------------------------------------------------------

    def item_started(self, item_id: str, facts: StrategyFacts) -> Any:
        return time.monotonic(), facts

    def item_ended(self, token: Any, result: WorkItemResult[Any, Any] | None) -> None:
        if result is None:
            return
        started, facts = token
        current = self._current
        if result.success:
            current.succeeded += 1
        else:
            current.failed += 1
        seconds = time.monotonic() - started
        slowest = self._slowest
        entry = (seconds, result.item_id, facts.model_key, result.attempts)
        if len(slowest) < SLOWEST_KEPT:
            heapq.heappush(slowest, entry)
        elif seconds > slowest[0][0]:
            heapq.heapreplace(slowest, entry)

    def attempt_started(self, attempt: Attempt) -> None:
        self.in_flight += 1
        current = self._current
        current.attempts += 1
        current.wait_sum += attempt.waited
        current.wait_count += 1

    def attempt_ended(
        self,
        attempt: Attempt,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
        scope: str | None,
    ) -> None:
        self.in_flight -= 1
        current = self._current
        rate_limited = info is not None and info.is_rate_limit
        if rate_limited:
            current.rate_limited += 1
        else:
            key = attempt.facts.model_key
            histogram = self.latency.get(key)
            if histogram is None:
                histogram = self.latency[key] = LatencyHistogram()
            histogram.add(time.monotonic() - attempt.started)
        if usage:
            current.input_tokens += usage.get("input_tokens", 0)
            current.output_tokens += usage.get("output_tokens", 0)
            cost = attempt.facts.cost(usage)
            if cost is not None:
                current.cost += cost
                current.priced = True

    def item_replayed(self, item_id: str, facts: StrategyFacts, result: Any) -> None:
        self._current.replayed += 1

    # -- sampling ----------------------------------------------------------------------------

    def flush(self, *, final: bool = False) -> dict[str, str]:
        """Close the current interval; the metadata keys to write (chunk and summary)."""
        now = self._clock()
        current, self._current = self._current, _Interval()
        point = IntervalPoint(
            at=now,
            elapsed=now - self.started_at,
            session=self.session,
            seconds=max(now - self._last_flush, 1e-9),
            succeeded=current.succeeded,
            failed=current.failed,
            replayed=current.replayed,
            attempts=current.attempts,
            rate_limited=current.rate_limited,
            input_tokens=current.input_tokens,
            output_tokens=current.output_tokens,
            cost_usd=current.cost if current.priced else None,
            in_flight=self.in_flight,
            admission_wait=current.wait_sum / current.wait_count if current.wait_count else 0.0,
        )
        record = asdict(point)
        record["scopes"] = [asdict(scope) for scope in self._sample_scopes(now, point.seconds)]
        self._last_flush = now
        if len(self._points) >= CHUNK_POINTS:
            self._chunk += 1
            self._points = []
        self._points.append(record)
        prefix = f"{TIMELINE_PREFIX}{self.session}:"
        summary = {
            "session": self.session,
            "started_at": self.started_at,
            "updated_at": now,
            "interval": self.interval,
            "ended": final,
            "in_flight": self.in_flight,
            "latency": {model: h.to_json() for model, h in self.latency.items()},
            "slowest": [
                {"seconds": s, "item_id": i, "model": m, "attempts": a}
                for s, i, m, a in sorted(self._slowest, reverse=True)
            ],
        }
        return {
            f"{prefix}{self._chunk:06d}": _dumps(self._points),
            f"{prefix}summary": _dumps(summary),
        }

    def _sample_scopes(self, now: float, seconds: float) -> list[ScopePoint]:
        if self._scopes is None:
            return []
        try:
            snapshots = list(self._scopes())
        except Exception:
            return []
        points = []
        elapsed = now - self.started_at
        for snapshot in snapshots:
            name = str(snapshot.scope)
            admitted_before, limited_before = self._scope_totals.get(name, (0, 0))
            self._scope_totals[name] = (snapshot.admitted, snapshot.rate_limited)
            points.append(
                ScopePoint(
                    at=now,
                    elapsed=elapsed,
                    scope=name,
                    limit_rpm=snapshot.requests_per_minute,
                    limit_source=snapshot.request_limit_source,
                    achieved_rpm=(snapshot.admitted - admitted_before) / seconds * 60.0,
                    rate_limited=snapshot.rate_limited - limited_before,
                    utilisation=snapshot.utilisation,
                    paused=snapshot.paused_for > 0,
                )
            )
        return points


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)


# -- reading -------------------------------------------------------------------------------


class TimelineData:
    """What every session recorded, merged: intervals, scope points, latency, slowest."""

    def __init__(self) -> None:
        self.points: list[IntervalPoint] = []
        self.scopes: list[ScopePoint] = []
        self.latency: dict[str, LatencyHistogram] = {}
        self.slowest: list[ItemRow] = []
        self.sessions: dict[int, dict[str, Any]] = {}
        """The summary of each session that recorded a timeline, by session number."""

    @property
    def started_at(self) -> float | None:
        starts = [s["started_at"] for s in self.sessions.values() if s.get("started_at")]
        return min(starts) if starts else None

    def latency_stats(self) -> list[LatencyStats]:
        return [
            LatencyStats(
                model=model,
                calls=h.count,
                p50=h.percentile(0.5),
                p90=h.percentile(0.9),
                p99=h.percentile(0.99),
                max=h.max,
            )
            for model, h in sorted(self.latency.items())
            if h.count
        ]


_POINT_FIELDS = frozenset(IntervalPoint.__dataclass_fields__)
_SCOPE_FIELDS = frozenset(ScopePoint.__dataclass_fields__)


def read_timeline(meta: Mapping[str, str]) -> TimelineData:
    """Decode the timeline keys of a store's metadata (malformed values are skipped)."""
    data = TimelineData()
    slowest: list[tuple[float, ItemRow]] = []
    for key in sorted(k for k in meta if k.startswith(TIMELINE_PREFIX)):
        try:
            value = json.loads(meta[key])
            if key.endswith(":summary"):
                session = int(value["session"])
                data.sessions[session] = value
                for model, histogram in dict(value.get("latency") or {}).items():
                    merged = data.latency.setdefault(model, LatencyHistogram())
                    merged.merge(LatencyHistogram.from_json(histogram))
                for row in value.get("slowest") or ():
                    seconds = float(row["seconds"])
                    slowest.append(
                        (
                            seconds,
                            ItemRow(
                                item_id=str(row["item_id"]),
                                model=row.get("model"),
                                seconds=seconds,
                                attempts=int(row.get("attempts") or 0),
                            ),
                        )
                    )
                continue
            for record in value:
                scopes = record.get("scopes") or ()
                data.points.append(
                    IntervalPoint(**{k: v for k, v in record.items() if k in _POINT_FIELDS})
                )
                for scope in scopes:
                    data.scopes.append(
                        ScopePoint(**{k: v for k, v in scope.items() if k in _SCOPE_FIELDS})
                    )
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    data.points.sort(key=lambda point: point.at)
    data.scopes.sort(key=lambda point: point.at)
    slowest.sort(key=lambda pair: pair[0], reverse=True)
    # An item rerun in a later session may appear twice: keep its slowest run.
    seen: set[str] = set()
    for _, row in slowest:
        if row.item_id not in seen and len(data.slowest) < SLOWEST_KEPT:
            seen.add(row.item_id)
            data.slowest.append(row)
    return data
