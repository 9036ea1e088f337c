"""A live progress bar for any batch, drawn with [rich](https://rich.readthedocs.io).

Needs the `progress` extra (`pip install rich`); importing this
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

In a terminal, other output is printed above the display while it runs, so the bar is
redrawn under it instead of being torn: `print()` to stdout or stderr, and the lines of
every `logging.StreamHandler` that writes to the console's terminal, such as the one
`logging.basicConfig()` installs. See `RichProgressObserver` for the details.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from types import TracebackType
from typing import IO, Any, Self

try:
    from rich.console import Console, RenderableType
    from rich.file_proxy import FileProxy
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
        "install it with `pip install rich`"
    )
    raise ImportError(_msg) from exc

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

__all__ = ["RichProgressObserver"]


class _ThroughputColumn(ProgressColumn):
    """Average items per second since the batch started, of the items run (replayed
    ones, read back from a checkpoint, would inflate it)."""

    def __init__(self, observer: RichProgressObserver) -> None:
        super().__init__()
        self._observer = observer

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed:
            return Text("- items/s", style="progress.data.speed")
        run = self._observer.completed - self._observer.replayed
        return Text(f"{run / elapsed:,.1f} items/s", style="progress.data.speed")


class _Display(Progress):
    """A rich `Progress` with the observer's status line under the bar."""

    def __init__(self, observer: RichProgressObserver, **options: Any) -> None:
        # Set first: the base constructor already renders the display once.
        self._observer = observer
        super().__init__(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            _ThroughputColumn(observer),
            TimeElapsedColumn(),
            **options,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self._observer.status_line()


def _writes_to(stream: Any, terminal: IO[str]) -> bool:
    """Whether writing to `stream` lands where `terminal` (the console's file) writes."""
    if stream is None or isinstance(stream, FileProxy):
        # No stream yet, or already printing through a rich console.
        return False
    if stream is terminal:
        return True
    # `basicConfig()` writes to stderr while the console draws on stdout: two file objects,
    # one terminal. A stream without a file descriptor (`StringIO`) can only match by identity.
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.fstat(terminal.fileno()))
    except (AttributeError, OSError, ValueError):
        return False


