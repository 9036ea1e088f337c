"""stream(): lazy intake with backpressure, completion or input order, leaving early cleanly."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import pytest

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from support import USAGE, BlockingStrategy, EchoStrategy, fast_config, items_for

Item = LLMWorkItem[str, Any, Any]


async def collect(stream: AsyncIterator[WorkItemResult[Any, Any]], ids: list[str]) -> None:
    """Take every result of `stream`, noting its id in `ids` (kept when the stream fails)."""
    async for result in stream:
        ids.append(result.item_id)


class JitterStrategy(LLMCallStrategy[str]):
    """Answers after a random short pause, so completion order differs from input order."""

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)
        self.calls: list[str] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append(prompt)
        for _ in range(self.random.randrange(4)):
            await asyncio.sleep(0)
        return prompt.upper(), dict(USAGE)  # type: ignore[return-value]


class CountingSource:
    """A sync iterable that counts how many items were taken from it."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.taken = 0
        self.closed = False

    def __iter__(self) -> Iterator[Item]:
        try:
            for item in self.items:
                self.taken += 1
                yield item
        finally:
            self.closed = True


class AsyncSource:
    """An async generator source that records being closed."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.taken = 0
        self.closed = asyncio.Event()

    async def generate(self) -> AsyncIterator[Item]:
        try:
            for item in self.items:
                await asyncio.sleep(0)
                self.taken += 1
                yield item
        finally:
            self.closed.set()


def other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_every_item_yields_exactly_one_result() -> None:
    strategy = JitterStrategy()
    items = items_for(strategy, 300)
    async with ParallelBatchProcessor(config=fast_config(max_workers=8)) as processor:
        ids = [result.item_id async for result in processor.stream(iter(items))]
    assert sorted(ids) == sorted(item.item_id for item in items)
    assert len(strategy.calls) == 300


async def test_results_come_in_completion_order_by_default() -> None:
    """A slow first item does not hold back the others."""
    slow = BlockingStrategy()
    fast = EchoStrategy()
    items: list[Item] = [LLMWorkItem(item_id="slow", strategy=slow, prompt="p")]
    items += items_for(fast, 5)
    got: list[str] = []
    async with ParallelBatchProcessor(config=fast_config(max_workers=3)) as processor:
        async for result in processor.stream(items):
            got.append(result.item_id)
            if len(got) == 5:
                slow.release.set()
    assert got[-1] == "slow"


async def test_ordered_yields_input_order() -> None:
    strategy = JitterStrategy(seed=3)
    items = items_for(strategy, 200)
    async with ParallelBatchProcessor(config=fast_config(max_workers=8)) as processor:
        ids = [r.item_id async for r in processor.stream(items, ordered=True, window=16)]
    assert ids == [item.item_id for item in items]


async def test_ordered_with_the_same_item_object_twice() -> None:
    strategy = EchoStrategy()
    item: Item = LLMWorkItem(item_id="same", strategy=strategy, prompt="p")
    other: Item = LLMWorkItem(item_id="other", strategy=strategy, prompt="q")
    async with ParallelBatchProcessor(config=fast_config(max_workers=2)) as processor:
        ids = [r.item_id async for r in processor.stream([item, other, item], ordered=True)]
    assert ids == ["same", "other", "same"]


@pytest.mark.parametrize("ordered", [False, True])
async def test_intake_stays_within_the_window(ordered: bool) -> None:
    """Never more than `window` items are taken ahead of the results the caller took."""
    strategy = JitterStrategy(seed=1)
    source = CountingSource(items_for(strategy, 500))
    window = 10
    seen = 0
    worst = 0
    async with ParallelBatchProcessor(config=fast_config(max_workers=4)) as processor:
        async for _ in processor.stream(source, ordered=ordered, window=window):
            worst = max(worst, source.taken - seen)
            seen += 1
            await asyncio.sleep(0)  # let intake run as far as it may
            worst = max(worst, source.taken - seen)
    assert seen == 500
    assert worst <= window
    assert worst >= window // 2  # the window is used, not one item at a time


async def test_a_slow_head_item_pauses_ordered_intake() -> None:
    slow = BlockingStrategy()
    fast = EchoStrategy()
    items: list[Item] = [LLMWorkItem(item_id="head", strategy=slow, prompt="p")]
    items += items_for(fast, 100)
    source = CountingSource(items)
    async with ParallelBatchProcessor(config=fast_config(max_workers=4)) as processor:
        stream = processor.stream(source, ordered=True, window=8)
        first = asyncio.ensure_future(anext(stream))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not first.done()
        assert source.taken == 8  # intake stopped at the window, the head still running
        slow.release.set()
        assert (await first).item_id == "head"
        rest = [r.item_id async for r in stream]
    assert rest == [item.item_id for item in items[1:]]


async def test_queued_work_goes_first() -> None:
    strategy = EchoStrategy()
    queued = items_for(strategy, 3, prefix="queued")
    streamed = items_for(strategy, 3, prefix="streamed")
    async with ParallelBatchProcessor(config=fast_config(max_workers=1)) as processor:
        for item in queued:
            await processor.add_work(item)
        ids = [r.item_id async for r in processor.stream(streamed)]
    assert ids == [i.item_id for i in queued + streamed]
    stats = await processor.get_stats()
    assert stats["total"] == 6
    assert stats["processed"] == 6


async def test_stream_without_items_runs_the_queue() -> None:
    strategy = EchoStrategy()
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        for item in items_for(strategy, 4):
            await processor.add_work(item)
        results = [r async for r in processor.stream()]
    assert sorted(r.item_id for r in results) == [f"item-{i}" for i in range(4)]


async def test_an_async_source() -> None:
    strategy = EchoStrategy()
    source = AsyncSource(items_for(strategy, 50))
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        results = [r async for r in processor.stream(source.generate())]
    assert len(results) == 50
    assert source.closed.is_set()


async def test_leaving_early_stops_everything() -> None:
    """break + aclose: the async source is closed, calls in flight are cancelled, the
    strategy is cleaned up, and no task is left."""
    blocking = BlockingStrategy()
    echo = EchoStrategy()
    items = items_for(echo, 3) + items_for(blocking, 20, prefix="blocked")
    source = AsyncSource(items)
    async with ParallelBatchProcessor(config=fast_config(max_workers=4)) as processor:
        async with aclosing(processor.stream(source.generate())) as stream:
            got = []
            async for result in stream:
                got.append(result.item_id)
                if len(got) == 3:
                    break
        assert source.closed.is_set()
        assert blocking.in_flight == 0
        assert echo.cleanup_calls == 1
        assert not other_tasks()
        assert source.taken < len(items)
    assert got == ["item-0", "item-1", "item-2"]


async def test_cancelling_the_consumer_stops_everything() -> None:
    blocking = BlockingStrategy()
    blocking.expected = 4
    source = AsyncSource(items_for(blocking, 50))

    async with ParallelBatchProcessor(config=fast_config(max_workers=4)) as processor:

        async def consume() -> None:
            async for _ in processor.stream(source.generate()):
                pass

        task = asyncio.ensure_future(consume())
        await blocking.all_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert source.closed.is_set()
        assert blocking.in_flight == 0
        assert not other_tasks()


async def test_a_dropped_stream_is_closed_before_the_next_run() -> None:
    """Breaking out without aclose() leaves the generator to the event loop; the next run
    on the processor waits until it has shut down instead of failing."""
    strategy = EchoStrategy()
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        async for _ in processor.stream(items_for(strategy, 20)):
            break
        gc.collect()
        results = [r async for r in processor.stream(items_for(strategy, 5, prefix="next"))]
    assert len(results) == 5
    assert not other_tasks()


async def test_shutdown_stops_an_unfinished_stream() -> None:
    blocking = BlockingStrategy()
    blocking.expected = 2
    processor = ParallelBatchProcessor[str, str, Any](config=fast_config(max_workers=2))
    stream = processor.stream(items_for(blocking, 10))
    consumer = asyncio.ensure_future(anext(stream))
    await blocking.all_started.wait()
    await processor.shutdown()
    with pytest.raises((RuntimeError, StopAsyncIteration, asyncio.CancelledError)):
        await consumer
    assert blocking.in_flight == 0
    await stream.aclose()
    assert not other_tasks()


async def test_a_second_run_while_one_is_active_is_refused() -> None:
    blocking = BlockingStrategy()
    blocking.expected = 1
    async with ParallelBatchProcessor(config=fast_config(max_workers=1)) as processor:
        stream = processor.stream(items_for(blocking, 2))
        first = asyncio.ensure_future(anext(stream))
        await blocking.all_started.wait()
        with pytest.raises(RuntimeError, match="already running"):
            await anext(processor.stream(items_for(EchoStrategy(), 1)))
        with pytest.raises(RuntimeError, match="Cannot add work"):
            await processor.add_work(items_for(EchoStrategy(), 1)[0])
        blocking.release.set()
        await first
        await stream.aclose()


async def test_a_bad_item_fails_the_stream_after_the_items_before_it() -> None:
    strategy = EchoStrategy()
    items: list[Any] = [*items_for(strategy, 3), "not an item"]
    got: list[str] = []
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        with pytest.raises(TypeError, match="LLMWorkItem"):
            await collect(processor.stream(items), got)
    assert sorted(got) == ["item-0", "item-1", "item-2"]


async def test_a_failing_source_fails_the_stream_after_what_it_gave() -> None:
    strategy = EchoStrategy()

    def source() -> Iterator[Item]:
        yield from items_for(strategy, 4)
        raise OSError("input file vanished")

    got: list[str] = []
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        with pytest.raises(OSError, match="vanished"):
            await collect(processor.stream(source()), got)
    assert len(got) == 4


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.stream(5), TypeError, "iterable"),  # type: ignore[arg-type]
        (lambda p: p.stream([], ordered="yes"), TypeError, "ordered"),
        (lambda p: p.stream([], window=0), ValueError, "window"),
        (lambda p: p.stream([], window=True), ValueError, "window"),
    ],
)
async def test_bad_arguments_fail_at_once(call: Any, error: type[Exception], match: str) -> None:
    async with ParallelBatchProcessor(config=fast_config()) as processor:
        with pytest.raises(error, match=match):
            call(processor)


async def test_stream_counts_stats_and_sends_batch_events() -> None:
    from support import RecordingObserver

    observer = RecordingObserver()
    strategy = EchoStrategy()

    def source() -> Iterator[Item]:
        yield from items_for(strategy, 7)

    async with ParallelBatchProcessor(config=fast_config(), observers=[observer]) as processor:
        results = [r async for r in processor.stream(source())]
        stats = await processor.get_stats()
    assert len(results) == 7
    assert stats["total"] == 7
    assert stats["succeeded"] == 7
    from async_batch_llm import ProcessingEvent

    started = observer.of(ProcessingEvent.BATCH_STARTED)
    assert started == [{"total": None}] or started[0]["total"] is None
    assert len(observer.of(ProcessingEvent.ITEM_COMPLETED)) == 7
    completed = observer.of(ProcessingEvent.BATCH_COMPLETED)
    assert len(completed) == 1
    assert completed[0]["total"] == 7


class StubbornStrategy(LLMCallStrategy[str]):
    """Ignores cancellation until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
        return prompt, dict(USAGE)  # type: ignore[return-value]


