"""``abl status STATE --watch``: the report's numbers, live, while another process runs.

Each refresh reads the state file with `SQLiteCheckpointReader` (counts by state and the
timeline only: fast on a store of millions of items) and redraws one screen with rich.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from async_batch_llm.checkpoint import CheckpointError
from async_batch_llm.cli._output import usd

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

    from async_batch_llm.report import RunReport

__all__ = ["render_status", "watch"]

# The intervals the "now" rates are taken over: the last few, so one empty interval
# between two busy ones does not read as a stall.
_RECENT_INTERVALS = 3


def watch(path: str, *, interval: float, console: Console) -> None:
    """Redraw the status of `path` every `interval` seconds until Ctrl-C."""
    from rich.live import Live
    from rich.text import Text

    from async_batch_llm.report import load_report

    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            view: RenderableType
            if not Path(path).exists():
                view = Text(f"Waiting for {path} to be created by a run...")
            else:
                try:
                    view = render_status(load_report(path, entries=False))
                except CheckpointError as exc:
                    view = Text(f"Cannot read {path} (yet): {exc}")
            live.update(view, refresh=True)
            time.sleep(interval)


def render_status(report: RunReport) -> RenderableType:
    """One screen: progress, rates now, cost, each scope, latency per model."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    done = report.succeeded + report.failed
    header = Text()
    header.append(f"{report.source}", style="bold")
    header.append(f"  {_state_of(report)}")
    parts.append(header)
    parts.append(
        Text(
            f"items: {report.total:,} — {report.succeeded:,} succeeded, {report.failed:,} "
            f"failed, {report.unfinished:,} unfinished ({_share(done, report.total)} done)"
        )
    )
    recent = report.timeline[-_RECENT_INTERVALS:]
    seconds = sum(point.seconds for point in recent)
    if recent and seconds > 0 and not report.ended:
        finished = sum(p.succeeded + p.failed for p in recent)
        limited = sum(p.rate_limited for p in recent)
        attempts = sum(p.attempts for p in recent)
        waited = sum(p.admission_wait * p.attempts for p in recent)
        parts.append(
            Text(
                f"now: {finished / seconds * 60:,.1f} items/min, {attempts / seconds * 60:,.1f} "
                f"calls/min, {limited / seconds * 60:,.1f} 429s/min, "
                f"{recent[-1].in_flight} in flight, admission wait "
                f"{(waited / attempts) if attempts else 0.0:.2f} s"
            )
        )
    cost = "unknown" if report.cost_usd is None else usd(report.cost_usd)
    parts.append(
        Text(f"calls: {report.attempts:,}, 429s: {report.rate_limited:,}, cost so far: {cost}")
    )
    scopes = _latest_scopes(report)
    if scopes:
        table = Table(title="rate-limit scopes", title_justify="left", expand=False)
        for column in ("scope", "limit rpm", "source", "achieved rpm", "util", "429s", "state"):
            table.add_column(column)
        for point in scopes:
            table.add_row(
                *_cells(
                    point.scope,
                    "-" if point.limit_rpm is None else f"{point.limit_rpm:,.0f}",
                    point.limit_source or "-",
                    f"{point.achieved_rpm:,.0f}",
                    "-" if point.utilisation is None else f"{point.utilisation:.0%}",
                    str(point.rate_limited),
                    "paused" if point.paused else "open",
                )
            )
        parts.append(table)
    if report.latency:
        table = Table(title="latency per model (s)", title_justify="left", expand=False)
        for column in ("model", "calls", "p50", "p90", "p99", "max"):
            table.add_column(column)
        for stats in report.latency:
            table.add_row(
                *_cells(
                    stats.model,
                    f"{stats.calls:,}",
                    f"{stats.p50:.3f}",
                    f"{stats.p90:.3f}",
                    f"{stats.p99:.3f}",
                    f"{stats.max:.3f}",
                )
            )
        parts.append(table)
    for note in report.notes:
        parts.append(Text(note, style="dim"))
    parts.append(Text("Ctrl-C to stop watching (the run goes on)", style="dim"))
    return Group(*parts)


def _cells(*values: str) -> list[Text]:
    """Table cells as plain text: names from the store (a model, a scope) are not markup."""
    from rich.text import Text

    return [Text(value) for value in values]


def _state_of(report: RunReport) -> str:
    if not report.timeline:
        return "no timeline yet"
    last = report.timeline[-1]
    stamp = datetime.fromtimestamp(last.at, UTC).strftime("%H:%M:%S UTC")
    state = "ended" if report.ended else "running"
    return f"run {last.session} {state}; last sample {stamp} ({time.time() - last.at:,.0f} s ago)"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "0%"


def _latest_scopes(report: RunReport) -> list[Any]:
    latest: dict[str, Any] = {}
    for point in report.scopes:
        latest[point.scope] = point
    return list(latest.values())