class _LogRedirect:
    """Points the terminal's logging handlers at a live display, and back.

    Only the handlers' streams change: no handler is added or removed, and levels, filters
    and formatters stay as the application configured them.
    """

    def __init__(self) -> None:
        self._redirected: list[tuple[logging.StreamHandler[Any], Any, FileProxy]] = []

    def start(self, console: Console) -> None:
        terminal = console.file
        for handler in _stream_handlers():
            original = handler.stream
            if _writes_to(original, terminal):
                # The proxy prints each complete line through the console, which draws it
                # above the live display and redraws the display under it.
                proxy = FileProxy(console, original)
                handler.setStream(proxy)
                self._redirected.append((handler, original, proxy))

    def stop(self) -> None:
        redirected, self._redirected = self._redirected, []
        for handler, original, proxy in reversed(redirected):
            # A stream the application replaced in the meantime is its own to keep.
            if handler.stream is proxy:
                handler.setStream(original)


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every `StreamHandler` of the root logger and of the loggers that exist, once each."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    # A copy: another thread may create a logger meanwhile. Placeholders have no handlers.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            loggers.append(logger)
    handlers: dict[int, logging.StreamHandler[Any]] = {}
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                handlers.setdefault(id(handler), handler)
    return list(handlers.values())


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
    `ITEM_COMPLETED`, `ITEM_FAILED` or (read back from a checkpoint) `ITEM_REPLAYED`, so
    `completed` reaches `total` when the batch is done; replayed items are counted apart
    from the ones run. A stream of unknown length shows a bar without a total.
    Rate-limit hits come from `RATE_LIMIT_HIT`; cooldowns from
    `COOLDOWN_STARTED` / `COOLDOWN_ENDED` (with the default rate-limit strategies) or
    from the pause a `RATE_LIMIT_HIT` reports (with
    `async_batch_llm.rate_control.AdaptiveRateLimitStrategy`).

    The display is drawn on `console` (stdout by default): redrawn in place in a terminal,
    printed once when the batch completes otherwise (a log file, CI).

    While the display is live in a terminal, other output is printed above it and the
    display is redrawn underneath, so that no line is torn:

    - `observer.console.print(...)`, and `print()` to `sys.stdout` or `sys.stderr`.
    - Log lines: each `logging.StreamHandler` of the root logger or of any other existing
      logger whose stream writes to the console's terminal (the console's file itself, or
      another file on the same terminal, such as the stderr handler of
      `logging.basicConfig()` while the console draws on stdout) writes through the
      console until the display stops. Only the handler's stream is swapped, with
      `setStream()`: no handler is added, and the level, filters and formatter stay as
      configured. Each handler gets its stream back when the display stops, however it
      stops. Handlers writing anywhere else (a file, stderr redirected to a file) are left
      alone, and so is everything when the console is not a terminal.

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
        total: Items in the current batch (from `BATCH_STARTED`); ``None`` for a stream of
            unknown length until it ends.
        completed: Items with a final result so far, replayed ones included.
        succeeded: Items run that succeeded.
        failed: Items run that failed.
        replayed: Items whose result was read back from a checkpoint.
        rate_limit_hits: Attempts that were rate limited.
        cooldowns: Shared cooldowns started (with `AdaptiveRateLimitStrategy`: scope
            pauses started).
        batch_jobs: In batch mode (``ProcessorConfig(mode="batch" | "auto")``), the
            provider's status of each job by id (from `BATCH_JOB_UPDATED`); the status
            line counts them by status.
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
        self.total: int | None = 0
        self.completed = 0
        self.replayed = 0
        self.succeeded = 0
        self.failed = 0
        self.rate_limit_hits = 0
        self.cooldowns = 0
        self.batch_jobs: dict[str, str] = {}
        self._paused_until = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._logs = _LogRedirect()

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
        if self.replayed:
            text.append(f", {self.replayed:,} replayed", style="cyan")
        text.append(", ")
        text.append(
            _plural(self.rate_limit_hits, "rate limit"),
            style="yellow" if self.rate_limit_hits else "",
        )
        text.append(", " + _plural(self.cooldowns, "cooldown"))
        if self.batch_jobs:
            counts: dict[str, int] = {}
            for status in self.batch_jobs.values():
                counts[status] = counts.get(status, 0) + 1
            described = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            text.append(f"; batch jobs: {described}", style="cyan")
        paused_for = self.paused_for
        if paused_for > 0 and self.running:
            text.append(f" (paused, {paused_for:.1f}s left)", style="bold yellow")
        return text

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Update the counters and the display for `event`."""
        if event is ProcessingEvent.BATCH_STARTED:
            total = data.get("total", 0)
            self._start(None if total is None else int(total))
        elif event is ProcessingEvent.ITEM_COMPLETED:
            self.completed += 1
            self.succeeded += 1
            self._advance()
        elif event is ProcessingEvent.ITEM_FAILED:
            self.completed += 1
            self.failed += 1
            self._advance()
        elif event is ProcessingEvent.ITEM_REPLAYED:
            self.completed += 1
            self.replayed += 1
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
        elif event is ProcessingEvent.BATCH_JOB_UPDATED:
            status = data.get("provider_status") or data.get("state")
            self.batch_jobs[str(data.get("job_id"))] = str(status).lower()
        elif event is ProcessingEvent.BATCH_COMPLETED:
            if self.total is None:
                self.total = self.completed
                if self._progress is not None and self._task is not None:
                    self._progress.update(self._task, total=self.total)
            self._advance()
            self.stop()

    def stop(self) -> None:
        """Stop drawing (the last state stays on screen unless `transient`).

        Log handlers get their own streams back. Safe to call at any time and more than
        once.
        """
        progress, self._progress = self._progress, None
        if progress is None:
            return
        self._paused_until = 0.0
        try:
            if self._task is not None:
                progress.stop_task(self._task)
            progress.stop()
        finally:
            # After the display's last redraw: a record logged in between is printed by the
            # console as a plain line, below the final state, not into the middle of it.
            self._logs.stop()

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
            f"RichProgressObserver(completed={self.completed}/"
            f"{'?' if self.total is None else self.total}, "
            f"succeeded={self.succeeded}, failed={self.failed}, replayed={self.replayed}, "
            f"rate_limit_hits={self.rate_limit_hits}, cooldowns={self.cooldowns})"
        )

    def _start(self, total: int | None) -> None:
        self.stop()
        self.total = total
        self.completed = self.succeeded = self.failed = self.replayed = 0
        self.rate_limit_hits = self.cooldowns = 0
        self.batch_jobs = {}
        self._paused_until = 0.0
        progress = _Display(
            self,
            console=self.console,
            transient=self.transient,
            refresh_per_second=self.refresh_per_second,
            # In a terminal, print() to either stream goes above the display too.
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = progress.add_task(self.description, total=total)
        self._progress = progress
        try:
            # Off a terminal the display is only printed at the end: nothing to keep clear.
            if self.console.is_terminal:
                self._logs.start(self.console)
            progress.start()
        except BaseException:
            self._progress = None
            self._logs.stop()
            raise

    def _advance(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.completed)

    def _pause(self, seconds: object) -> None:
        if _seconds(seconds) > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + _seconds(seconds))
