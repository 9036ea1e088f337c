"""Reading a store into a `RunReport`: the timeline from its metadata, the rest from entries.

The entries are read once, without their outputs, and folded into counters as they come,
so a report of a million-item store holds no more than one of ten items.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from async_batch_llm._internal.checkpointing import SESSION_KEY, STRATEGIES_KEY
from async_batch_llm._internal.values import BATCH_USAGE_KEY
from async_batch_llm.checkpoint.base import CheckpointEntry, EntryState
from async_batch_llm.report._model import (
    IntervalPoint,
    ItemRow,
    ModelCost,
    RunReport,
    ScopePoint,
)

__all__ = ["load_report", "load_report_async", "write_report"]

MAX_POINTS = 600
"""The most intervals (and points per scope) a report draws; longer runs are merged."""
FAILED_KEPT = 50

# The model of an `abl run`, as the CLI records it (`cli._run.META_MODEL`; importing it
# would load the CLI's own dependencies into every report).
_CLI_MODEL_KEY = "abl.model"


def load_report(
    store: str | os.PathLike[str] | Any,
    *,
    title: str | None = None,
    max_points: int = MAX_POINTS,
    entries: bool = True,
) -> RunReport:
    """Read the report of the runs recorded in `store`.

    Args:
        store: An SQLite checkpoint file (a path, or the `SQLiteCheckpointStore` that wrote
            it) or a `MemoryCheckpointStore`. The file is read with
            `SQLiteCheckpointReader`, so this works while a run is writing it.
        title: The report's title (default: the store's name).
        max_points: The most intervals drawn; neighbours are merged beyond it.
        entries: Read every entry (for the attempts histogram, cost by model and the failed
            items). ``False`` reads only the counts by state and the timeline, which stays
            fast on a store of millions of items (``abl status --watch``); the cost is then
            the timeline's, the cost of the calls made while a timeline was recorded.

    Raises:
        CheckpointError: The file is not a checkpoint store, or cannot be read.
        TypeError: `store` is of another kind (any other `CheckpointStore`: the store
            protocol has no way to list every entry).
    """
    meta, rows, label = _open(store)
    try:
        return _build(meta, rows, label, title, max_points, entries)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


async def load_report_async(
    store: str | os.PathLike[str] | Any,
    *,
    title: str | None = None,
    max_points: int = MAX_POINTS,
    entries: bool = True,
) -> RunReport:
    """`load_report` in a worker thread, for code running in an event loop."""
    import asyncio

    return await asyncio.to_thread(
        load_report, store, title=title, max_points=max_points, entries=entries
    )


def write_report(
    store: str | os.PathLike[str] | Any,
    output: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Write the HTML report of `store` to `output` (see `load_report`); returns its path.

    Raises:
        OSError: `output` cannot be written.
        ImportError: plotly is not installed (``pip install plotly``, or the ``report``
            extra).
    """
    from async_batch_llm.report import render_html

    report = load_report(store, title=title)
    path = Path(output)
    text = render_html(report)
    # Written beside the target and renamed: a reader never sees half a report.
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _open(store: Any) -> tuple[Mapping[str, str], Iterable[CheckpointEntry], str]:
    from async_batch_llm.checkpoint.memory import MemoryCheckpointStore
    from async_batch_llm.checkpoint.sqlite import SQLiteCheckpointReader, SQLiteCheckpointStore

    if isinstance(store, MemoryCheckpointStore):
        return dict(store.meta), list(store.entries.values()), repr(store)
    if isinstance(store, SQLiteCheckpointStore):
        store = store.path
    if isinstance(store, str | os.PathLike):
        reader = SQLiteCheckpointReader(store)
        meta = reader.meta()
        return meta, _ReaderEntries(reader), os.fspath(store)
    msg = (
        "load_report reads an SQLite checkpoint file (a path) or a MemoryCheckpointStore, "
        f"got {type(store).__name__}"
    )
    raise TypeError(msg)


