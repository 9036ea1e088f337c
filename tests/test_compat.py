"""The private members of API.md 10.1 that upstream tests and subclasses reach into."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiolimiter import AsyncLimiter

from async_batch_llm import (
    BaseMiddleware,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    RateLimitStrategy,
    RetryConfig,
)
from support import (
    EchoStrategy,
    RecordingObserver,
    ScriptedStrategy,
    TransientError,
    fast_config,
)

Processor = ParallelBatchProcessor[str, Any, Any]


def _processor(**kwargs: Any) -> Processor:
    config = kwargs.pop("config", None) or fast_config()
    return ParallelBatchProcessor(config=config, **kwargs)


def _item(strategy: Any, item_id: str = "a", prompt: str = "p") -> LLMWorkItem[str, Any, Any]:
    return LLMWorkItem(item_id=item_id, strategy=strategy, prompt=prompt, context="ctx")


class BrokenRateLimitStrategy(RateLimitStrategy):
    """``on_rate_limit`` raises; used to check that workers are never left paused."""

    def __init__(self) -> None:
        self.calls = 0

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        self.calls += 1
        raise RuntimeError("strategy broke")

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        return False, 0.0


class ZeroCooldownStrategy(RateLimitStrategy):
    def __init__(self) -> None:
        self.counts: list[int] = []

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        self.counts.append(consecutive_limit_count)
        return 0.0

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        return False, 0.0


class CountingPrepareStrategy(EchoStrategy):
    async def prepare(self) -> None:
        self.prepare_calls += 1
        await asyncio.sleep(0)


class SkipAll(BaseMiddleware[str, Any, Any]):
    async def before_process(self, work_item: LLMWorkItem[str, Any, Any]) -> None:
        return None


class TestProcessItemWithRetries:
    async def test_callable_without_process_all(self) -> None:
        """It prepares the strategy and returns the item's result with no batch running."""
        strategy = EchoStrategy()
        processor = _processor()
        result = await processor._process_item_with_retries(_item(strategy), 0)
        assert result.success is True
        assert (result.item_id, result.output, result.context) == ("a", "echo:p", "ctx")
        assert result.token_usage == strategy.usage
        assert strategy.prepare_calls == 1
        assert strategy.calls == [("p", 1)]

    async def test_retries_then_succeeds(self) -> None:
        """Retryable failures are retried with rising attempt numbers until one succeeds."""
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b"), "done"])
        result = await _processor()._process_item_with_retries(_item(strategy), 0)
        assert (result.success, result.output) == (True, "done")
        assert strategy.attempts == [1, 2, 3]
        assert strategy.errors_seen == [("TransientError", 1), ("TransientError", 2)]

    async def test_raises_after_exhausting_retries_with_summed_tokens(self) -> None:
        """When every attempt fails it raises the last error carrying the summed tokens."""
        usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        strategy = ScriptedStrategy(
            [TransientError("one"), TransientError("two"), TransientError("three")],
            failure_usage={**usage, "cached_input_tokens": 2},
        )
        with pytest.raises(TransientError, match="three") as caught:
            await _processor()._process_item_with_retries(_item(strategy), 0)
        assert strategy.attempts == [1, 2, 3]
        assert caught.value.__dict__["_failed_token_usage"] == {
            "input_tokens": 30,
            "output_tokens": 15,
            "total_tokens": 45,
            "cached_input_tokens": 6,
        }

    async def test_prepare_failure_is_raised(self) -> None:
        """A failing prepare() is raised as is, without calling execute."""

        class BrokenPrepare(EchoStrategy):
            async def prepare(self) -> None:
                raise ConnectionError("no client")

        strategy = BrokenPrepare()
        with pytest.raises(ConnectionError, match="no client"):
            await _processor()._process_item_with_retries(_item(strategy), 0)
        assert strategy.calls == []

    async def test_permanent_error_returns_failed_result(self) -> None:
        """A non-retryable error is returned as a failed result after one attempt."""
        strategy = ScriptedStrategy([ValueError("bad input")])
        result = await _processor()._process_item_with_retries(_item(strategy), 0)
        assert result.success is False
        assert result.error == "ValueError: bad input"
        assert strategy.attempts == [1]


