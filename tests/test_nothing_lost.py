"""Every accepted item ends in exactly one result, whatever the user's hooks do.

Also covers the post-processor (runs for every result, awaited by ``process_all``) and the
progress callback (cadence, threads, never blocking the workers).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    ErrorInfo,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    RetryConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from support import (
    EchoStrategy,
    RecordingObserver,
    TransientError,
    fast_config,
    items_for,
    run_batch,
)

Processor = ParallelBatchProcessor[str, Any, Any]
Item = LLMWorkItem[str, Any, Any]
Result = WorkItemResult[Any, Any]


class PromptScriptedStrategy(LLMCallStrategy[str]):
    """Fails by prompt: ``bad*`` raises ValueError (permanent), ``flaky*`` a retryable error
    on every attempt; anything else succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        if prompt.startswith("bad"):
            raise ValueError(f"bad prompt {prompt}")
        if prompt.startswith("flaky"):
            raise TransientError(f"flaky prompt {prompt}")
        return f"ok:{prompt}", {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


class ReturningStrategy(LLMCallStrategy[str]):
    """Returns ``value`` from ``execute`` as is, however malformed."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return self.value  # type: ignore[no-any-return]


class FailingPrepareStrategy(EchoStrategy):
    async def prepare(self) -> None:
        self.prepare_calls += 1
        raise ConnectionRefusedError("no client today")


class RaisingObserver(BaseObserver):
    def __init__(self) -> None:
        self.calls = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError(f"observer broke on {event.value}")


class RaisingMiddleware(BaseMiddleware[str, Any, Any]):
    """Raises from the hooks named in ``hooks``."""

    def __init__(self, *hooks: str) -> None:
        self.hooks = set(hooks)
        self.called: Counter[str] = Counter()

    def _maybe_raise(self, hook: str) -> None:
        self.called[hook] += 1
        if hook in self.hooks:
            raise RuntimeError(f"middleware broke in {hook}")

    async def before_process(self, work_item: Item) -> Item | None:
        self._maybe_raise("before")
        return work_item

    async def after_process(self, result: Result) -> Result:
        self._maybe_raise("after")
        return result

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        self._maybe_raise("on_error")
        return None


class SkippingMiddleware(BaseMiddleware[str, Any, Any]):
    async def before_process(self, work_item: Item) -> Item | None:
        return None if work_item.prompt.startswith("skip") else work_item


class RaisingClassifier:
    """A classifier that is itself broken."""

    def classify(self, exception: Exception) -> ErrorInfo:
        raise RuntimeError("classifier broke")


def _mixed_items(strategy: LLMCallStrategy[Any]) -> list[Item]:
    prompts = ["good", "bad", "flaky"] * 4
    return [
        LLMWorkItem(item_id=f"{prompt}-{n}", strategy=strategy, prompt=f"{prompt}{n}")
        for n, prompt in enumerate(prompts)
    ]


def _assert_one_result_each(result: Any, items: list[Item]) -> None:
    assert Counter(r.item_id for r in result.results) == Counter(i.item_id for i in items)
    assert result.total_items == len(items)
    assert result.succeeded + result.failed == len(items)


async def _settle_progress(processor: Processor) -> None:
    """Wait until every progress-callback task (and its time limit) has finished."""
    while processor._progress_tasks:
        await asyncio.wait(list(processor._progress_tasks))


class TestBrokenHooks:
    async def test_observer_raising_on_every_event(self) -> None:
        """An observer that raises on every event loses no item and changes no outcome."""
        observer = RaisingObserver()
        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(), observers=[observer]
        ) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert result.succeeded == 4
        assert observer.calls > len(items)

    @pytest.mark.parametrize(
        "hooks", [("before",), ("after",), ("on_error",), ("before", "after", "on_error")]
    )
    async def test_middleware_raising(self, hooks: tuple[str, ...]) -> None:
        """A middleware raising in before/after/on_error loses no item and changes no outcome."""
        middleware = RaisingMiddleware(*hooks)
        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(), middlewares=[middleware]
        ) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert sorted(r.item_id for r in result.results if r.success) == sorted(
            i.item_id for i in items if i.item_id.startswith("good")
        )
        assert all(middleware.called[hook] > 0 for hook in hooks)

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_progress_callback_raising(self, kind: str) -> None:
        """A progress callback that raises (sync or async) loses no item."""
        calls: list[int] = []

        def sync_callback(completed: int, total: int, item_id: str) -> None:
            calls.append(completed)
            raise RuntimeError("progress broke")

        async def async_callback(completed: int, total: int, item_id: str) -> None:
            calls.append(completed)
            raise RuntimeError("progress broke")

        callback = sync_callback if kind == "sync" else async_callback
        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(progress_interval=1), progress_callback=callback
        ) as processor:
            result = await run_batch(processor, items)
            await _settle_progress(processor)
        _assert_one_result_each(result, items)
        assert sorted(calls) == list(range(1, len(items) + 1))

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_post_processor_raising(self, kind: str) -> None:
        """A post-processor that raises (sync or async) loses no item and changes no outcome."""
        seen: list[str] = []

        def sync_post(result: Result) -> None:
            seen.append(result.item_id)
            raise RuntimeError("post broke")

        async def async_post(result: Result) -> None:
            seen.append(result.item_id)
            raise RuntimeError("post broke")

        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(), post_processor=sync_post if kind == "sync" else async_post
        ) as processor:
            result = await run_batch(processor, items)
            stats = await processor.get_stats()
        _assert_one_result_each(result, items)
        assert result.succeeded == stats["succeeded"] == 4
        assert Counter(seen) == Counter(i.item_id for i in items)

    async def test_post_processor_timing_out(self, caplog: pytest.LogCaptureFixture) -> None:
        """A post-processor past post_processor_timeout is abandoned; the item keeps its result."""
        never = asyncio.Event()
        entered: list[str] = []

        async def stuck_post(result: Result) -> None:
            entered.append(result.item_id)
            await never.wait()

        strategy = EchoStrategy()
        items = items_for(strategy, 4)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(post_processor_timeout=0.005), post_processor=stuck_post
        ) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert result.succeeded == 4
        assert sorted(entered) == sorted(i.item_id for i in items)
        assert any("timed out" in r.getMessage() for r in caplog.records)

    async def test_prepare_raising_fails_each_item_once(self) -> None:
        """prepare() raising fails every item with "<Type>: <msg>" and no tokens (D7 event)."""
        strategy = FailingPrepareStrategy()
        observer = RecordingObserver()
        items = items_for(strategy, 3)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(), observers=[observer]
        ) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert result.failed == 3
        for item_result in result.results:
            assert item_result.error == "ConnectionRefusedError: no client today"
            assert item_result.token_usage == {}
            assert item_result.context == {"i": int(item_result.item_id.split("-")[1])}
        assert strategy.calls == []
        assert strategy.cleanup_calls == 0
        failed = observer.of(ProcessingEvent.ITEM_FAILED)
        assert sorted(d["item_id"] for d in failed) == sorted(i.item_id for i in items)
        assert {d["error_type"] for d in failed} == {"ConnectionRefusedError"}

    @pytest.mark.parametrize("value", [None, 42, ("a", {}, "extra")])
    async def test_malformed_strategy_return(self, value: Any) -> None:
        """A strategy returning something that is not an (output, usage) pair fails its items."""
        strategy = ReturningStrategy(value)
        items = items_for(strategy, 3)
        async with ParallelBatchProcessor[str, Any, Any](config=fast_config()) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert result.failed == 3
        assert all((r.error or "").startswith("TypeError: ") for r in result.results)

    async def test_classifier_raising(self) -> None:
        """A classifier that raises still leaves every failing item with one failed result."""
        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(),
            error_classifier=RaisingClassifier(),  # type: ignore[arg-type]
        )
        async with processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        assert sorted(r.item_id for r in result.results if r.success) == sorted(
            i.item_id for i in items if i.item_id.startswith("good")
        )
        assert all(r.error for r in result.results if not r.success)

    async def test_middleware_skip(self) -> None:
        """before_process returning None: error "Skipped by middleware", ITEM_FAILED "Skipped"."""
        strategy = EchoStrategy()
        observer = RecordingObserver()
        items: list[Item] = [
            LLMWorkItem(item_id=f"{kind}-{n}", strategy=strategy, prompt=f"{kind}{n}", context=n)
            for n, kind in enumerate(["skip", "run"] * 3)
        ]
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(), middlewares=[SkippingMiddleware()], observers=[observer]
        ) as processor:
            result = await run_batch(processor, items)
        _assert_one_result_each(result, items)
        skipped = [r for r in result.results if r.item_id.startswith("skip")]
        assert len(skipped) == 3
        for item_result in skipped:
            assert item_result.success is False
            assert item_result.error == "Skipped by middleware"
            assert item_result.context == int(item_result.item_id.split("-")[1])
        assert sorted(prompt for prompt, _ in strategy.calls) == ["run1", "run3", "run5"]
        failed = observer.of(ProcessingEvent.ITEM_FAILED)
        assert sorted(d["item_id"] for d in failed) == sorted(r.item_id for r in skipped)
        assert {d["error_type"] for d in failed} == {"Skipped"}
        assert len(observer.of(ProcessingEvent.ITEM_STARTED)) == len(items)


class TestPostProcessor:
    async def test_runs_once_for_every_result(self) -> None:
        """The post-processor sees every final result once, successes and failures (D3)."""
        seen: list[Result] = []

        async def post(result: Result) -> None:
            await asyncio.sleep(0)
            seen.append(result)

        strategy = PromptScriptedStrategy()
        items = _mixed_items(strategy)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(retry=RetryConfig(max_attempts=2, initial_wait=0.001)),
            post_processor=post,
        ) as processor:
            result = await run_batch(processor, items)
        assert Counter(r.item_id for r in seen) == Counter(i.item_id for i in items)
        by_id = {r.item_id: r for r in result.results}
        assert all(by_id[r.item_id] is r for r in seen)
        assert {r.success for r in seen} == {True, False}

    async def test_process_all_waits_for_post_processors(self) -> None:
        """process_all() does not return while a post-processor is still running."""
        release = asyncio.Event()
        all_entered = asyncio.Event()
        entered: list[str] = []
        finished: list[str] = []

        async def post(result: Result) -> None:
            entered.append(result.item_id)
            if len(entered) == 3:
                all_entered.set()
            await release.wait()
            finished.append(result.item_id)

        items = items_for(EchoStrategy(), 3)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=3), post_processor=post
        ) as processor:
            for item in items:
                await processor.add_work(item)
            run = asyncio.create_task(processor.process_all())
            await all_entered.wait()
            for _ in range(10):
                await asyncio.sleep(0)
            assert not run.done()
            release.set()
            result = await run
        assert sorted(finished) == sorted(i.item_id for i in items)
        assert result.succeeded == 3


class TestProgressCallback:
    async def test_called_every_interval_with_counts(self) -> None:
        """An async callback gets (completed, total, item_id) every progress_interval results."""
        calls: list[tuple[int, int, str]] = []

        async def callback(completed: int, total: int, item_id: str) -> None:
            calls.append((completed, total, item_id))

        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1, progress_interval=2), progress_callback=callback
        ) as processor:
            await run_batch(processor, items_for(EchoStrategy(), 7))
            await _settle_progress(processor)
        assert calls == [(2, 7, "item-1"), (4, 7, "item-3"), (6, 7, "item-5")]

    async def test_sync_callback_runs_in_a_thread(self) -> None:
        """A sync callback runs outside the event loop's thread."""
        calls: list[tuple[int, int, str, int]] = []

        def callback(completed: int, total: int, item_id: str) -> None:
            calls.append((completed, total, item_id, threading.get_ident()))

        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1, progress_interval=3), progress_callback=callback
        ) as processor:
            await run_batch(processor, items_for(EchoStrategy(), 6))
            await _settle_progress(processor)
        assert sorted(call[:3] for call in calls) == [(3, 6, "item-2"), (6, 6, "item-5")]
        assert all(call[3] != threading.get_ident() for call in calls)

    async def test_callable_object_with_async_call_is_awaited(self) -> None:
        """An object whose ``__call__`` is a coroutine function is run as an async callback."""

        class Callback:
            def __init__(self) -> None:
                self.calls: list[int] = []

            async def __call__(self, completed: int, total: int, item_id: str) -> None:
                self.calls.append(completed)

        callback = Callback()
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(progress_interval=1), progress_callback=callback
        )
        assert processor._progress_callback_is_async is True
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 3))
            await _settle_progress(processor)
        assert sorted(callback.calls) == [1, 2, 3]

    async def test_blocked_callback_without_limit_does_not_block_batch(self) -> None:
        """A callback that never returns (no time limit) does not stop the batch finishing."""
        never = asyncio.Event()
        started: list[int] = []

        async def callback(completed: int, total: int, item_id: str) -> None:
            started.append(completed)
            await never.wait()

        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(progress_interval=1, progress_callback_timeout=None),
            progress_callback=callback,
        ) as processor:
            result = await run_batch(processor, items_for(EchoStrategy(), 4))
            assert result.succeeded == 4
            pending = list(processor._progress_tasks)
            assert pending
        assert all(task.cancelled() for task in pending)
        assert not processor._progress_tasks

    async def test_slow_callback_is_cancelled_after_its_timeout(self) -> None:
        """The batch finishes while a slow callback still runs; the callback is then cancelled."""
        never = asyncio.Event()
        entered = asyncio.Event()
        cancelled = asyncio.Event()

        async def callback(completed: int, total: int, item_id: str) -> None:
            entered.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(progress_interval=2, progress_callback_timeout=0.05),
            progress_callback=callback,
        ) as processor:
            result = await run_batch(processor, items_for(EchoStrategy(), 2))
            assert result.succeeded == 2
            assert entered.is_set()
            assert not cancelled.is_set()
            await asyncio.wait_for(cancelled.wait(), timeout=5.0)
        assert not never.is_set()
