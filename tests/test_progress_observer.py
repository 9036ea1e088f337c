"""RichProgressObserver: counts from events, a live display that stops cleanly, the extra."""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.observers.progress import RichProgressObserver

Event = ProcessingEvent


def make_observer(
    *, description: str = "Processing", transient: bool = False
) -> tuple[RichProgressObserver, io.StringIO]:
    """An observer drawing on a non-terminal console, and what it wrote."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    observer = RichProgressObserver(description=description, console=console, transient=transient)
    return observer, out


async def send(observer: RichProgressObserver, *events: tuple[Event, dict[str, object]]) -> None:
    for event, data in events:
        await observer.on_event(event, dict(data))


async def test_counts_follow_the_item_events() -> None:
    """Completed, succeeded and failed count the final item events; total comes from the start."""
    observer, _ = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 4}),
        (Event.ITEM_STARTED, {"item_id": "a", "worker_id": 0}),
        (Event.ITEM_COMPLETED, {"item_id": "a", "duration": 0.1, "tokens": 5}),
        (Event.ITEM_COMPLETED, {"item_id": "b", "duration": 0.1, "tokens": 5}),
        (Event.ITEM_FAILED, {"item_id": "c", "error_type": "ValueError"}),
    )
    assert (observer.total, observer.completed) == (4, 3)
    assert (observer.succeeded, observer.failed) == (2, 1)
    assert observer.running
    observer.stop()


async def test_batch_completed_stops_the_display_and_prints_the_final_state() -> None:
    """Off a terminal the display is printed once, at the end, with the final counts."""
    observer, out = make_observer(description="Summarising")
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 2}),
        (Event.ITEM_COMPLETED, {"item_id": "a"}),
    )
    assert out.getvalue() == ""  # nothing is redrawn into a log while the batch runs
    await send(
        observer,
        (Event.ITEM_FAILED, {"item_id": "b", "error_type": "ValueError"}),
        (Event.BATCH_COMPLETED, {"processed": 2, "succeeded": 1, "failed": 1, "total": 2}),
    )
    text = out.getvalue()
    assert not observer.running
    assert text.count("Summarising") == 1
    assert "2/2" in text
    assert "1 ok, 1 failed, 0 rate limits, 0 cooldowns" in text


async def test_transient_display_leaves_nothing_behind() -> None:
    """With transient=True the display is removed at the end instead of printed."""
    observer, out = make_observer(transient=True)
    await send(observer, (Event.BATCH_STARTED, {"total": 0}), (Event.BATCH_COMPLETED, {}))
    assert out.getvalue().strip() == ""
    assert not observer.running


async def test_shared_cooldown_is_counted_and_shown_until_it_ends() -> None:
    """Rate-limit hits and cooldowns are counted; the pause is shown while it runs."""
    observer, _ = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 5}),
        (Event.RATE_LIMIT_HIT, {"item_id": "a", "worker_id": 0}),
        (Event.RATE_LIMIT_HIT, {"item_id": "b", "worker_id": 1}),
        (Event.COOLDOWN_STARTED, {"worker_id": 0, "duration": 30.0, "consecutive": 1}),
    )
    assert (observer.rate_limit_hits, observer.cooldowns) == (2, 1)
    assert 0 < observer.paused_for <= 30.0
    line = observer.status_line().plain
    assert "2 rate limits, 1 cooldown (paused, " in line
    await send(observer, (Event.COOLDOWN_ENDED, {"duration": 0.01}))
    assert observer.paused_for == 0.0
    assert "paused" not in observer.status_line().plain
    observer.stop()


async def test_scope_pause_of_the_adaptive_strategy_counts_as_one_cooldown() -> None:
    """Hits reporting paused_for start one pause; hits during that pause do not add one."""
    observer, _ = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 5}),
        (Event.RATE_LIMIT_HIT, {"item_id": "a", "worker_id": 0, "paused_for": 20.0}),
        (Event.RATE_LIMIT_HIT, {"item_id": "b", "worker_id": 1, "paused_for": 19.5}),
        (Event.RATE_LIMIT_HIT, {"item_id": "c", "worker_id": 2, "paused_for": None}),
    )
    assert (observer.rate_limit_hits, observer.cooldowns) == (3, 1)
    assert observer.paused_for > 19.0
    observer.stop()
    assert observer.paused_for == 0.0


async def test_a_new_batch_starts_from_zero() -> None:
    """BATCH_STARTED resets every counter, so one observer can follow batch after batch."""
    observer, out = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 1}),
        (Event.RATE_LIMIT_HIT, {"item_id": "a", "worker_id": 0}),
        (Event.ITEM_FAILED, {"item_id": "a", "error_type": "X"}),
        (Event.BATCH_COMPLETED, {}),
        (Event.BATCH_STARTED, {"total": 3}),
        (Event.ITEM_COMPLETED, {"item_id": "b"}),
    )
    assert (observer.total, observer.completed, observer.succeeded) == (3, 1, 1)
    assert (observer.failed, observer.rate_limit_hits) == (0, 0)
    observer.stop()
    assert out.getvalue().count("Processing") == 2


async def test_context_manager_stops_a_display_whose_batch_never_completed() -> None:
    """Leaving the with block stops the display of a cancelled batch; stop() is idempotent."""
    observer, out = make_observer()
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 10}))
        assert observer.running
    assert not observer.running
    assert "0/10" in out.getvalue()
    observer.stop()
    assert out.getvalue().count("0/10") == 1


def test_refresh_per_second_must_be_positive() -> None:
    """A non-positive redraw rate is rejected, naming the value and the fix."""
    with pytest.raises(ValueError, match=r"refresh_per_second must be > 0, got 0; use e\.g\. 4"):
        RichProgressObserver(refresh_per_second=0)


def test_repr_shows_the_counts() -> None:
    """The repr reports progress and outcomes."""
    observer, _ = make_observer()
    assert repr(observer) == (
        "RichProgressObserver(completed=0/0, succeeded=0, failed=0, replayed=0, "
        "rate_limit_hits=0, cooldowns=0)"
    )


class _OddFails(LLMCallStrategy[int]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[int, TokenUsage]:
        await asyncio.sleep(0)
        if int(prompt) % 2:
            raise ValueError(f"odd prompt {prompt}")
        return int(prompt), {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


async def test_follows_a_real_batch_to_the_same_counts(caplog: pytest.LogCaptureFixture) -> None:
    """Attached to a processor, the observer ends with the batch result's counts."""
    observer, out = make_observer()
    config = ProcessorConfig(max_workers=3, retry=RetryConfig(max_attempts=1))
    strategy = _OddFails()
    with caplog.at_level("CRITICAL"):
        async with ParallelBatchProcessor[str, int, None](
            config=config, observers=[observer]
        ) as processor:
            for i in range(7):
                await processor.add_work(
                    LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt=str(i))
                )
            result = await processor.process_all()
    assert (observer.completed, observer.total) == (7, 7)
    assert (observer.succeeded, observer.failed) == (result.succeeded, result.failed) == (4, 3)
    assert not observer.running
    assert "7/7" in out.getvalue()