class TestProcessItem:
    async def test_single_successful_attempt(self) -> None:
        """_process_item runs one attempt with the given attempt number and returns the result."""
        strategy = EchoStrategy()
        result = await _processor()._process_item(_item(strategy), 0, attempt_number=3)
        assert (result.success, result.output) == (True, "echo:p")
        assert strategy.calls == [("p", 3)]

    async def test_retryable_error_is_raised_without_retry(self) -> None:
        """A retryable error is raised after on_error, with no second attempt."""
        strategy = ScriptedStrategy([TransientError("flaky")])
        with pytest.raises(TransientError, match="flaky"):
            await _processor()._process_item(_item(strategy), 0, strategy=strategy)
        assert strategy.attempts == [1]
        assert strategy.errors_seen == [("TransientError", 1)]

    async def test_permanent_error_returns_failed_result(self) -> None:
        """A non-retryable error becomes a failed result and an ITEM_FAILED event."""
        strategy = ScriptedStrategy([KeyError("missing")])
        observer = RecordingObserver()
        processor = _processor(observers=[observer])
        result = await processor._process_item(_item(strategy), 2)
        assert result.success is False
        assert result.error == "KeyError: 'missing'"
        assert result.context == "ctx"
        assert observer.of(ProcessingEvent.ITEM_FAILED) == [
            {"item_id": "a", "error_type": "KeyError"}
        ]
        assert observer.of(ProcessingEvent.ITEM_STARTED) == [{"item_id": "a", "worker_id": 2}]

    async def test_middleware_skip(self) -> None:
        """A skipping middleware makes _process_item return "Skipped by middleware"."""
        strategy = EchoStrategy()
        result = await _processor(middlewares=[SkipAll()])._process_item(_item(strategy))
        assert (result.success, result.error) == (False, "Skipped by middleware")
        assert strategy.calls == []


class TestRateLimitMembers:
    async def test_failing_strategy_never_leaves_workers_paused(self) -> None:
        """_handle_rate_limit with a raising on_rate_limit leaves the event set, not cooling."""
        strategy = BrokenRateLimitStrategy()
        processor = _processor(rate_limit_strategy=strategy)
        await asyncio.wait_for(processor._handle_rate_limit(worker_id=0), timeout=1.0)
        assert strategy.calls == 1
        assert processor._rate_limit_event.is_set()
        assert processor._in_cooldown is False

    async def test_rate_limit_event_is_one_object_for_the_lifetime(self) -> None:
        """The resume event survives cooldowns: the same object, set when not paused."""
        strategy = ZeroCooldownStrategy()
        processor = _processor(rate_limit_strategy=strategy)
        event = processor._rate_limit_event
        assert isinstance(event, asyncio.Event)
        assert event.is_set()
        await processor._handle_rate_limit(worker_id=0)
        await processor._handle_rate_limit(worker_id=1)
        assert processor._rate_limit_event is event
        assert event.is_set()
        assert strategy.counts == [1, 2]

    async def test_cooldown_counters(self) -> None:
        """The read-only counters reflect one finished cooldown."""
        processor = _processor(rate_limit_strategy=ZeroCooldownStrategy())
        assert (processor._cooldown_generation, processor._cooldown_complete_generation) == (0, 0)
        assert (processor._consecutive_rate_limits, processor._slow_start_active) == (0, False)
        await processor._handle_rate_limit(worker_id=0)
        assert (processor._cooldown_generation, processor._cooldown_complete_generation) == (1, 1)
        assert processor._consecutive_rate_limits == 1
        assert processor._slow_start_active is True
        assert processor._items_since_resume == 0
        assert processor._in_cooldown is False

    @pytest.mark.parametrize(
        "name",
        [
            "_rate_limit_event",
            "_in_cooldown",
            "_cooldown_generation",
            "_cooldown_complete_generation",
            "_consecutive_rate_limits",
            "_slow_start_active",
            "_items_since_resume",
        ],
    )
    def test_compat_state_is_read_only(self, name: str) -> None:
        """Rate-limit state is exposed read-only; assigning it raises AttributeError."""
        processor = _processor()
        value = getattr(processor, name)
        with pytest.raises(AttributeError):
            setattr(processor, name, value)

    def test_no_proactive_limiter_by_default(self) -> None:
        """Without max_requests_per_minute there is no proactive limiter."""
        assert _processor()._proactive_rate_limiter is None

    async def test_proactive_limiter_with_rate(self) -> None:
        """max_requests_per_minute builds one AsyncLimiter over 60 s with an acquire()."""
        processor = _processor(config=fast_config(max_requests_per_minute=120))
        limiter = processor._proactive_rate_limiter
        assert isinstance(limiter, AsyncLimiter)
        assert (limiter.max_rate, limiter.time_period) == (120, 60)
        await asyncio.wait_for(limiter.acquire(), timeout=1.0)
        assert processor._proactive_rate_limiter is limiter