async def test_a_second_cancellation_does_not_cut_the_shutdown_short() -> None:
    """Regression: cancelling the consumer again while the stream shut down (waiting for a
    call that ignores its cancellation) skipped the last steps and left the store open."""
    from async_batch_llm.checkpoint import MemoryCheckpointStore

    store = MemoryCheckpointStore()
    stubborn = StubbornStrategy()
    config = fast_config(max_workers=1, cancellation_grace=0.05)
    async with ParallelBatchProcessor(config=config, checkpoint=store) as processor:

        async def consume() -> None:
            async for _ in processor.stream(items_for(stubborn, 3)):
                pass

        task = asyncio.ensure_future(consume())
        await stubborn.started.wait()
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        stubborn.release.set()  # so that the run does not wait out its stop timeout
        with pytest.raises(asyncio.CancelledError):
            await task
    # The store was closed: a new run can open it.
    async with ParallelBatchProcessor(config=fast_config(), checkpoint=store) as processor:
        results = [r async for r in processor.stream(items_for(EchoStrategy(), 3, prefix="x"))]
    assert len(results) == 3
    assert not other_tasks()


async def test_a_post_processor_that_ignores_cancellation_does_not_hold_its_result() -> None:
    """Regression: a result whose post-processor hung and ignored its cancellation was never
    yielded, so the stream waited forever."""
    release = asyncio.Event()

    async def stubborn_post(result: Any) -> None:
        if result.item_id == "item-1":
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue

    config = fast_config(max_workers=2, post_processor_timeout=0.01, cancellation_grace=0.01)
    ids: list[str] = []
    async with ParallelBatchProcessor(config=config, post_processor=stubborn_post) as processor:
        async for result in processor.stream(items_for(EchoStrategy(), 4)):
            ids.append(result.item_id)
            if len(ids) == 4:
                release.set()  # so that the run does not wait out its stop timeout
    assert sorted(ids) == [f"item-{i}" for i in range(4)]