def test_import_without_rich_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rich, importing the module fails with an ImportError saying what to install."""
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.delitem(sys.modules, "async_batch_llm.observers.progress")
    with pytest.raises(ImportError, match=r"pip install rich"):
        importlib.import_module("async_batch_llm.observers.progress")


# --- Output of other code while the display is live --------------------------------------

WIDTH = 100
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_TERMINAL_TOKEN = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\r|\n|[^\x1b\r\n]")


def screen(raw: str, width: int = WIDTH) -> list[str]:
    """The lines a terminal shows after receiving ``raw``.

    Applies what rich's live display sends: text, carriage return, newline (shown as a new
    line, as a terminal with ``onlcr`` does), erase line and cursor up, with autowrap at
    ``width``. Other escape sequences (colours, cursor visibility) change no text.
    """
    lines: list[list[str]] = [[]]
    row = col = 0
    wrap_next = False

    def next_row() -> None:
        nonlocal row, col
        row, col = row + 1, 0
        if row == len(lines):
            lines.append([])

    for token in _TERMINAL_TOKEN.finditer(raw):
        text, command = token.group(0), token.group(2)
        if command is not None:
            wrap_next = False
            if command == "A":
                row = max(0, row - int(token.group(1) or 1))
            elif command == "K" and token.group(1) == "2":
                lines[row] = []
        elif text == "\r":
            col, wrap_next = 0, False
        elif text == "\n":
            next_row()
            wrap_next = False
        else:
            if wrap_next:
                next_row()
                wrap_next = False
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = text
            if col == width - 1:
                wrap_next = True
            else:
                col += 1
    shown = ["".join(line).rstrip() for line in lines]
    while shown and not shown[-1]:
        shown.pop()
    return shown


def test_screen_replays_a_live_redraw() -> None:
    """The helper itself: a redraw erases the old display; a long line wraps."""
    raw = "bar 1/2\n  status\r\x1b[2K\x1b[1A\x1b[2Knew bar\n  new status"
    assert screen(raw) == ["new bar", "  new status"]
    assert screen("x" * (WIDTH + 3)) == ["x" * WIDTH, "xxx"]


@pytest.fixture
def terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capable terminal whatever the environment says (CI may set TERM=dumb)."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    """A logger of the library's family with no handlers of its own; reset afterwards."""
    logger = logging.getLogger("async_batch_llm.tests.progress")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def stream_handler(stream: object) -> logging.StreamHandler[Any]:
    handler: logging.StreamHandler[Any] = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    return handler


