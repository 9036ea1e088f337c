"""`ParallelBatchProcessor.drain()`: calls in flight finish, the rest end interrupted."""

from __future__ import annotations

import asyncio
from typing import Any

from async_batch_llm import LLMCallStrategy, ParallelBatchProcessor
from support import USAGE, EchoStrategy, fast_config, items_for


class TestDrain:
    async def test_drain_finishes_calls_in_flight_and_skips_the_rest(self) -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        class Gate(LLMCallStrategy[str]):
            calls = 0

            async def execute(self, prompt: str, attempt: int, timeout: float, state=None):  # type: ignore[no-untyped-def]
                Gate.calls += 1
                started.set()
                await release.wait()
                return prompt, dict(USAGE)

        strategy = Gate()
        items = items_for(strategy, 10)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=2)
        ) as processor:
            stream = processor.stream(items)
            first = asyncio.ensure_future(stream.__anext__())
            await started.wait()
            processor.drain()
            release.set()
            results = [await first] + [r async for r in stream]
        assert len(results) == 10
        ok = [r for r in results if r.success]
        drained = [r for r in results if not r.success]
        assert len(ok) == Gate.calls <= 2
        assert all(r.error_category == "interrupted" and r.attempts == 0 for r in drained)


async def test_drain_ends_with_its_batch_and_the_next_batch_runs() -> None:
    strategy = EchoStrategy()
    async with ParallelBatchProcessor[str, Any, Any](config=fast_config()) as processor:
        processor.drain()  # between batches: applies to the next one
        first = [r async for r in processor.stream(items_for(strategy, 3, prefix="a"))]
        second = [r async for r in processor.stream(items_for(strategy, 3, prefix="b"))]
    assert [r.error_category for r in first] == ["interrupted"] * 3
    assert all(r.success for r in second)
    assert len(strategy.calls) == 3


async def test_drain_ends_waits_for_admission_and_back_off_at_once() -> None:
    """Workers waiting for a rate-limit slot (one a minute here) or a long back-off end
    as soon as drain() is called: without it this test would wait minutes and time out."""
    from async_batch_llm import ProcessorConfig, RetryConfig
    from support import BlockingStrategy, ScriptedStrategy, TransientError

    blocking = BlockingStrategy()
    blocking.expected = 1
    config = ProcessorConfig(max_workers=4, max_requests_per_minute=1)
    async with ParallelBatchProcessor[str, Any, Any](config=config) as processor:
        stream = processor.stream(items_for(blocking, 8))
        first = asyncio.ensure_future(stream.__anext__())
        await blocking.all_started.wait()
        processor.drain()
        blocking.release.set()
        results = [await first] + [r async for r in stream]
    assert len(results) == 8
    assert sum(r.success for r in results) == 1
    assert all(r.error_category == "interrupted" for r in results if not r.success)

    failed_once = asyncio.Event()

    class FailsOnce(ScriptedStrategy):
        async def on_error(self, exception: Exception, attempt: int, state: Any = None) -> None:
            failed_once.set()

    backing_off = FailsOnce([TransientError("once")])
    retry = RetryConfig(max_attempts=3, initial_wait=600, max_wait=600, jitter=False)
    async with ParallelBatchProcessor[str, Any, Any](
        config=ProcessorConfig(max_workers=1, retry=retry)
    ) as processor:
        stream = processor.stream(items_for(backing_off, 1))
        pending = asyncio.ensure_future(stream.__anext__())
        await failed_once.wait()  # the 600 s back-off is next (or has begun)
        processor.drain()
        result = await pending
        assert [r async for r in stream] == []
    assert (result.error_category, result.attempts) == ("interrupted", 1)
