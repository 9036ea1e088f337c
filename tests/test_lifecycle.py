"""Processor lifecycle: queueing, running, reuse, shutdown, deprecated args, strategy lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import weakref
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    ExponentialBackoffStrategy,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    ProcessorObserver,
    RateLimitConfig,
    RetryState,
    TokenUsage,
)
from support import (
    BlockingStrategy,
    EchoStrategy,
    RecordingObserver,
    fast_config,
    items_for,
    noop,
    run_batch,
)

LIFECYCLE_LOGGER = "async_batch_llm._internal.strategy_lifecycle"
ADD_AFTER_START = r"Cannot add work after process_all\(\) has started"

Processor = ParallelBatchProcessor[str, Any, Any]
Item = LLMWorkItem[str, Any, Any]

STATS_KEYS = {
    "total",
    "processed",
    "succeeded",
    "failed",
    "start_time",
    "error_counts",
    "rate_limit_count",
    "total_input_tokens",
    "total_output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "total_cached_tokens",
}


def _processor(**config: Any) -> Processor:
    return ParallelBatchProcessor(config=fast_config(**config))


class GatedPrepareStrategy(LLMCallStrategy[str]):
    """``prepare()`` waits for ``gate``; ``execute`` records whether it ran before that."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.prepare_entered = asyncio.Event()
        self.prepare_calls = 0
        self.prepared = False
        self.calls = 0
        self.calls_before_prepared = 0
        self.cleanup_calls = 0

    async def prepare(self) -> None:
        self.prepare_calls += 1
        self.prepare_entered.set()
        await self.gate.wait()
        self.prepared = True

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        if not self.prepared:
            self.calls_before_prepared += 1
        return prompt, {}

    async def cleanup(self) -> None:
        self.cleanup_calls += 1


