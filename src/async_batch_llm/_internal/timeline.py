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

import bisect
import functools
import heapq
import json
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.instruments import (
    FactsCache,
    StrategyFacts,
    read_scopes,
)
from async_batch_llm._internal.item_runner import DRAINED_CATEGORY
from async_batch_llm.report._model import IntervalPoint, ItemRow, LatencyStats, ScopePoint

if TYPE_CHECKING:
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
# Bucket i holds the durations in (upper(i - 1), upper(i)]; the last one everything longer.
_BUCKET_BASE = 0.001
_BUCKET_GROWTH = 1.05
_BUCKET_COUNT = 480  # the last bound is about 150 days
_BOUNDS = [_BUCKET_BASE * _BUCKET_GROWTH**index for index in range(_BUCKET_COUNT)]
# A bisection in C per duration: an interval can hold tens of thousands of calls, and a
# Python function per value (a logarithm) cost more than everything else recorded.
_bucket: Callable[[float], int] = functools.partial(bisect.bisect_left, _BOUNDS)


def _bucket_upper(index: int) -> float:
    return float(_BUCKET_BASE * _BUCKET_GROWTH**index)


class LatencyHistogram:
    """Call durations of one model, in geometric buckets (mergeable across runs)."""

    __slots__ = ("buckets", "count", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0

    def add_all(self, values: list[float]) -> None:
        counted = Counter(map(_bucket, values))
        buckets = self.buckets
        for index, count in counted.items():
            buckets[index] = buckets.get(index, 0) + count
        self.count += len(values)
        if values:
            self.max = max(self.max, max(values))

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


class _Calls:
    """The calls of one strategy in an interval: durations, and the usage of successes."""

    __slots__ = ("seconds", "strategy", "usage")

    def __init__(self, strategy: object) -> None:
        self.strategy = strategy
        self.seconds: list[float] = []
        self.usage: list[dict[str, int]] = []


class _Interval:
    """What happened since the last flush.

    The hooks on the workers' path only count and append (to the calls of the item's
    strategy); bucketing, summing and pricing happen once per interval in
    `TimelineRecorder.flush`.
    """

    __slots__ = (
        "calls",
        "failed",
        "interrupted",
        "rate_limited",
        "replayed",
        "succeeded",
        "wait_sum",
    )

    def __init__(self) -> None:
        self.succeeded = self.failed = self.interrupted = self.replayed = 0
        self.rate_limited = 0
        self.wait_sum = 0.0
        #: By strategy id.
        self.calls: dict[int, _Calls] = {}


class TimelineRecorder:
    """Aggregates a run's items and calls into intervals.

    `ItemRunner` reports each call it starts (`call_started`, with the time it waited for
    admission) and each that ends (`call_ended`); the run reports
    each result (`item_ended`, `item_replayed`). Each hook only counts or appends.

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
        # The calls of the strategy met last (most runs have one): no lookup per call.
        self._last_calls: _Calls | None = None
        self._points: list[dict[str, Any]] = []  # the open chunk
        self._chunk = 0
        # Admitted and rate-limited calls per scope at the last sample. Seeded now: a rate
        # controller's counts start when it was made, which may be before this run.
        self._scope_totals: dict[str, tuple[int, int]] = {
            str(snapshot.scope): (snapshot.admitted, snapshot.rate_limited)
            for snapshot in self._snapshots()
        }
        self._facts = FactsCache()
        #: Calls started so far; minus those ended: in flight.
        self.calls_started = 0
        self._calls_ended = 0
        self._flushed_started = 0
        self.latency: dict[str, LatencyHistogram] = {}
        self._slowest: list[tuple[float, str, str, int]] = []  # a min-heap of the slowest
        self._slowest_floor = -1.0  # an item slower than this enters the heap

    # -- hooks ---------------------------------------------------------------------------------

    def call_ended(
        self,
        strategy: object,
        seconds: float,
        usage: dict[str, int] | None,
        info: ErrorInfo | None,
        untimed: bool,
    ) -> None:
        """A call of `strategy` (the item's) took `seconds` and used `usage` or failed.

        `untimed`: its duration says nothing about the model (a batch job's answer handed
        over, a call cut short by the batch's cancellation); it is left out of latency.
        """
        self._calls_ended += 1
        calls = self._last_calls
        if calls is None or calls.strategy is not strategy:
            calls = self._calls_of(strategy)
        if info is None:
            if not untimed:
                calls.seconds.append(seconds)
            if usage:
                calls.usage.append(usage)
        elif info.is_rate_limit:
            self._current.rate_limited += 1
        elif not untimed:
            calls.seconds.append(seconds)

    def _calls_of(self, strategy: object) -> _Calls:
        by_id = self._current.calls
        calls = by_id.get(id(strategy))
        if calls is None or calls.strategy is not strategy:
            calls = by_id[id(strategy)] = _Calls(strategy)
        self._last_calls = calls
        return calls

    def call_started(self, waited: float) -> None:
        """A call started after waiting `waited` seconds for admission."""
        self.calls_started += 1
        if waited:
            self._current.wait_sum += waited

    def item_ended(self, result: WorkItemResult[Any, Any], item: Any, seconds: float) -> None:
        """`result` is the outcome of `item`, `seconds` after its first call began (0: it
        made none). An item stopped by a drain or a cancellation (``error_category ==
        "interrupted"``) counts apart from failures: nothing went wrong with it."""
        current = self._current
        if result.success:
            current.succeeded += 1
        elif result.error_category == DRAINED_CATEGORY:
            current.interrupted += 1
        else:
            current.failed += 1
        if seconds > self._slowest_floor and seconds > 0:
            slowest = self._slowest
            row = (seconds, result.item_id, self._facts(item.strategy).model_key, result.attempts)
            if len(slowest) < SLOWEST_KEPT:
                heapq.heappush(slowest, row)
            else:
                heapq.heapreplace(slowest, row)
            if len(slowest) == SLOWEST_KEPT:
                self._slowest_floor = slowest[0][0]

    def item_replayed(self, count: int = 1) -> None:
        """`count` results were replayed from the store."""
        self._current.replayed += count

    @property
    def in_flight(self) -> int:
        return self.calls_started - self._calls_ended

    # -- sampling ----------------------------------------------------------------------------

    def flush(self, *, final: bool = False) -> dict[str, str]:
        """Close the current interval; the metadata keys to write (chunk and summary)."""
        now = self._clock()
        current, self._current = self._current, _Interval()
        self._last_calls = None
        attempts = self.calls_started - self._flushed_started
        self._flushed_started = self.calls_started
        usage = self._fold_calls(current.calls.values())
        # Priced once per strategy and interval: pricing each call would cost more than
        # everything else recorded about it. (A price that depends on each request's size,
        # such as a long-context tier, is applied to the sum here; the store's per-item
        # cost is exact.)
        costs = [facts.cost(counts) for facts, counts in usage.items()]
        priced = [cost for cost in costs if cost is not None]
        point = IntervalPoint(
            at=now,
            elapsed=now - self.started_at,
            session=self.session,
            seconds=max(now - self._last_flush, 1e-9),
            succeeded=current.succeeded,
            failed=current.failed,
            interrupted=current.interrupted,
            replayed=current.replayed,
            attempts=attempts,
            rate_limited=current.rate_limited,
            input_tokens=sum(u.get("input_tokens", 0) for u in usage.values()),
            output_tokens=sum(u.get("output_tokens", 0) for u in usage.values()),
            cost_usd=sum(priced) if priced else None,
            in_flight=self.in_flight,
            admission_wait=current.wait_sum / attempts if attempts else 0.0,
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

    def _fold_calls(self, interval_calls: Iterable[_Calls]) -> dict[StrategyFacts, dict[str, int]]:
        """Bucket call latency per model and sum tokens per strategy (C-level maps and
        sums over each strategy's lists: an interval can hold tens of thousands of calls)."""
        latency = self.latency
        usage: dict[StrategyFacts, dict[str, int]] = {}
        for calls in interval_calls:
            facts = self._facts(calls.strategy)
            if calls.seconds:
                histogram = latency.get(facts.model_key)
                if histogram is None:
                    histogram = latency[facts.model_key] = LatencyHistogram()
                histogram.add_all(calls.seconds)
            dicts = calls.usage
            if dicts:
                summed = usage.setdefault(facts, {})
                for key in set().union(*dicts):
                    total = sum(map(operator.methodcaller("get", key, 0), dicts))
                    summed[key] = summed.get(key, 0) + total
        return usage

    def _snapshots(self) -> list[ScopeSnapshot]:
        return read_scopes(self._scopes)

    def _sample_scopes(self, now: float, seconds: float) -> list[ScopePoint]:
        snapshots = self._snapshots()
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
