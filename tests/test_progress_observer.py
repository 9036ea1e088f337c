"""RichProgressObserver: counts from events, a live display that stops cleanly, the extra."""

from __future__ import annotations

import asyncio
import importlib
import io
import sys

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
        "RichProgressObserver(completed=0/0, succeeded=0, failed=0, rate_limit_hits=0, cooldowns=0)"
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
    """Without rich, importing the module fails with an ImportError naming the extra."""
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.delitem(sys.modules, "async_batch_llm.observers.progress")
    with pytest.raises(ImportError, match=r"pip install 'async-batch-llm\[progress\]'"):
        importlib.import_module("async_batch_llm.observers.progress")