def terminal_observer(description: str = "Summarising") -> tuple[RichProgressObserver, io.StringIO]:
    """An observer drawing on a terminal console (``force_terminal``), and what it wrote."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=WIDTH)
    return RichProgressObserver(description=description, console=console), out


DISPLAY = (
    re.compile(r"Summarising [━╸╺ ]{30} +(\d+)/(\d+) (?:-|[\d.,]+) items/s \d:\d\d:\d\d"),
    re.compile(r"  (\d+) ok, (\d+) failed, 0 rate limits, 0 cooldowns"),
)


def assert_display_at_the_bottom(shown: list[str], total: int) -> tuple[int, int, int]:
    """The last two lines are the display, whole, and the bar is on screen once.

    Returns the items done, succeeded and failed that the display shows. Until the batch
    completes that is the state of its last redraw, which rich's refresh thread makes at
    times of its own, so only the final display has counts known in advance.
    """
    assert [line for line in shown if "Summarising" in line] == [shown[-2]], shown
    bar, status = DISPLAY[0].fullmatch(shown[-2]), DISPLAY[1].fullmatch(shown[-1])
    assert bar is not None, shown
    assert status is not None, shown
    assert int(bar.group(2)) == total, shown
    return int(bar.group(1)), int(status.group(1)), int(status.group(2))


async def test_log_lines_print_above_the_bar_which_is_redrawn_under_them(
    terminal_env: None, log: logging.Logger
) -> None:
    """A handler writing to the console's terminal: its lines go above, the bar stays whole."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 3}))
        await send(observer, (Event.ITEM_COMPLETED, {"item_id": "a"}))
        log.warning("Item b attempt 1/5 failed (503); retrying in 0.2s")
        shown = screen(out.getvalue())
        assert shown[-3] == f"WARNING {log.name}: Item b attempt 1/5 failed (503); retrying in 0.2s"
        assert_display_at_the_bottom(shown, 3)

        log.error("Item c failed permanently:\nthe reason, on a line of its own")
        await send(
            observer,
            (Event.ITEM_COMPLETED, {"item_id": "b"}),
            (Event.ITEM_FAILED, {"item_id": "c", "error_type": "ValueError"}),
            (Event.BATCH_COMPLETED, {}),
        )
    shown = screen(out.getvalue())
    assert shown[-5:-2] == [
        f"WARNING {log.name}: Item b attempt 1/5 failed (503); retrying in 0.2s",
        f"ERROR {log.name}: Item c failed permanently:",
        "the reason, on a line of its own",
    ]
    assert assert_display_at_the_bottom(shown, 3) == (3, 2, 1)


async def test_print_to_stdout_and_stderr_goes_above_the_bar(terminal_env: None) -> None:
    """print() to either stream during the display (pydantic-ai's banner uses stderr)."""
    observer, out = terminal_observer()
    stdout, stderr = sys.stdout, sys.stderr
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 1}))
        print("to stdout")
        print("to stderr", file=sys.stderr)
        await send(observer, (Event.ITEM_COMPLETED, {"item_id": "a"}), (Event.BATCH_COMPLETED, {}))
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
    shown = screen(out.getvalue())
    assert shown[-4:-2] == ["to stdout", "to stderr"]
    assert assert_display_at_the_bottom(shown, 1) == (1, 1, 0)