class BrokenCleanupStrategy(EchoStrategy):
    """Its ``cleanup()`` raises ``error`` (after counting the call)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error: BaseException | None = error

    async def cleanup(self) -> None:
        self.cleanup_calls += 1
        if self.error is not None:
            raise self.error


@dataclasses.dataclass
class DataclassStrategy(LLMCallStrategy[str]):
    """An ``eq=True`` dataclass, hence unhashable (``__hash__`` is ``None``)."""

    name: str
    prepare_calls: int = 0
    cleanup_calls: int = 0

    async def prepare(self) -> None:
        self.prepare_calls += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return f"{self.name}:{prompt}", {}

    async def cleanup(self) -> None:
        self.cleanup_calls += 1


class CountingMiddleware(BaseMiddleware[str, Any, Any]):
    def __init__(self) -> None:
        self.before_calls = 0

    async def before_process(self, work_item: LLMWorkItem[str, Any, Any]) -> Any:
        self.before_calls += 1
        return work_item


# --- add_work and get_stats ----------------------------------------------------------------


class TestAddWork:
    async def test_stats_total_counts_items_before_run(self) -> None:
        """Before process_all(), get_stats() reports total = number of add_work() calls."""
        processor = _processor()
        for item in items_for(EchoStrategy(), 3):
            await processor.add_work(item)
        stats = await processor.get_stats()
        assert set(stats) == STATS_KEYS
        assert stats["total"] == 3
        assert (stats["processed"], stats["succeeded"], stats["failed"]) == (0, 0, 0)

    async def test_add_work_during_run_raises(self) -> None:
        """add_work() while process_all() runs raises RuntimeError with the documented phrase."""
        strategy = BlockingStrategy()
        strategy.expected = 1
        async with _processor(max_workers=1) as processor:
            await processor.add_work(LLMWorkItem(item_id="a", strategy=strategy, prompt="p"))
            run = asyncio.create_task(processor.process_all())
            await strategy.all_started.wait()
            late: Item = LLMWorkItem(item_id="late", strategy=strategy, prompt="p")
            with pytest.raises(RuntimeError, match=ADD_AFTER_START):
                await processor.add_work(late)
            strategy.release.set()
            result = await run
        assert [r.item_id for r in result.results] == ["a"]

    async def test_add_work_after_run_raises(self) -> None:
        """add_work() after process_all() has returned still raises RuntimeError."""
        async with _processor() as processor:
            await run_batch(processor, items_for(EchoStrategy(), 2))
            with pytest.raises(RuntimeError, match=ADD_AFTER_START):
                await processor.add_work(LLMWorkItem(item_id="x", strategy=EchoStrategy()))
            assert (await processor.get_stats())["total"] == 2

    @pytest.mark.parametrize("bad", [None, "item-1", 42, {"item_id": "a"}])
    async def test_add_work_rejects_non_items(self, bad: Any) -> None:
        """add_work() with None or something that is not a work item raises TypeError."""
        processor = _processor()
        with pytest.raises(TypeError, match="LLMWorkItem"):
            await processor.add_work(bad)
        assert (await processor.get_stats())["total"] == 0
        assert processor._queue.empty()

    async def test_full_bounded_queue_raises_instead_of_hanging(self) -> None:
        """With max_queue_size=2, a third add_work() before the run raises (D13) naming it."""
        strategy = EchoStrategy()
        items = items_for(strategy, 3)
        async with _processor(max_queue_size=2, max_workers=2) as processor:
            await processor.add_work(items[0])
            await processor.add_work(items[1])
            with pytest.raises(RuntimeError, match=r"max_queue_size=2"):
                await processor.add_work(items[2])
            assert (await processor.get_stats())["total"] == 2
            result = await processor.process_all()
        assert sorted(r.item_id for r in result.results) == ["item-0", "item-1"]

    async def test_bounded_queue_up_to_capacity_runs_all(self) -> None:
        """A bounded queue filled to capacity (more items than workers) runs every item."""
        strategy = EchoStrategy()
        async with _processor(max_queue_size=6, max_workers=2) as processor:
            result = await run_batch(processor, items_for(strategy, 6))
        assert result.succeeded == 6
        assert sorted(prompt for prompt, _ in strategy.calls) == [f"p{i}" for i in range(6)]


# --- process_all ---------------------------------------------------------------------------


class TestProcessAll:
    async def test_empty_batch_starts_and_stops_workers(self) -> None:
        """An empty queue gives an empty result; one worker still starts and stops."""
        observer = RecordingObserver()
        async with ParallelBatchProcessor[str, str, None](
            config=fast_config(max_workers=3), observers=[observer]
        ) as processor:
            result = await processor.process_all()
            assert all(worker.done() for worker in processor._workers)
            assert len(processor._workers) == 1
        assert result.results == []
        assert (result.total_items, result.succeeded, result.failed) == (0, 0, 0)
        started = sorted(d["worker_id"] for d in observer.of(ProcessingEvent.WORKER_STARTED))
        stopped = sorted(d["worker_id"] for d in observer.of(ProcessingEvent.WORKER_STOPPED))
        assert started == stopped == [0]
        assert observer.events[0][0] is ProcessingEvent.BATCH_STARTED
        assert observer.events[-1][0] is ProcessingEvent.BATCH_COMPLETED

    async def test_no_more_workers_than_items(self) -> None:
        """A huge max_workers for a few items starts one worker per item, not a million."""
        async with ParallelBatchProcessor[str, str, None](
            config=fast_config(max_workers=1_000_000)
        ) as processor:
            result = await run_batch(processor, items_for(EchoStrategy(), 10))
            assert len(processor._workers) == 10
        assert result.succeeded == 10

    async def test_second_process_all_returns_empty_result(self) -> None:
        """A second process_all() resets results and stats and returns an empty result."""
        strategy = EchoStrategy()
        async with _processor() as processor:
            first = await run_batch(processor, items_for(strategy, 4))
            second = await processor.process_all()
            stats = await processor.get_stats()
        assert first.total_items == 4
        assert second.results == []
        assert (stats["total"], stats["processed"]) == (0, 0)
        assert len(strategy.calls) == 4

    async def test_result_is_a_snapshot(self) -> None:
        """The returned BatchResult owns its list: later runs do not change it."""
        async with _processor() as processor:
            first = await run_batch(processor, items_for(EchoStrategy(), 2))
            await processor.process_all()
        assert len(first.results) == 2

    async def test_single_worker_keeps_fifo_order(self) -> None:
        """With max_workers=1 results come back in the order the items were queued."""
        items = items_for(EchoStrategy(), 12)
        async with _processor(max_workers=1) as processor:
            result = await run_batch(processor, items)
        assert [r.item_id for r in result.results] == [item.item_id for item in items]

    async def test_concurrency_never_exceeds_max_workers(self) -> None:
        """No more than max_workers strategy calls are ever in flight at once."""
        strategy = BlockingStrategy()
        strategy.expected = 3
        async with _processor(max_workers=3) as processor:
            for item in items_for(strategy, 10):
                await processor.add_work(item)
            run = asyncio.create_task(processor.process_all())
            await strategy.all_started.wait()
            for _ in range(5):
                await asyncio.sleep(0)
            assert strategy.in_flight == 3
            strategy.release.set()
            result = await run
        assert strategy.peak_in_flight == 3
        assert result.succeeded == 10

    async def test_stats_after_run_are_consistent(self) -> None:
        """After a run, processed == succeeded + failed == total and tokens are summed."""
        strategy = EchoStrategy()
        async with _processor() as processor:
            result = await run_batch(processor, items_for(strategy, 5))
            stats = await processor.get_stats()
        assert stats["total"] == stats["processed"] == 5
        assert stats["succeeded"] + stats["failed"] == stats["processed"]
        assert stats["total_tokens"] == 5 * 15
        assert result.total_input_tokens == stats["total_input_tokens"] == 50

    def test_constructor_works_outside_an_event_loop(self) -> None:
        """A processor built with no running loop (limiter, hooks and all) runs a batch later."""
        observer = RecordingObserver()
        processor: Processor = ParallelBatchProcessor(
            config=fast_config(max_requests_per_minute=6000, max_queue_size=10),
            observers=[observer],
            middlewares=[CountingMiddleware()],
            post_processor=noop,
            progress_callback=noop,
        )
        strategy = EchoStrategy()

        async def main() -> Any:
            async with processor:
                return await run_batch(processor, items_for(strategy, 3))

        result = asyncio.run(main())
        assert result.succeeded == 3
        assert len(observer.of(ProcessingEvent.ITEM_COMPLETED)) == 3


# --- async with, shutdown, cleanup ---------------------------------------------------------


class TestExit:
    async def test_aenter_returns_processor(self) -> None:
        """``async with processor as p`` binds the processor itself."""
        processor = _processor()
        async with processor as entered:
            assert entered is processor

    async def test_exit_does_not_suppress_exceptions_and_cleans_up(self) -> None:
        """An error inside ``async with`` propagates, and prepared strategies are cleaned up."""
        strategy = EchoStrategy()

        async def run_then_fail() -> None:
            async with _processor() as processor:
                await run_batch(processor, items_for(strategy, 2))
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await run_then_fail()
        assert strategy.cleanup_calls == 1

    async def test_shutdown_cleans_each_prepared_strategy_once(self) -> None:
        """shutdown() cleans every prepared strategy once; repeating it is a no-op."""
        first, second, unused = EchoStrategy(), EchoStrategy(), EchoStrategy()
        processor = _processor()
        items = items_for(first, 3, prefix="a") + items_for(second, 3, prefix="b")
        await run_batch(processor, items)
        assert (first.cleanup_calls, second.cleanup_calls) == (0, 0)
        await processor.shutdown()
        await processor.shutdown()
        assert (first.cleanup_calls, second.cleanup_calls) == (1, 1)
        assert (unused.prepare_calls, unused.cleanup_calls) == (0, 0)

    async def test_cleanup_alone_leaves_strategies_alone(self) -> None:
        """The base cleanup() stops tasks but does not call strategy cleanup()."""
        strategy = EchoStrategy()
        processor = _processor()
        await run_batch(processor, items_for(strategy, 2))
        await processor.cleanup()
        assert strategy.cleanup_calls == 0
        await processor.shutdown()
        assert strategy.cleanup_calls == 1


# --- deprecated constructor arguments --------------------------------------------------------


class TestDeprecatedArguments:
    @pytest.mark.parametrize(
        ("kwargs", "replacement"),
        [
            ({"max_workers": 3}, "ProcessorConfig.max_workers"),
            ({"timeout_per_item": 10.0}, "ProcessorConfig.timeout_per_item"),
            ({"rate_limit_cooldown": 7.0}, "ProcessorConfig.rate_limit.cooldown_seconds"),
        ],
    )
    def test_warns_naming_replacement(self, kwargs: dict[str, Any], replacement: str) -> None:
        """Each deprecated argument warns, naming itself and the config field replacing it."""
        (name,) = kwargs
        with pytest.warns(DeprecationWarning, match=name) as record:
            ParallelBatchProcessor(**kwargs)
        assert len(record) == 1
        message = str(record[0].message)
        assert replacement in message
        assert record[0].filename == __file__

    def test_values_apply_without_config(self) -> None:
        """Without a config, deprecated values build the processor's config."""
        with pytest.warns(DeprecationWarning, match="deprecated") as record:
            processor: Processor = ParallelBatchProcessor(
                max_workers=3, timeout_per_item=10.0, rate_limit_cooldown=7.0
            )
        assert len(record) == 3
        assert processor.max_workers == processor.config.max_workers == 3
        assert processor.config.timeout_per_item == 10.0
        assert processor.config.rate_limit.cooldown_seconds == 7.0
        strategy = processor.rate_limit_strategy
        assert isinstance(strategy, ExponentialBackoffStrategy)
        assert strategy.initial_cooldown == 7.0

    def test_callers_config_is_never_mutated(self) -> None:
        """Deprecated values override a copy (D15); the caller's config keeps its values."""
        config = ProcessorConfig(
            max_workers=5, timeout_per_item=30.0, rate_limit=RateLimitConfig(cooldown_seconds=60)
        )
        with pytest.warns(DeprecationWarning, match="deprecated"):
            processor: Processor = ParallelBatchProcessor(
                max_workers=2, timeout_per_item=9.0, rate_limit_cooldown=4.0, config=config
            )
        assert (config.max_workers, config.timeout_per_item) == (5, 30.0)
        assert config.rate_limit.cooldown_seconds == 60
        assert processor.config is not config
        assert processor.config.rate_limit is not config.rate_limit
        assert processor.config.retry is not config.retry
        assert processor.max_workers == processor.config.max_workers == 2
        assert processor.config.timeout_per_item == 9.0
        assert processor.config.rate_limit.cooldown_seconds == 4.0

    def test_config_without_deprecated_args_is_used_as_is(self) -> None:
        """A config given alone is the processor's config object."""
        config = fast_config(max_workers=2)
        processor: Processor = ParallelBatchProcessor(config=config)
        assert processor.config is config
        assert processor.max_workers == 2

    @pytest.mark.parametrize(
        ("kwargs", "phrase"),
        [
            ({"max_workers": 0}, "max_workers must be >= 1"),
            ({"max_workers": -2}, "max_workers must be >= 1"),
            ({"timeout_per_item": 0}, "timeout_per_item must be > 0"),
            ({"timeout_per_item": -1.0}, "timeout_per_item must be > 0"),
            ({"rate_limit_cooldown": -1.0}, "cooldown_seconds must be >= 0"),
        ],
    )
    @pytest.mark.parametrize("with_config", [False, True])
    def test_invalid_values_raise(
        self, kwargs: dict[str, Any], phrase: str, with_config: bool
    ) -> None:
        """0 or negative deprecated values raise ValueError instead of falling back (D15)."""
        config = ProcessorConfig() if with_config else None
        with (
            pytest.warns(DeprecationWarning, match="deprecated"),
            pytest.raises(ValueError, match=phrase),
        ):
            ParallelBatchProcessor(config=config, **kwargs)
        if config is not None:
            assert config == ProcessorConfig()

    def test_zero_cooldown_is_valid(self) -> None:
        """``rate_limit_cooldown=0`` is a valid value, applied rather than replaced."""
        with pytest.warns(DeprecationWarning, match="rate_limit_cooldown"):
            processor: Processor = ParallelBatchProcessor(rate_limit_cooldown=0.0)
        assert processor.config.rate_limit.cooldown_seconds == 0.0


