"""What a run report shows: aggregates read from a checkpoint store, never one row per item.

`load_report` (in `_load`) fills a `RunReport` from a store; `render_html` (in `_html`) and
the ``abl status --watch`` view draw it. Every list here is bounded whatever the size of the
run: the timeline by downsampling, the item lists by their caps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "IntervalPoint",
    "ItemRow",
    "LatencyStats",
    "ModelCost",
    "RunReport",
    "ScopePoint",
]


@dataclass(slots=True)
class IntervalPoint:
    """What happened during one interval of the run (counts are for the interval only)."""

    at: float
    """End of the interval, Unix time in seconds."""
    elapsed: float
    """End of the interval, seconds since the session started."""
    session: int
    """The run (session number in the store) the interval belongs to."""
    seconds: float
    """Length of the interval."""
    succeeded: int = 0
    failed: int = 0
    replayed: int = 0
    interrupted: int = 0
    """Items that ended without an outcome about them (drained, cancelled, timed out past
    their deadline): the store keeps them unfinished and a rerun runs them."""
    attempts: int = 0
    """Calls made (each retry counts)."""
    rate_limited: int = 0
    """Calls answered with a rate limit (429)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    """Cost of the calls made in the interval; ``None`` when no price is known."""
    in_flight: int = 0
    """Calls in flight at the end of the interval."""
    admission_wait: float = 0.0
    """Mean seconds an attempt waited for admission (rate limit, budget) in the interval."""


@dataclass(slots=True)
class ScopePoint:
    """One rate-limit scope at the end of one interval."""

    at: float
    elapsed: float
    scope: str
    limit_rpm: float | None
    """The request limit in force (``None``: not known, unpaced)."""
    limit_source: str | None
    """``"header"``, ``"configured"`` or ``"learned"``."""
    achieved_rpm: float
    """Requests admitted per minute during the interval."""
    rate_limited: int
    """429s in the scope during the interval."""
    utilisation: float | None
    paused: bool


@dataclass(slots=True)
class LatencyStats:
    """Call latency of one model over the whole report (from a histogram: approximate)."""

    model: str
    calls: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(slots=True)
class ModelCost:
    model: str
    items: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    """``None`` when the model has no known price."""


@dataclass(slots=True)
class ItemRow:
    """One item in the report's lists of slowest and failed items."""

    item_id: str
    model: str | None = None
    seconds: float | None = None
    """Time from the start of the item's first call to its result (slowest items)."""
    attempts: int = 0
    error: str | None = None
    category: str | None = None


@dataclass
class RunReport:
    """Everything a report shows about the runs recorded in one store."""

    source: str
    """The store (a path) the report was read from."""
    title: str
    generated_at: float
    """Unix time the report was made."""
    sessions: int = 0
    """Runs recorded in the store."""
    started_at: float | None = None
    """Unix time the first recorded interval began."""
    total: int = 0
    """Items in the store."""
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    attempts: int = 0
    rate_limited: int = 0
    cost_usd: float | None = None
    models: list[str] = field(default_factory=list)
    timeline: list[IntervalPoint] = field(default_factory=list)
    """In time order, at most `max_points` intervals (neighbours merged when longer)."""
    scopes: list[ScopePoint] = field(default_factory=list)
    """In time order, per scope, downsampled like the timeline."""
    latency: list[LatencyStats] = field(default_factory=list)
    attempts_histogram: dict[int, int] = field(default_factory=dict)
    """Items by the number of calls they took (0: replayed or not run)."""
    cost_by_model: list[ModelCost] = field(default_factory=list)
    failures_by_category: dict[str, int] = field(default_factory=dict)
    slowest: list[ItemRow] = field(default_factory=list)
    """The slowest items, slowest first (at most 20)."""
    failed_items: list[ItemRow] = field(default_factory=list)
    """Failed items with their errors (at most 50)."""
    notes: list[str] = field(default_factory=list)
    """What the report could not show and why (e.g. a run recorded no timeline)."""
    ended: bool | None = None
    """Whether the latest run recorded its end (``False``: running, or it was killed;
    ``None``: no timeline)."""