async def test_handlers_keep_their_format_level_and_get_their_stream_back(
    terminal_env: None, log: logging.Logger
) -> None:
    """Only the stream changes, for the display's lifetime; nothing is added or replaced."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    formatter = handler.formatter
    log.addHandler(handler)
    # Besides ours, pytest's capture handlers; they must not change either.
    handlers, root_handlers = list(log.handlers), list(logging.getLogger().handlers)
    await send(observer, (Event.BATCH_STARTED, {"total": 1}))
    try:
        assert handler.stream is not out
        assert log.handlers == handlers
        assert logging.getLogger().handlers == root_handlers
        assert (handler.formatter, handler.level) == (formatter, logging.INFO)
    finally:
        await send(observer, (Event.ITEM_COMPLETED, {"item_id": "a"}), (Event.BATCH_COMPLETED, {}))
    assert handler.stream is out
    assert log.handlers == handlers
    assert logging.getLogger().handlers == root_handlers
    # Back on the stream itself: the next line is written as is, after the final display.
    log.warning("after the batch")
    assert out.getvalue().endswith(f"WARNING {log.name}: after the batch\n")


async def test_streams_are_restored_when_the_display_ends_with_an_exception(
    terminal_env: None, log: logging.Logger
) -> None:
    """An exception that leaves the with block (no BATCH_COMPLETED) still restores everything."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    stdout, stderr = sys.stdout, sys.stderr
    during: list[object] = []

    async def batch_that_raises() -> None:
        with observer:
            await send(observer, (Event.BATCH_STARTED, {"total": 5}))
            during.append(handler.stream)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await batch_that_raises()
    assert during[0] is not out
    assert not observer.running
    assert handler.stream is out
    assert (sys.stdout, sys.stderr) == (stdout, stderr)


class _Blocks(LLMCallStrategy[str]):
    """Never answers; tells the test when the first call is waiting."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_streams_are_restored_when_the_batch_is_cancelled(
    terminal_env: None, log: logging.Logger
) -> None:
    """A cancelled batch sends no BATCH_COMPLETED; leaving the with block restores the streams."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    strategy = _Blocks()
    with observer:
        async with ParallelBatchProcessor[str, str, None](
            config=ProcessorConfig(max_workers=2), observers=[observer]
        ) as processor:
            for i in range(4):
                item = LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt="x")
                await processor.add_work(item)
            batch = asyncio.create_task(processor.process_all())
            await strategy.waiting.wait()
            assert observer.running
            assert handler.stream is not out
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
    assert not observer.running
    assert handler.stream is out


async def test_a_second_batch_redirects_again_and_restores_again(
    terminal_env: None, log: logging.Logger
) -> None:
    """Each display redirects the original stream (never a proxy of a proxy) and restores it."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    for batch in (1, 2):
        await send(observer, (Event.BATCH_STARTED, {"total": 1}))
        log.warning("in batch %d", batch)
        shown = screen(out.getvalue())
        assert shown[-3] == f"WARNING {log.name}: in batch {batch}"
        assert assert_display_at_the_bottom(shown[-2:], 1) == (0, 0, 0)
        await send(observer, (Event.ITEM_COMPLETED, {"item_id": "a"}), (Event.BATCH_COMPLETED, {}))
        assert handler.stream is out
    # A new BATCH_STARTED without a BATCH_COMPLETED first (stop() runs inside _start).
    await send(observer, (Event.BATCH_STARTED, {"total": 1}), (Event.BATCH_STARTED, {"total": 1}))
    observer.stop()
    assert handler.stream is out


async def test_a_stream_the_application_replaces_during_the_display_is_kept(
    terminal_env: None, log: logging.Logger
) -> None:
    """Restoring never undoes a setStream() the application made while the display ran."""
    observer, out = terminal_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    elsewhere = io.StringIO()
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 1}))
        handler.setStream(elsewhere)
    assert handler.stream is elsewhere


async def test_handlers_writing_elsewhere_are_left_alone(
    terminal_env: None, log: logging.Logger, tmp_path: Path
) -> None:
    """A log file, or a stream that is not the console's, keeps receiving the lines directly."""
    observer, out = terminal_observer()
    other = io.StringIO()
    to_other = stream_handler(other)
    to_file = logging.FileHandler(tmp_path / "batch.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(to_other)
    log.addHandler(to_file)
    try:
        with observer:
            await send(observer, (Event.BATCH_STARTED, {"total": 1}))
            assert to_other.stream is other
            file_stream = to_file.stream
            log.warning("retrying")
            assert to_file.stream is file_stream
    finally:
        to_file.close()
    assert other.getvalue() == f"WARNING {log.name}: retrying\n"
    assert (tmp_path / "batch.log").read_text(encoding="utf-8") == f"WARNING {log.name}: retrying\n"
    assert "retrying" not in out.getvalue()


async def test_a_console_that_is_not_a_terminal_changes_nothing(log: logging.Logger) -> None:
    """Off a terminal the display is printed once at the end: streams and lines stay as they are."""
    observer, out = make_observer()
    handler = stream_handler(out)
    log.addHandler(handler)
    stdout, stderr = sys.stdout, sys.stderr
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 1}))
        assert handler.stream is out
        assert (sys.stdout, sys.stderr) == (stdout, stderr)
        log.warning("retrying")
        assert out.getvalue() == f"WARNING {log.name}: retrying\n"
        await send(observer, (Event.ITEM_COMPLETED, {"item_id": "a"}), (Event.BATCH_COMPLETED, {}))
    assert handler.stream is out
    assert out.getvalue().startswith(f"WARNING {log.name}: retrying\nProcessing ")


