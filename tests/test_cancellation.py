"""Cancellation: nothing keeps running, strategies are cleaned up, timeouts stay timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm import (
    FrameworkTimeoutError,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm._internal.deadline import AttemptDeadline
from support import BlockingStrategy, fast_config, items_for

Processor = ParallelBatchProcessor[str, Any, Any]
Item = LLMWorkItem[str, Any, Any]


class StuckStrategy(LLMCallStrategy[str]):
    """Every call waits for ``release`` (forever unless set); records how calls ended."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.calls = 0
        self.cancelled_calls = 0
        self.errors_seen: list[str] = []
        self.prepare_calls = 0
        self.cleanup_calls = 0

    async def prepare(self) -> None:
        self.prepare_calls += 1

    async def cleanup(self) -> None:
        self.cleanup_calls += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled_calls += 1
            raise
        return prompt, {}

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.errors_seen.append(type(exception).__name__)


class LifecycleBlockingStrategy(BlockingStrategy):
    def __init__(self) -> None:
        super().__init__()
        self.prepare_calls = 0
        self.cleanup_calls = 0

    async def prepare(self) -> None:
        self.prepare_calls += 1

    async def cleanup(self) -> None:
        self.cleanup_calls += 1


class _QuickStrategy(LLMCallStrategy[str]):
    """Returns at once."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return prompt, {}


async def _start(processor: Processor, items: list[Any]) -> asyncio.Task[Any]:
    for item in items:
        await processor.add_work(item)
    return asyncio.create_task(processor.process_all())


class TestCancellingProcessAll:
    async def test_cancel_leaves_no_tasks_and_cleans_up_strategies(self) -> None:
        """Cancelling process_all() mid-flight raises CancelledError, stops every task it
        started, and leaving ``async with`` cleans up every prepared strategy."""
        before = asyncio.all_tasks()
        first, second = LifecycleBlockingStrategy(), LifecycleBlockingStrategy()
        first.expected = 2
        items = items_for(first, 4, prefix="a") + items_for(second, 4, prefix="b")
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=2)
        ) as processor:
            run = await _start(processor, items)
            await first.all_started.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            await asyncio.sleep(0)
            assert asyncio.all_tasks() == before
            assert first.in_flight == 0
            assert all(worker.done() for worker in processor._workers)
            assert processor._is_processing is False
        assert (first.prepare_calls, first.cleanup_calls) == (1, 1)
        assert (second.prepare_calls, second.cleanup_calls) == (0, 0)

    async def test_cancel_with_every_hook_leaves_no_tasks(self) -> None:
        """With a limiter, progress callback and post-processor, cancellation still leaves
        nothing behind once the processor is cleaned up."""
        before = asyncio.all_tasks()
        never = asyncio.Event()

        async def progress(completed: int, total: int, item_id: str) -> None:
            await never.wait()

        strategy = LifecycleBlockingStrategy()
        strategy.expected = 2
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(
                max_workers=2,
                max_requests_per_minute=6000,
                progress_interval=1,
                progress_callback_timeout=None,
            ),
            progress_callback=progress,
            post_processor=lambda result: None,
        )
        async with processor:
            first: Item = LLMWorkItem(item_id="quick", strategy=_QuickStrategy(), prompt="q")
            run = await _start(processor, [first, *items_for(strategy, 6)])
            await strategy.all_started.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before
        assert strategy.cleanup_calls == 1

    async def test_cleanup_after_cancel_drains_queue(self) -> None:
        """cleanup() after a cancelled run empties the queue and settles its task count."""
        strategy = BlockingStrategy()
        strategy.expected = 2
        processor: Processor = ParallelBatchProcessor(config=fast_config(max_workers=2))
        run = await _start(processor, items_for(strategy, 7))
        await strategy.all_started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert not processor._queue.empty()
        await processor.cleanup()
        assert processor._queue.empty()
        await asyncio.wait_for(processor._queue.join(), timeout=1.0)

    async def test_outer_cancel_during_call_is_not_a_timeout(self) -> None:
        """Cancelling process_all() while a strategy call runs raises CancelledError; the call
        is cancelled, not timed out, and no failed result or on_error is produced."""
        strategy = StuckStrategy()
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1, timeout_per_item=30.0)
        ) as processor:
            run = await _start(processor, items_for(strategy, 2))
            await strategy.started.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            assert processor._results == []
        assert strategy.calls == 1
        assert strategy.cancelled_calls == 1
        assert strategy.errors_seen == []


class TestCancellingOneItem:
    async def test_cancelled_retry_wrapper_does_not_retry(self) -> None:
        """Cancelling ``_process_item_with_retries`` raises CancelledError after one call."""
        strategy = StuckStrategy()
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(retry=RetryConfig(max_attempts=5, initial_wait=0.001))
        )
        item: Item = LLMWorkItem(item_id="a", strategy=strategy, prompt="p")
        task = asyncio.create_task(processor._process_item_with_retries(item, 0))
        await strategy.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(5):
            await asyncio.sleep(0)
        assert strategy.calls == 1
        assert strategy.cancelled_calls == 1
        assert strategy.errors_seen == []


class TestAttemptDeadline:
    async def test_deadline_fails_the_attempt_with_framework_timeout(self) -> None:
        """A call outliving timeout_per_item fails that attempt with FrameworkTimeoutError."""
        strategy = StuckStrategy()
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(
                max_workers=1, timeout_per_item=0.02, retry=RetryConfig(max_attempts=1)
            )
        ) as processor:
            await processor.add_work(LLMWorkItem(item_id="a", strategy=strategy, prompt="p"))
            result = await processor.process_all()
        (item_result,) = result.results
        assert item_result.success is False
        assert (item_result.error or "").startswith("FrameworkTimeoutError: ")
        assert strategy.cancelled_calls == 1
        assert strategy.errors_seen == ["FrameworkTimeoutError"]

    async def test_retry_wrapper_raises_framework_timeout(self) -> None:
        """Outside a batch the same deadline raises FrameworkTimeoutError with its details."""
        strategy = StuckStrategy()
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(timeout_per_item=0.02, retry=RetryConfig(max_attempts=1))
        )
        item: Item = LLMWorkItem(item_id="a", strategy=strategy, prompt="p")
        with pytest.raises(FrameworkTimeoutError) as caught:
            await processor._process_item_with_retries(item, 0)
        assert caught.value.item_id == "a"
        assert caught.value.timeout_limit == 0.02
        assert caught.value.elapsed is not None
        assert caught.value.elapsed >= 0.0
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0

    async def test_deadline_expiry_alone_is_withdrawn(self) -> None:
        """When only the deadline cancelled the task, disarm() reports it and undoes it."""
        outcome: list[bool] = []
        never = asyncio.Event()

        async def attempt() -> int:
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            try:
                await never.wait()
            except asyncio.CancelledError:
                outcome.append(deadline.disarm())
            finally:
                deadline.close()
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        assert await asyncio.create_task(attempt()) == 0
        assert outcome == [True]

    async def test_outer_cancel_coinciding_with_deadline_stays_a_cancellation(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An outer cancel landing together with the deadline's is not turned into a timeout."""
        original_fire = AttemptDeadline._fire

        def fire_then_outer_cancel(self: AttemptDeadline) -> None:
            original_fire(self)
            self._task.cancel()  # someone else cancels in the same loop iteration

        monkeypatch.setattr(AttemptDeadline, "_fire", fire_then_outer_cancel)
        outcome: list[bool] = []
        never = asyncio.Event()

        async def attempt() -> None:
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            try:
                await never.wait()
            except asyncio.CancelledError:
                outcome.append(deadline.disarm())
                raise
            finally:
                deadline.close()

        task = asyncio.create_task(attempt())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcome == [False]