class _ReaderEntries:
    """The entries of a reader without their outputs; closes the reader."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __iter__(self) -> Any:
        return iter(self._reader.entries(outputs=False))

    def count_by_state(self) -> dict[EntryState, int]:
        counts: dict[EntryState, int] = self._reader.count_by_state()
        return counts

    def close(self) -> None:
        self._reader.close()


def _build(
    meta: Mapping[str, str],
    entries: Iterable[CheckpointEntry],
    label: str,
    title: str | None,
    max_points: int,
    read_entries: bool,
) -> RunReport:
    from async_batch_llm._internal.timeline import read_timeline

    timeline = read_timeline(meta)
    report = RunReport(
        source=label,
        title=title or f"async-batch-llm run report: {Path(label).name}",
        generated_at=time.time(),
        sessions=_int(meta.get(SESSION_KEY)),
        started_at=timeline.started_at,
    )
    if read_entries:
        _fold_entries(report, meta, entries)
    else:
        _count_entries(report, entries)
    report.timeline = _merge_points(timeline.points, max_points)
    report.scopes = _merge_scopes(timeline.scopes, max_points)
    report.latency = timeline.latency_stats()
    report.slowest = timeline.slowest
    if timeline.sessions:
        latest = timeline.sessions[max(timeline.sessions)]
        report.ended = bool(latest.get("ended"))
    report.rate_limited = sum(point.rate_limited for point in report.timeline)
    if not read_entries:
        costs = [point.cost_usd for point in report.timeline if point.cost_usd is not None]
        report.cost_usd = sum(costs) if costs else None
        report.attempts = sum(point.attempts for point in report.timeline)
        report.models = [stats.model for stats in report.latency]
    if not timeline.sessions:
        report.notes.append(
            "No timeline was recorded (ProcessorConfig.timeline_interval=None, or the run "
            "used an older version): throughput, rate limits, scopes, latency and the "
            "slowest items are not shown."
        )
    return report


def _count_entries(report: RunReport, entries: Iterable[CheckpointEntry]) -> None:
    count_by_state = getattr(entries, "count_by_state", None)
    if count_by_state is not None:
        counts: dict[EntryState, int] = count_by_state()
    else:
        counts = dict.fromkeys(EntryState, 0)
        for entry in entries:
            counts[entry.state] += 1
    report.succeeded = counts.get(EntryState.SUCCEEDED, 0)
    report.failed = counts.get(EntryState.FAILED, 0)
    report.unfinished = counts.get(EntryState.PENDING, 0) + counts.get(EntryState.INTERRUPTED, 0)
    report.total = report.succeeded + report.failed + report.unfinished


def _fold_entries(
    report: RunReport, meta: Mapping[str, str], entries: Iterable[CheckpointEntry]
) -> None:
    models = _models_by_fingerprint(meta)
    default_model = meta.get(_CLI_MODEL_KEY)
    price = _price_function()
    by_model: dict[str, ModelCost] = {}
    histogram: dict[int, int] = {}
    categories: dict[str, int] = {}
    failed: list[ItemRow] = []
    attempts = 0
    for entry in entries:
        report.total += 1
        state = entry.state
        if state is EntryState.SUCCEEDED:
            report.succeeded += 1
        elif state is EntryState.FAILED:
            report.failed += 1
        else:
            report.unfinished += 1
        histogram[entry.attempts] = histogram.get(entry.attempts, 0) + 1
        attempts += entry.attempts
        model = default_model or models.get(entry.strategy) or "unknown"
        cost = by_model.get(model)
        if cost is None:
            cost = by_model[model] = ModelCost(model, 0, 0, 0, None)
        cost.items += 1
        usage = entry.usage
        if usage:
            cost.input_tokens += usage.get("input_tokens", 0)
            cost.output_tokens += usage.get("output_tokens", 0)
            dollars = price(model, usage, batch=bool(usage.get(BATCH_USAGE_KEY)))
            if dollars is not None:
                cost.cost_usd = (cost.cost_usd or 0.0) + float(dollars)
        if state is EntryState.FAILED or (
            state is EntryState.INTERRUPTED and entry.error is not None
        ):
            category = entry.category or "unknown"
            categories[category] = categories.get(category, 0) + 1
            if len(failed) < FAILED_KEPT:
                failed.append(
                    ItemRow(
                        item_id=entry.item_id,
                        model=model,
                        attempts=entry.attempts,
                        error=entry.error,
                        category=entry.category,
                    )
                )
    report.attempts = attempts
    report.attempts_histogram = dict(sorted(histogram.items()))
    report.cost_by_model = sorted(by_model.values(), key=lambda c: -(c.cost_usd or 0.0))
    report.models = sorted(by_model)
    priced = [c.cost_usd for c in by_model.values() if c.cost_usd is not None]
    report.cost_usd = sum(priced) if priced else None
    report.failures_by_category = dict(sorted(categories.items(), key=lambda kv: -kv[1]))
    report.failed_items = failed


def _price_function() -> Callable[..., Decimal | None]:
    """`pricing.price_usage` (its pricers cached per model), or no price without
    genai-prices."""
    try:
        from async_batch_llm.pricing import price_data_version, price_usage

        price_data_version()  # raises ImportError without genai-prices
    except ImportError:
        return lambda model, usage, batch: None
    return price_usage


def _models_by_fingerprint(meta: Mapping[str, str]) -> dict[str, str]:
    """The model each strategy fingerprint in the store's metadata describes."""
    try:
        described = json.loads(meta.get(STRATEGIES_KEY) or "{}")
    except ValueError:
        return {}
    if not isinstance(described, dict):
        return {}
    return {key: _model_name(value) for key, value in described.items()}