# --- middlewares and observers lists -----------------------------------------------------------


class TestHookLists:
    async def test_observer_list_is_callers_and_live(self) -> None:
        """A non-empty observer list is kept as is; an observer appended later gets events."""
        first = RecordingObserver()
        observers: list[ProcessorObserver] = [first]
        processor: Processor = ParallelBatchProcessor(config=fast_config(), observers=observers)
        assert processor.observers is observers
        late = RecordingObserver()
        observers.append(late)
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 3))
        assert len(late.of(ProcessingEvent.ITEM_COMPLETED)) == 3
        assert late.events == first.events

    async def test_middleware_list_is_callers_and_live(self) -> None:
        """A non-empty middleware list is kept as is; a middleware appended later runs."""
        first = CountingMiddleware()
        middlewares: list[Any] = [first]
        processor: Processor = ParallelBatchProcessor(config=fast_config(), middlewares=middlewares)
        assert processor.middlewares is middlewares
        late = CountingMiddleware()
        middlewares.append(late)
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 4))
        assert (first.before_calls, late.before_calls) == (4, 4)

    async def test_default_lists_accept_late_additions(self) -> None:
        """Without lists, appending to processor.observers/middlewares takes effect."""
        processor = _processor()
        observer = RecordingObserver()
        middleware = CountingMiddleware()
        processor.observers.append(observer)
        processor.middlewares.append(middleware)
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 2))
        assert middleware.before_calls == 2
        assert len(observer.of(ProcessingEvent.ITEM_COMPLETED)) == 2


