"""What ``abl run`` shows while it runs: a live line on a terminal, a log line otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, TextIO

from async_batch_llm.cli._output import usd

__all__ = ["Counters", "Progress"]

#: Seconds between two progress lines when standard error is not a terminal.
LOG_INTERVAL: Final = 10.0
#: Seconds between two refreshes of the live line.
LIVE_INTERVAL: Final = 0.25


@dataclass
class Counters:
    """What a run has done so far (updated per result, read by the display)."""

    total: int
    done: int = 0
    ok: int = 0
    failed: int = 0
    replayed: int = 0
    not_run: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced: int = 0
    started: float = field(default_factory=time.monotonic)
    rate_limits: Any = None  # a callable returning the 429s so far
    jobs: dict[str, str] = field(default_factory=dict)
    """Provider batch jobs by id: submitted, in progress, completed, expired, ..."""
    via_batch: int = 0
    batch_saved: Decimal = field(default_factory=Decimal)

    def jobs_by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.jobs.values():
            counts[state] = counts.get(state, 0) + 1
        return counts

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        live = self.done - self.replayed
        speed = live / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f"{left / speed:,.0f}s" if speed > 0 and left > 0 else "-"
        hits = self.rate_limits() if self.rate_limits is not None else 0
        line = (
            f"{self.done:,}/{self.total:,} done · {self.ok:,} ok · {self.failed:,} failed · "
            f"{self.replayed:,} replayed · {speed:,.1f} items/s · ETA {eta} · {hits:,} 429s · "
            f"{usd(self.cost)}"
        )
        if self.jobs:
            states = ", ".join(f"{n} {s}" for s, n in sorted(self.jobs_by_state().items()))
            line += f" · jobs: {states}"
        return line


class Progress:
    """Shows `counters` on `stream` until `stop`: rich's live display on a terminal, a
    plain line every `LOG_INTERVAL` seconds otherwise."""

    def __init__(self, counters: Counters, stream: TextIO, *, live: bool) -> None:
        self.counters = counters
        self.stream = stream
        self.live = live
        self._task: asyncio.Task[None] | None = None
        self._display: Any = None

    def start(self) -> None:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            self._display = Live(
                self.counters.line(),
                console=console,
                refresh_per_second=1 / LIVE_INTERVAL,
                transient=True,
                # Log lines written meanwhile go above the live line, not through it.
                redirect_stderr=False,
            )
            self._display.start()
        self._task = asyncio.create_task(self._tick(), name="abl-progress")

    def print(self, text: str) -> None:
        """A message above the live line."""
        if self._display is not None:
            self._display.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    async def _tick(self) -> None:
        interval = LIVE_INTERVAL if self.live else LOG_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if self._display is not None:
                self._display.update(self.counters.line())
            else:
                print(self.counters.line(), file=self.stream, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._display is not None:
            self._display.stop()
            self._display = None