def _model_name(description: Any) -> str:
    identity = description.get("identity") if isinstance(description, dict) else None
    found = _find_model(identity)
    if found:
        return found
    cls = description.get("class") if isinstance(description, dict) else None
    return str(cls).rsplit(".", 1)[-1] if cls else "unknown"


def _find_model(identity: Any, depth: int = 0) -> str | None:
    if not isinstance(identity, dict) or depth > 4:
        return None
    model = identity.get("model")
    if isinstance(model, str) and model:
        provider = identity.get("provider")
        if isinstance(provider, str) and provider and ":" not in model:
            return f"{provider}:{model}"
        return model
    for key in ("model", "identity", "agent"):
        found = _find_model(identity.get(key), depth + 1)
        if found:
            return found
    return None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _merge_points(points: list[IntervalPoint], max_points: int) -> list[IntervalPoint]:
    """At most `max_points` intervals (plus one per session): runs of neighbours summed."""
    if len(points) <= max_points:
        return points
    return [
        _sum_points(group)
        for group in _runs(points, max_points, lambda a, b: a.session == b.session)
    ]


_P = TypeVar("_P")


def _runs(
    series: list[_P], max_points: int, together: Callable[[_P, _P], bool] | None = None
) -> Iterator[list[_P]]:
    """`series` cut into runs of neighbours, at most `max_points` of them (runs also end
    where `together` says two neighbours may not share one)."""
    size = -(-len(series) // max_points)
    run: list[_P] = []
    for point in series:
        if run and (len(run) == size or (together is not None and not together(run[0], point))):
            yield run
            run = []
        run.append(point)
    if run:
        yield run


def _sum_points(group: list[IntervalPoint]) -> IntervalPoint:
    last = group[-1]
    attempts = sum(p.attempts for p in group)
    costs = [p.cost_usd for p in group if p.cost_usd is not None]
    return IntervalPoint(
        at=last.at,
        elapsed=last.elapsed,
        session=last.session,
        seconds=sum(p.seconds for p in group),
        succeeded=sum(p.succeeded for p in group),
        failed=sum(p.failed for p in group),
        replayed=sum(p.replayed for p in group),
        interrupted=sum(p.interrupted for p in group),
        attempts=attempts,
        rate_limited=sum(p.rate_limited for p in group),
        input_tokens=sum(p.input_tokens for p in group),
        output_tokens=sum(p.output_tokens for p in group),
        cost_usd=sum(costs) if costs else None,
        in_flight=last.in_flight,
        admission_wait=(
            sum(p.admission_wait * p.attempts for p in group) / attempts if attempts else 0.0
        ),
    )


def _merge_scopes(points: list[ScopePoint], max_points: int) -> list[ScopePoint]:
    """At most `max_points` points per scope: runs of neighbours merged."""
    by_scope: dict[str, list[ScopePoint]] = {}
    for point in points:
        by_scope.setdefault(point.scope, []).append(point)
    merged: list[ScopePoint] = []
    for series in by_scope.values():
        if len(series) <= max_points:
            merged.extend(series)
        else:
            merged.extend(_merge_scope_run(run) for run in _runs(series, max_points))
    merged.sort(key=lambda point: point.at)
    return merged


def _merge_scope_run(run: list[ScopePoint]) -> ScopePoint:
    last = run[-1]
    return ScopePoint(
        at=last.at,
        elapsed=last.elapsed,
        scope=last.scope,
        limit_rpm=last.limit_rpm,
        limit_source=last.limit_source,
        achieved_rpm=sum(p.achieved_rpm for p in run) / len(run),
        rate_limited=sum(p.rate_limited for p in run),
        utilisation=last.utilisation,
        paused=any(p.paused for p in run),
    )