# --- strategy lifecycle (D4) -------------------------------------------------------------------


class TestStrategyLifecycle:
    async def test_prepare_once_and_before_any_execute(self) -> None:
        """20 workers sharing one strategy: prepare() runs once and every execute waits for it."""
        strategy = GatedPrepareStrategy()
        async with _processor(max_workers=20) as processor:
            for item in items_for(strategy, 40):
                await processor.add_work(item)
            run = asyncio.create_task(processor.process_all())
            await strategy.prepare_entered.wait()
            for _ in range(10):
                await asyncio.sleep(0)
            assert strategy.calls == 0
            strategy.gate.set()
            result = await run
        assert result.succeeded == 40
        assert strategy.prepare_calls == 1
        assert strategy.calls == 40
        assert strategy.calls_before_prepared == 0
        assert strategy.cleanup_calls == 1

    async def test_each_distinct_instance_is_prepared_and_cleaned_once(self) -> None:
        """Interleaved items of three strategies: each instance prepares and cleans up once."""
        strategies = [EchoStrategy() for _ in range(3)]
        items: list[Item] = [
            LLMWorkItem(item_id=f"i{n}", strategy=strategies[n % 3], prompt=f"p{n}")
            for n in range(30)
        ]
        async with _processor(max_workers=8) as processor:
            result = await run_batch(processor, items)
        assert result.succeeded == 30
        assert [s.prepare_calls for s in strategies] == [1, 1, 1]
        assert [s.cleanup_calls for s in strategies] == [1, 1, 1]
        assert [len(s.calls) for s in strategies] == [10, 10, 10]

    async def test_failing_cleanup_is_logged_and_others_still_cleaned(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A cleanup() that raises logs a WARNING (class name, message, traceback); others run."""
        broken = BrokenCleanupStrategy(RuntimeError("disk on fire"))
        healthy = EchoStrategy()
        caplog.set_level(logging.WARNING, logger=LIFECYCLE_LOGGER)
        async with _processor() as processor:
            await run_batch(
                processor, items_for(broken, 2, prefix="b") + items_for(healthy, 2, prefix="h")
            )
        assert (broken.cleanup_calls, healthy.cleanup_calls) == (1, 1)
        warnings = [
            r for r in caplog.records if r.name == LIFECYCLE_LOGGER and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert "BrokenCleanupStrategy" in message
        assert "disk on fire" in message
        assert warnings[0].exc_info is not None

    async def test_keyboard_interrupt_from_cleanup_propagates(self) -> None:
        """KeyboardInterrupt from cleanup() is not swallowed; a later call cleans up again."""
        strategy = BrokenCleanupStrategy(KeyboardInterrupt())
        processor = _processor()
        await run_batch(processor, items_for(strategy, 1))
        with pytest.raises(KeyboardInterrupt):
            await processor._cleanup_strategies()
        assert processor._strategies_cleaned_up is False
        strategy.error = None
        await processor._cleanup_strategies()
        assert strategy.cleanup_calls == 2
        assert processor._strategies_cleaned_up is True

    async def test_keyboard_interrupt_from_cleanup_propagates_through_shutdown(self) -> None:
        """shutdown() lets KeyboardInterrupt through and still runs the task cleanup."""
        strategy = BrokenCleanupStrategy(KeyboardInterrupt())
        processor = _processor()
        await run_batch(processor, items_for(strategy, 1))
        with pytest.raises(KeyboardInterrupt):
            await processor.shutdown()
        assert all(worker.done() for worker in processor._workers)

    async def test_cleanup_strategies_is_idempotent(self) -> None:
        """_cleanup_strategies() twice calls each strategy's cleanup() once."""
        strategy = EchoStrategy()
        processor = _processor()
        await run_batch(processor, items_for(strategy, 3))
        await processor._cleanup_strategies()
        await processor._cleanup_strategies()
        await processor.shutdown()
        assert strategy.cleanup_calls == 1

    async def test_unreferenced_strategy_is_still_cleaned_up(self) -> None:
        """A strategy only the work item referenced is kept alive and cleaned up (no WeakSet)."""
        cleaned: list[str] = []
        refs: list[weakref.ref[Any]] = []

        class Ephemeral(LLMCallStrategy[str]):
            async def prepare(self) -> None:
                refs.append(weakref.ref(self))

            async def execute(
                self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
            ) -> tuple[str, TokenUsage]:
                return prompt, {}

            async def cleanup(self) -> None:
                cleaned.append("cleaned")

        async with _processor() as processor:
            await processor.add_work(LLMWorkItem(item_id="only", strategy=Ephemeral(), prompt="p"))
            result = await processor.process_all()
            assert result.succeeded == 1
            del result
            gc.collect()
            assert refs[0]() is not None
        assert cleaned == ["cleaned"]

    async def test_unhashable_dataclass_strategies_work(self) -> None:
        """Dataclass strategies (unhashable, equal when fields match) are tracked by identity."""
        first, second = DataclassStrategy("x"), DataclassStrategy("x")
        assert first == second
        with pytest.raises(TypeError):
            hash(first)
        items = items_for(first, 3, prefix="a") + items_for(second, 3, prefix="b")
        async with _processor(max_workers=3) as processor:
            result = await run_batch(processor, items)
        assert result.succeeded == 6
        assert (first.prepare_calls, second.prepare_calls) == (1, 1)
        assert (first.cleanup_calls, second.cleanup_calls) == (1, 1)
