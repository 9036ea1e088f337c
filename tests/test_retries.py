"""Retries: which errors are retried, how often, after what wait, and what a failure reports."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from tenacity.wait import wait_base

from async_batch_llm import (
    BaseMiddleware,
    DefaultErrorClassifier,
    ErrorInfo,
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm._internal import item_runner
from async_batch_llm._internal.retry_policy import RetryPolicy, is_validation_error
from support import (
    USAGE,
    EchoStrategy,
    RateLimitError,
    RecordingObserver,
    ScriptedStrategy,
    SleepRecorder,
    TransientError,
    fast_config,
    items_for,
    run_batch,
)

Processor = ParallelBatchProcessor[str, Any, Any]


def _retry(max_attempts: int = 3, **overrides: Any) -> RetryConfig:
    overrides.setdefault("initial_wait", 0.001)
    overrides.setdefault("max_wait", 0.002)
    overrides.setdefault("jitter", False)
    return RetryConfig(max_attempts=max_attempts, **overrides)


def _no_cooldown(**overrides: Any) -> RateLimitConfig:
    return RateLimitConfig(
        cooldown_seconds=0.0,
        slow_start_items=0,
        slow_start_initial_delay=0.0,
        slow_start_final_delay=0.0,
        **overrides,
    )


async def _run_one(
    strategy: LLMCallStrategy[Any], processor: Processor | None = None, **config: Any
) -> WorkItemResult[Any, Any]:
    if processor is None:
        config.setdefault("max_workers", 1)
        processor = Processor(config=fast_config(**config))
    async with processor:
        batch = await run_batch(processor, items_for(strategy, 1))
    assert batch.total_items == 1
    result: WorkItemResult[Any, Any] = batch.results[0]
    return result


class _Model(BaseModel):
    value: int


def _pydantic_error() -> ValidationError:
    try:
        _Model.model_validate({"value": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("the model accepted an invalid value")


class OutputValidationError(Exception):
    """Name contains "validation"."""


class JSONParseFailure(Exception):
    """Name contains "parse"."""


class UnexpectedModelBehavior(Exception):
    """Name of pydantic-ai's malformed-answer error."""


def _validation_errors() -> list[Exception]:
    return [
        OutputValidationError("missing field"),
        JSONParseFailure("bad json"),
        UnexpectedModelBehavior("tool call malformed"),
        RuntimeError("Exceeded maximum retries for result validation"),
        _pydantic_error(),
    ]


class TestRetryableErrors:
    async def test_retried_until_max_attempts_then_failed(self) -> None:
        """A retryable error is attempted exactly retry.max_attempts times, then fails."""
        strategy = ScriptedStrategy([TransientError("flaky") for _ in range(5)])
        result = await _run_one(strategy, retry=_retry(max_attempts=3))
        assert strategy.attempts == [1, 2, 3]
        assert result.success is False
        assert result.error == "TransientError: flaky"

    async def test_a_later_attempt_can_succeed(self) -> None:
        """After two retryable failures the third attempt's output is the result."""
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b"), "third"])
        result = await _run_one(strategy, retry=_retry(max_attempts=3))
        assert result.success is True
        assert result.output == "third"
        assert result.error is None
        assert strategy.attempts == [1, 2, 3]

    async def test_max_attempts_one_means_no_retry(self) -> None:
        """With max_attempts=1 a retryable error fails the item after one call."""
        strategy = ScriptedStrategy([TransientError("once")])
        result = await _run_one(strategy, retry=_retry(max_attempts=1))
        assert strategy.attempts == [1]
        assert result.error == "TransientError: once"

    async def test_error_message_cut_to_200_characters(self) -> None:
        """An exhausted item's error is "<Type>: <message>" with the message cut to 200 chars."""
        strategy = ScriptedStrategy([TransientError("x" * 300) for _ in range(2)])
        result = await _run_one(strategy, retry=_retry(max_attempts=2))
        assert result.error == "TransientError: " + "x" * 200

    async def test_context_kept_on_failure(self) -> None:
        """The failed result carries the item's context."""
        strategy = ScriptedStrategy([TransientError("x")])
        result = await _run_one(strategy, retry=_retry(max_attempts=1))
        assert result.context == {"i": 0}
        assert result.item_id == "item-0"


