"""A live progress bar for any batch, drawn with [rich](https://rich.readthedocs.io).

Needs the `progress` extra (`pip install 'async-batch-llm[progress]'`); importing this
module without rich raises `ImportError`. Attach the observer to a processor:

```python
from async_batch_llm.observers.progress import RichProgressObserver

async with ParallelBatchProcessor(config=config, observers=[RichProgressObserver()]) as p:
    ...
    result = await p.process_all()
```

The display starts at `BATCH_STARTED` and stops at `BATCH_COMPLETED`. It has two lines:
the bar with items done out of the total, the throughput and the elapsed time; and the
succeeded and failed counts, the rate-limit hits and the cooldowns, with a countdown while
the workers are paused:

```text
Processing ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 1000/1000 83.9 items/s 0:00:11
  998 ok, 2 failed, 3 rate limits, 1 cooldown
```
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

try:
    from rich.console import Console, RenderableType
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text
except ImportError as exc:  # rich is an optional extra
    _msg = (
        "rich is required for async_batch_llm.observers.progress (RichProgressObserver): "
        "install it with `pip install 'async-batch-llm[progress]'`"
    )
    raise ImportError(_msg) from exc

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

__all__ = ["RichProgressObserver"]


class _ThroughputColumn(ProgressColumn):
    """Average items per second since the batch started."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed:
            return Text("- items/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:,.1f} items/s", style="progress.data.speed")


class _Display(Progress):
    """A rich `Progress` with the observer's status line under the bar."""

    def __init__(self, observer: RichProgressObserver, **options: Any) -> None:
        # Set first: the base constructor already renders the display once.
        self._observer = observer
        super().__init__(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            _ThroughputColumn(),
            TimeElapsedColumn(),
            **options,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self._observer.status_line()


def _seconds(value: object) -> float:
    """`value` as seconds if it is a real number, else 0."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


class RichProgressObserver(BaseObserver):
    """An observer that draws a live progress display of the batch with rich.

    Counts come from the processor's events: every item ends with exactly one
    `ITEM_COMPLETED` or `ITEM_FAILED`, so `completed` reaches `total` when the batch
    is done. Rate-limit hits come from `RATE_LIMIT_HIT`; cooldowns from
    `COOLDOWN_STARTED` / `COOLDOWN_ENDED` (with the default rate-limit strategies) or
    from the pause a `RATE_LIMIT_HIT` reports (with
    `async_batch_llm.rate_control.AdaptiveRateLimitStrategy`).

    The display is drawn on `console` (stdout by default): redrawn in place in a terminal,
    printed once when the batch completes otherwise (a log file, CI). Print other output
    while it runs with `observer.console.print(...)` so that it appears above the display.

    One observer can follow several batches one after another: each `BATCH_STARTED`
    starts a new display and resets the counters. The display stops at
    `BATCH_COMPLETED`; a batch that is cancelled never sends it, so when that can happen
    use the observer as a context manager (`with RichProgressObserver() as progress:`) or
    call `stop()`.

    Args:
        description: Label in front of the bar.
        console: The rich `Console` to draw on; a new one writing to stdout by default.
        transient: Remove the display from a terminal when the batch completes.
        refresh_per_second: How often the display is redrawn in a terminal (`> 0`).

    Raises:
        ValueError: `refresh_per_second` is not positive.

    Attributes:
        total: Items in the current batch (from `BATCH_STARTED`).
        completed: Items with a final result so far.
        succeeded: Items that succeeded.
        failed: Items that failed.
        rate_limit_hits: Attempts that were rate limited.
        cooldowns: Shared cooldowns started (with `AdaptiveRateLimitStrategy`: scope
            pauses started).
    """

    def __init__(
        self,
        *,
        description: str = "Processing",
        console: Console | None = None,
        transient: bool = False,
        refresh_per_second: float = 4.0,
    ) -> None:
        if isinstance(refresh_per_second, bool) or not refresh_per_second > 0:
            msg = (
                f"refresh_per_second must be > 0, got {refresh_per_second!r}; "
                "use e.g. 4.0 redraws per second"
            )
            raise ValueError(msg)
        self.description = description
        self.console = console if console is not None else Console()
        self.transient = transient
        self.refresh_per_second = refresh_per_second
        self.total = 0
        self.completed = 0
        self.succeeded = 0
        self.failed = 0
        self.rate_limit_hits = 0
        self.cooldowns = 0
        self._paused_until = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    @property
    def running(self) -> bool:
        """Whether the display is live (between `BATCH_STARTED` and its end)."""
        return self._progress is not None

    @property
    def paused_for(self) -> float:
        """Seconds left in the current cooldown or scope pause, `0.0` when none runs."""
        return max(0.0, self._paused_until - time.monotonic())

    def status_line(self) -> Text:
        """The line under the bar: outcomes, rate limits, cooldowns and any pause."""
        text = Text("  ")
        text.append(f"{self.succeeded:,} ok", style="green")
        text.append(", ")
        text.append(f"{self.failed:,} failed", style="red" if self.failed else "")
        text.append(", ")
        text.append(
            _plural(self.rate_limit_hits, "rate limit"),
            style="yellow" if self.rate_limit_hits else "",
        )
        text.append(", " + _plural(self.cooldowns, "cooldown"))
        paused_for = self.paused_for
        if paused_for > 0 and self.running:
            text.append(f" (paused, {paused_for:.1f}s left)", style="bold yellow")
        return text

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Update the counters and the display for `event`."""
        if event is ProcessingEvent.BATCH_STARTED:
            self._start(int(data.get("total", 0)))
        elif event is ProcessingEvent.ITEM_COMPLETED:
            self.completed += 1
            self.succeeded += 1
            self._advance()
        elif event is ProcessingEvent.ITEM_FAILED:
            self.completed += 1
            self.failed += 1
            self._advance()
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            self.rate_limit_hits += 1
            # With AdaptiveRateLimitStrategy there is no shared cooldown: the item's scope
            # pauses, for as long as the event says; a pause that starts counts as one.
            paused_for = data.get("paused_for")
            if _seconds(paused_for) > 0 and self.paused_for == 0:
                self.cooldowns += 1
            self._pause(paused_for)
        elif event is ProcessingEvent.COOLDOWN_STARTED:
            self.cooldowns += 1
            self._pause(data.get("duration"))
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            self._paused_until = 0.0
        elif event is ProcessingEvent.BATCH_COMPLETED:
            self._advance()
            self.stop()

    def stop(self) -> None:
        """Stop drawing (the last state stays on screen unless `transient`).

        Safe to call at any time and more than once.
        """
        progress, self._progress = self._progress, None
        if progress is None:
            return
        self._paused_until = 0.0
        if self._task is not None:
            progress.stop_task(self._task)
        progress.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"RichProgressObserver(completed={self.completed}/{self.total}, "
            f"succeeded={self.succeeded}, failed={self.failed}, "
            f"rate_limit_hits={self.rate_limit_hits}, cooldowns={self.cooldowns})"
        )

    def _start(self, total: int) -> None:
        self.stop()
        self.total = total
        self.completed = self.succeeded = self.failed = 0
        self.rate_limit_hits = self.cooldowns = 0
        self._paused_until = 0.0
        progress = _Display(
            self,
            console=self.console,
            transient=self.transient,
            refresh_per_second=self.refresh_per_second,
        )
        self._task = progress.add_task(self.description, total=total)
        self._progress = progress
        progress.start()

    def _advance(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.completed)

    def _pause(self, seconds: object) -> None:
        if _seconds(seconds) > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + _seconds(seconds))