class TestStrategyMembers:
    async def test_ensure_strategy_prepared_prepares_once(self) -> None:
        """Repeated and concurrent _ensure_strategy_prepared calls prepare the instance once."""
        strategy = CountingPrepareStrategy()
        processor = _processor()
        await asyncio.gather(*(processor._ensure_strategy_prepared(strategy) for _ in range(10)))
        await processor._ensure_strategy_prepared(strategy)
        assert strategy.prepare_calls == 1
        assert processor._prepared_strategies == [strategy]

    async def test_cleanup_strategies_is_idempotent(self) -> None:
        """_cleanup_strategies cleans each prepared strategy once, however often called."""
        first, second = EchoStrategy(), EchoStrategy()
        processor = _processor()
        await processor._ensure_strategy_prepared(first)
        await processor._ensure_strategy_prepared(second)
        assert processor._strategies_cleaned_up is False
        await processor._cleanup_strategies()
        await processor._cleanup_strategies()
        assert (first.cleanup_calls, second.cleanup_calls) == (1, 1)
        assert processor._strategies_cleaned_up is True

    async def test_new_strategy_rearms_cleanup(self) -> None:
        """A strategy prepared after a cleanup is cleaned up by the next call."""
        first, second = EchoStrategy(), EchoStrategy()
        processor = _processor()
        await processor._ensure_strategy_prepared(first)
        await processor._cleanup_strategies()
        await processor._ensure_strategy_prepared(second)
        assert processor._strategies_cleaned_up is False
        await processor._cleanup_strategies()
        assert (first.cleanup_calls, second.cleanup_calls) == (1, 1)

    def test_get_strategy_returns_items_strategy(self) -> None:
        """_get_strategy(item) is the item's strategy."""
        strategy = EchoStrategy()
        assert _processor()._get_strategy(_item(strategy)) is strategy

    def test_should_retry_error_follows_classifier(self) -> None:
        """_should_retry_error mirrors the classifier's is_retryable."""
        processor = _processor()
        assert processor._should_retry_error(TransientError("x")) is True
        assert processor._should_retry_error(ValueError("x")) is False


class TestBaseMembers:
    async def test_base_state_members(self) -> None:
        """The base-class private state exists with the documented types."""
        processor = _processor(
            config=fast_config(retry=RetryConfig(max_attempts=1), max_queue_size=3)
        )
        assert isinstance(processor._queue, asyncio.Queue)
        assert processor._queue.maxsize == 3
        assert processor._results == []
        assert processor._workers == []
        assert processor._progress_tasks == set()
        flags = (
            processor._processing_started,
            processor._is_processing,
            processor._progress_callback_is_async,
        )
        assert flags == (False, False, False)
        await processor.add_work(_item(EchoStrategy()))
        await processor.process_all()
        assert processor._processing_started is True
        assert [r.item_id for r in processor._results] == ["a"]
        assert processor._stats.processed == 1
        await processor.shutdown()