class PseudoTerminal:
    """A pty whose output is read as a terminal would read it, until the test is done.

    `console_file` and `other_file` are two file objects on the same terminal, like
    `sys.stdout` and `sys.stderr` in a shell.
    """

    END = "<end of test output>"

    def __init__(self) -> None:
        self._master, slave = os.openpty()
        self._received: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.console_file = open(slave, "w", encoding="utf-8")  # noqa: SIM115 (see close)
        self.other_file = open(os.dup(slave), "w", encoding="utf-8")  # noqa: SIM115

    def _drain(self) -> None:
        # Reading all along means no write ever blocks on a full pty buffer.
        end = self.END.encode() + b"\r\n"
        while not b"".join(self._received).endswith(end):
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # closed: the test failed before writing the end marker
                return
            if not chunk:
                return
            self._received.append(chunk)

    def output(self) -> str:
        """Everything written so far, once an end marker sent now has come back."""
        self.console_file.write(self.END + "\n")
        self.console_file.flush()
        self._reader.join(timeout=30)  # a guard against a hang, not a synchronisation
        assert not self._reader.is_alive(), "the end marker never came back"
        return b"".join(self._received).decode("utf-8")

    def close(self) -> None:
        self.console_file.close()
        self.other_file.close()
        self._reader.join(timeout=30)
        os.close(self._master)


@pytest.fixture
def pty_terminal() -> Iterator[PseudoTerminal]:
    if not hasattr(os, "openpty"):
        pytest.skip("needs a pseudo-terminal")
    terminal = PseudoTerminal()
    yield terminal
    terminal.close()


async def test_on_a_real_terminal_a_stderr_style_handler_prints_above_the_bar(
    terminal_env: None, log: logging.Logger, pty_terminal: PseudoTerminal
) -> None:
    """Console and handler hold different file objects on one terminal, like stdout and the
    stderr handler of logging.basicConfig(): the handler is routed above the bar too."""
    console = Console(file=pty_terminal.console_file, force_terminal=True, width=WIDTH)
    observer = RichProgressObserver(description="Summarising", console=console)
    handler = stream_handler(pty_terminal.other_file)
    log.addHandler(handler)
    with observer:
        await send(observer, (Event.BATCH_STARTED, {"total": 2}))
        log.warning("Item a attempt 1/5 failed (503); retrying in 0.2s")
        await send(
            observer,
            (Event.ITEM_COMPLETED, {"item_id": "a"}),
            (Event.ITEM_COMPLETED, {"item_id": "b"}),
            (Event.BATCH_COMPLETED, {}),
        )
    assert handler.stream is pty_terminal.other_file
    shown = screen(pty_terminal.output())
    assert shown[-1] == PseudoTerminal.END
    assert shown[-4] == f"WARNING {log.name}: Item a attempt 1/5 failed (503); retrying in 0.2s"
    assert assert_display_at_the_bottom(shown[:-1], 2) == (2, 2, 0)


async def test_replayed_items_are_counted_apart() -> None:
    """Replayed items complete the bar but are not counted as run, nor in the throughput."""
    observer, out = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": 3}),
        (Event.ITEM_REPLAYED, {"item_id": "a", "success": True}),
        (Event.ITEM_REPLAYED, {"item_id": "b", "success": False}),
        (Event.ITEM_COMPLETED, {"item_id": "c", "duration": 0.1}),
    )
    assert (observer.completed, observer.replayed) == (3, 2)
    assert (observer.succeeded, observer.failed) == (1, 0)
    assert "1 ok, 0 failed, 2 replayed" in observer.status_line().plain
    await send(observer, (Event.BATCH_COMPLETED, {"total": 3}))
    assert "3/3" in out.getvalue()


async def test_a_stream_of_unknown_length_has_no_total_until_it_ends() -> None:
    observer, out = make_observer()
    await send(
        observer,
        (Event.BATCH_STARTED, {"total": None}),
        (Event.ITEM_COMPLETED, {"item_id": "a", "duration": 0.1}),
    )
    assert observer.total is None
    assert "completed=1/?" in repr(observer)
    await send(observer, (Event.BATCH_COMPLETED, {"total": 1}))
    assert observer.total == 1
    assert "1/1" in out.getvalue()
    assert "replayed" not in out.getvalue()