class TestPermanentErrors:
    async def test_fail_at_once(self) -> None:
        """A logic error (ValueError) is not retried: one attempt, then a failed result."""
        strategy = ScriptedStrategy([ValueError("bad input")])
        result = await _run_one(strategy, retry=_retry(max_attempts=5))
        assert strategy.attempts == [1]
        assert result.success is False
        assert result.error == "ValueError: bad input"

    async def test_error_message_cut_to_500_characters(self) -> None:
        """A permanent failure keeps up to 500 characters of the message."""
        strategy = ScriptedStrategy([KeyError("k" * 700)])
        result = await _run_one(strategy)
        message = str(KeyError("k" * 700))
        assert result.error == "KeyError: " + message[:500]
        assert len(message) > 500

    async def test_permanent_after_retryable_stops_retrying(self) -> None:
        """A permanent error on a retry ends the item although attempts remain."""
        strategy = ScriptedStrategy([TransientError("t"), TypeError("wrong type")])
        result = await _run_one(strategy, retry=_retry(max_attempts=5))
        assert strategy.attempts == [1, 2]
        assert result.error == "TypeError: wrong type"


class TestRetryWaits:
    @pytest.mark.parametrize("error", _validation_errors(), ids=type)
    async def test_validation_errors_retry_without_wait(
        self, error: Exception, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Validation-type errors are retried with no backoff sleep at all."""
        sleeps = SleepRecorder().install(monkeypatch, item_runner)
        strategy = ScriptedStrategy([error, error])
        result = await _run_one(
            strategy, retry=RetryConfig(max_attempts=3, initial_wait=30.0, max_wait=60.0)
        )
        assert result.success is True
        assert strategy.attempts == [1, 2, 3]
        assert sleeps.delays == []

    async def test_transient_errors_wait_per_policy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Other retryable errors sleep initial_wait * base ** (n - 1), capped at max_wait."""
        sleeps = SleepRecorder().install(monkeypatch, item_runner)
        strategy = ScriptedStrategy([TransientError(str(n)) for n in range(4)])
        config = RetryConfig(max_attempts=5, initial_wait=1.0, max_wait=3.0, jitter=False)
        result = await _run_one(strategy, retry=config)
        assert result.success is True
        assert sleeps.delays == [1.0, 2.0, 3.0, 3.0]

    async def test_no_wait_after_the_last_attempt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An exhausted item fails without sleeping after its final attempt."""
        sleeps = SleepRecorder().install(monkeypatch, item_runner)
        strategy = ScriptedStrategy([TransientError(str(n)) for n in range(3)])
        config = RetryConfig(max_attempts=3, initial_wait=1.0, max_wait=10.0, jitter=False)
        result = await _run_one(strategy, retry=config)
        assert result.success is False
        assert sleeps.delays == [1.0, 2.0]

    async def test_permanent_error_does_not_wait(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A permanent failure returns without any backoff sleep."""
        sleeps = SleepRecorder().install(monkeypatch, item_runner)
        result = await _run_one(ScriptedStrategy([ValueError("nope")]))
        assert result.success is False
        assert sleeps.delays == []


class TestRetryPolicy:
    def test_backoff_without_jitter_is_exact(self) -> None:
        """Without jitter the waits are 1, 2, 4, ... seconds."""
        policy = RetryPolicy(RetryConfig(initial_wait=1.0, max_wait=60.0, jitter=False))
        assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]

    def test_backoff_capped_at_max_wait(self) -> None:
        """No wait exceeds max_wait."""
        policy = RetryPolicy(RetryConfig(initial_wait=1.0, max_wait=3.0, jitter=False))
        assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]

    def test_backoff_uses_exponential_base_and_initial_wait(self) -> None:
        """initial_wait and exponential_base shape the curve: 0.5, 1.5, 4.5."""
        config = RetryConfig(initial_wait=0.5, max_wait=100.0, exponential_base=3.0, jitter=False)
        assert [RetryPolicy(config).backoff(n) for n in (1, 2, 3)] == [0.5, 1.5, 4.5]

    def test_jitter_stays_within_half_to_full_wait(self) -> None:
        """With jitter every wait lies in [0.5, 1.0] of the unjittered wait."""
        random.seed(1234)
        config = RetryConfig(initial_wait=1.0, max_wait=10.0, jitter=True)
        policy = RetryPolicy(config)
        exact = RetryPolicy(RetryConfig(initial_wait=1.0, max_wait=10.0, jitter=False))
        for n in range(1, 8):
            base = exact.backoff(n)
            for _ in range(50):
                assert 0.5 * base <= policy.backoff(n) <= base

    def test_jitter_varies_and_is_seedable(self) -> None:
        """Jittered waits differ from one another and follow the random module's seed."""
        policy = RetryPolicy(RetryConfig(initial_wait=1.0, max_wait=10.0, jitter=True))
        random.seed(99)
        first = [policy.backoff(2) for _ in range(20)]
        random.seed(99)
        second = [policy.backoff(2) for _ in range(20)]
        assert first == second
        assert len(set(first)) > 1

    def test_waits_are_computed_by_tenacity(self) -> None:
        """The wait arithmetic is a tenacity wait object, not a hand-written formula."""
        for jitter in (False, True):
            policy = RetryPolicy(RetryConfig(jitter=jitter))
            assert isinstance(policy._wait, wait_base)

    @pytest.mark.parametrize("error", _validation_errors(), ids=type)
    def test_wait_for_validation_errors_is_zero(self, error: Exception) -> None:
        """wait_for() is 0.0 for validation-type errors, whatever the attempt number."""
        policy = RetryPolicy(RetryConfig(initial_wait=5.0, max_wait=50.0, jitter=False))
        info = DefaultErrorClassifier().classify(error)
        assert is_validation_error(error, info)
        assert [policy.wait_for(error, info, n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]

    def test_wait_for_validation_category(self) -> None:
        """A classifier's "validation_error" category alone makes the retry immediate."""
        policy = RetryPolicy(RetryConfig(initial_wait=5.0, max_wait=50.0, jitter=False))
        info = ErrorInfo(True, False, False, "validation_error")
        assert policy.wait_for(RuntimeError("odd"), info, 1) == 0.0

    def test_wait_for_transient_error_is_backoff(self) -> None:
        """wait_for() of an ordinary retryable error equals backoff()."""
        policy = RetryPolicy(RetryConfig(initial_wait=5.0, max_wait=50.0, jitter=False))
        error = TransientError("503")
        info = DefaultErrorClassifier().classify(error)
        assert not is_validation_error(error, info)
        assert [policy.wait_for(error, info, n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]


class _AttemptLog(LLMCallStrategy[str]):
    """Fails per ``script`` and logs execute/on_error calls with their RetryState."""

    def __init__(self, script: list[Exception | None]) -> None:
        self.script = script
        self.log: list[tuple[str, str, int]] = []
        self.states: list[RetryState | None] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.log.append(("execute", prompt, attempt))
        self.states.append(state)
        if state is not None:
            state.set("calls", state.get("calls", 0) + 1)
        step = self.script[attempt - 1] if attempt <= len(self.script) else None
        if step is not None:
            raise step
        return f"done:{prompt}", dict(USAGE)  # type: ignore[return-value]

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.log.append(("on_error", type(exception).__name__, attempt))
        self.states.append(state)


class TestAttemptsAndRetryState:
    async def test_attempt_numbers_count_every_call(self) -> None:
        """execute() receives attempt numbers 1, 2, 3 for an item's successive calls."""
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b")])
        await _run_one(strategy, retry=_retry(max_attempts=3))
        assert strategy.attempts == [1, 2, 3]

    async def test_rate_limited_calls_count_as_attempts(self) -> None:
        """A call rejected with 429 still advances the attempt number (D5)."""
        strategy = ScriptedStrategy([RateLimitError(), TransientError("t"), RateLimitError()])
        result = await _run_one(strategy, retry=_retry(max_attempts=2), rate_limit=_no_cooldown())
        assert result.success is True
        assert strategy.attempts == [1, 2, 3, 4]

    async def test_on_error_sees_every_failure_before_the_retry(self) -> None:
        """on_error() gets each failed attempt, in order, before the next execute()."""
        strategy = _AttemptLog([TransientError("t"), RateLimitError(), ValueError("v")])
        result = await _run_one(strategy, retry=_retry(max_attempts=5), rate_limit=_no_cooldown())
        assert result.error == "ValueError: v"
        assert strategy.log == [
            ("execute", "p0", 1),
            ("on_error", "TransientError", 1),
            ("execute", "p0", 2),
            ("on_error", "RateLimitError", 2),
            ("execute", "p0", 3),
            ("on_error", "ValueError", 3),
        ]

    async def test_on_error_hook_that_raises_is_ignored(self) -> None:
        """An exception from on_error() does not stop the retry."""

        class Grumpy(ScriptedStrategy):
            async def on_error(
                self, exception: Exception, attempt: int, state: RetryState | None = None
            ) -> None:
                raise RuntimeError("hook broke")

        strategy = Grumpy([TransientError("t")])
        result = await _run_one(strategy)
        assert result.success is True
        assert strategy.attempts == [1, 2]

    async def test_retry_state_shared_within_an_item_and_fresh_per_item(self) -> None:
        """All attempts and on_error calls of one item see one RetryState; items get new ones."""
        strategy = _AttemptLog([TransientError("1"), TransientError("2")])
        async with Processor(config=fast_config(max_workers=1)) as processor:
            batch = await run_batch(processor, items_for(strategy, 2))
        assert batch.succeeded == 2
        # Per item: execute, on_error, execute, on_error, execute.
        first, second = strategy.states[:5], strategy.states[5:]
        assert len(second) == 5
        assert all(state is first[0] for state in first)
        assert all(state is second[0] for state in second)
        assert first[0] is not second[0]
        assert isinstance(first[0], RetryState)
        assert first[0].get("calls") == 3
        assert second[0] is not None
        assert second[0].get("calls") == 3

    async def test_strategy_escalating_on_attempt_three(self) -> None:
        """A strategy switching models on attempt 3 gets there after two 429s (D5)."""

        class Escalating(LLMCallStrategy[str]):
            def __init__(self) -> None:
                self.models: list[str] = []

            async def execute(
                self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
            ) -> tuple[str, TokenUsage]:
                model = "large" if attempt >= 3 else "small"
                self.models.append(model)
                if model == "small":
                    raise RateLimitError()
                return f"{model}:{prompt}", dict(USAGE)  # type: ignore[return-value]

        strategy = Escalating()
        result = await _run_one(strategy, retry=_retry(max_attempts=1), rate_limit=_no_cooldown())
        assert result.success is True
        assert result.output == "large:p0"
        assert strategy.models == ["small", "small", "large"]

    async def test_strategy_escalating_via_retry_state(self) -> None:
        """A strategy may record failures in RetryState and read them on the next attempt."""

        class Remembering(LLMCallStrategy[str]):
            async def execute(
                self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
            ) -> tuple[str, TokenUsage]:
                assert state is not None
                if state.get("failures", 0) < 2:
                    raise OutputValidationError("bad shape")
                return "fixed", dict(USAGE)  # type: ignore[return-value]

            async def on_error(
                self, exception: Exception, attempt: int, state: RetryState | None = None
            ) -> None:
                assert state is not None
                state.set("failures", state.get("failures", 0) + 1)

        result = await _run_one(Remembering(), retry=_retry(max_attempts=3))
        assert result.output == "fixed"


class _Recover(BaseMiddleware[Any, Any, Any]):
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    async def on_error(
        self, work_item: LLMWorkItem[Any, Any, Any], error: Exception
    ) -> WorkItemResult[Any, Any] | None:
        self.errors.append((work_item.item_id, type(error).__name__))
        return WorkItemResult(
            item_id=work_item.item_id, success=True, output="fallback", context=work_item.context
        )


class TestMiddlewareRecovery:
    @pytest.mark.parametrize(
        ("script", "attempts"),
        [
            ([TransientError("a"), TransientError("b")], [1, 2]),
            ([ValueError("bad")], [1]),
        ],
        ids=["exhausted", "permanent"],
    )
    async def test_on_error_supplies_the_result(
        self, script: list[Exception], attempts: list[int]
    ) -> None:
        """A middleware on_error result replaces an exhausted or permanent failure."""
        middleware = _Recover()
        observer = RecordingObserver()
        strategy = ScriptedStrategy(script)
        processor = Processor(
            config=fast_config(max_workers=1, retry=_retry(max_attempts=2)),
            middlewares=[middleware],
            observers=[observer],
        )
        result = await _run_one(strategy, processor)
        assert result.success is True
        assert result.output == "fallback"
        assert strategy.attempts == attempts
        assert middleware.errors == [("item-0", type(script[-1]).__name__)]
        assert observer.of(ProcessingEvent.ITEM_FAILED) == []

    async def test_on_error_not_called_for_errors_that_will_be_retried(self) -> None:
        """Middleware on_error only sees the final failure, not retried attempts."""
        middleware = _Recover()
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b")])
        processor = Processor(
            config=fast_config(max_workers=1, retry=_retry(max_attempts=3)),
            middlewares=[middleware],
        )
        result = await _run_one(strategy, processor)
        assert result.output == "ok"
        assert middleware.errors == []


class _FailingPrepare(EchoStrategy):
    async def prepare(self) -> None:
        raise ConnectionRefusedError("no backend")


class _SkipMarked(BaseMiddleware[Any, Any, Any]):
    async def before_process(
        self, work_item: LLMWorkItem[Any, Any, Any]
    ) -> LLMWorkItem[Any, Any, Any] | None:
        return None if work_item.item_id.startswith("skip") else work_item


class TestItemFailedOncePerFailedItem:
    @pytest.mark.parametrize(
        ("strategy", "error_type"),
        [
            (ScriptedStrategy([ValueError("permanent")]), "ValueError"),
            (ScriptedStrategy([TransientError(str(n)) for n in range(3)]), "TransientError"),
            (ScriptedStrategy([RateLimitError() for _ in range(3)]), "RateLimitError"),
            (_FailingPrepare(), "ConnectionRefusedError"),
        ],
        ids=["permanent", "exhausted", "rate-limit-bound", "prepare"],
    )
    async def test_each_kind_of_failure(
        self, strategy: LLMCallStrategy[Any], error_type: str
    ) -> None:
        """Every way an item can fail emits ITEM_FAILED exactly once, naming the error (D7)."""
        observer = RecordingObserver()
        config = fast_config(
            max_workers=1,
            retry=_retry(max_attempts=3),
            rate_limit=_no_cooldown(max_rate_limit_retries=2),
        )
        processor = Processor(config=config, observers=[observer])
        result = await _run_one(strategy, processor)
        assert result.success is False
        assert result.error is not None
        assert result.error.startswith(f"{error_type}: ")
        assert observer.of(ProcessingEvent.ITEM_FAILED) == [
            {"item_id": "item-0", "error_type": error_type}
        ]

    async def test_skipped_item(self) -> None:
        """A middleware-skipped item emits ITEM_FAILED once with error_type "Skipped"."""
        observer = RecordingObserver()
        processor = Processor(
            config=fast_config(max_workers=1), middlewares=[_SkipMarked()], observers=[observer]
        )
        strategy = EchoStrategy()
        async with processor:
            batch = await run_batch(processor, items_for(strategy, 1, prefix="skip"))
        assert batch.results[0].error == "Skipped by middleware"
        assert strategy.calls == []
        assert observer.of(ProcessingEvent.ITEM_FAILED) == [
            {"item_id": "skip-0", "error_type": "Skipped"}
        ]

    async def test_metrics_failures_match_batch_result(self) -> None:
        """In a mixed batch MetricsObserver.items_failed equals BatchResult.failed (D7)."""
        metrics = MetricsObserver()
        recorder = RecordingObserver()
        config = fast_config(
            max_workers=3,
            retry=_retry(max_attempts=2),
            rate_limit=_no_cooldown(max_rate_limit_retries=1),
        )
        processor = Processor(
            config=config, observers=[metrics, recorder], middlewares=[_SkipMarked()]
        )
        items = [
            *items_for(EchoStrategy(), 4, prefix="ok"),
            *items_for(ScriptedStrategy([ValueError("v")]), 1, prefix="permanent"),
            *items_for(ScriptedStrategy([TransientError("t") for _ in range(2)]), 1, prefix="ex"),
            *items_for(ScriptedStrategy([RateLimitError() for _ in range(2)]), 1, prefix="rl"),
            *items_for(_FailingPrepare(), 2, prefix="prep"),
            *items_for(EchoStrategy(), 2, prefix="skip"),
            *items_for(ScriptedStrategy([TransientError("once")]), 1, prefix="recovers"),
        ]
        async with processor:
            batch = await run_batch(processor, items)
        snapshot = await metrics.get_metrics()
        assert batch.total_items == 12
        assert batch.failed == 7
        assert snapshot["items_failed"] == batch.failed
        assert snapshot["items_succeeded"] == batch.succeeded == 5
        assert snapshot["items_processed"] == batch.total_items
        failed_ids = sorted(data["item_id"] for data in recorder.of(ProcessingEvent.ITEM_FAILED))
        assert failed_ids == sorted(r.item_id for r in batch.results if not r.success)


class TestDryRun:
    async def test_calls_dry_run_instead_of_execute(self) -> None:
        """dry_run mode never calls execute() and returns the default placeholder."""
        strategy = EchoStrategy()
        result = await _run_one(strategy, dry_run=True)
        assert strategy.calls == []
        assert result.success is True
        assert result.output == "[DRY-RUN] Mock output for prompt: p0..."
        assert result.token_usage == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}

    async def test_placeholder_truncates_the_prompt_to_50_characters(self) -> None:
        """The default placeholder quotes at most 50 characters of the prompt."""
        strategy = EchoStrategy()
        item = LLMWorkItem(item_id="long", strategy=strategy, prompt="z" * 80)
        async with Processor(config=fast_config(dry_run=True)) as processor:
            batch = await run_batch(processor, [item])
        assert batch.results[0].output == "[DRY-RUN] Mock output for prompt: " + "z" * 50 + "..."

    async def test_dry_run_is_not_timed_out(self) -> None:
        """A dry_run() slower than timeout_per_item still succeeds: no deadline applies."""

        class SlowDryRun(EchoStrategy):
            async def dry_run(self, prompt: str) -> tuple[str, TokenUsage]:
                await asyncio.sleep(0.004)
                return "dry", {}

        result = await _run_one(SlowDryRun(), dry_run=True, timeout_per_item=0.001)
        assert result.success is True
        assert result.output == "dry"

    async def test_dry_run_usage_counted_in_stats(self) -> None:
        """Dry-run results flow into the statistics like real ones."""
        async with Processor(config=fast_config(dry_run=True)) as processor:
            batch = await run_batch(processor, items_for(EchoStrategy(), 3))
            stats = await processor.get_stats()
        assert batch.succeeded == 3
        assert stats["total_tokens"] == 450
        assert batch.total_input_tokens == 300
