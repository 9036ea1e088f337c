"""Timeouts: the framework's per-attempt deadline, provider timeouts, and AttemptDeadline."""

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
    WorkItemResult,
)
from async_batch_llm._internal.deadline import AttemptDeadline
from support import USAGE, fast_config, items_for, run_batch

Processor = ParallelBatchProcessor[str, Any, Any]

TIMEOUT = 0.005
ATTEMPT_USAGE = {"input_tokens": 40, "output_tokens": 2, "total_tokens": 42}


class _Hangs(LLMCallStrategy[str]):
    """Never returns on the attempts in ``hang_on``; records errors passed to on_error.

    A hanging attempt that is cancelled records ``_failed_token_usage`` on the
    ``CancelledError`` when ``usage_on_cancel`` is set, as a streaming strategy would.
    """

    def __init__(
        self, hang_on: set[int] | None = None, usage_on_cancel: dict[str, int] | None = None
    ) -> None:
        self.hang_on = hang_on if hang_on is not None else {1}
        self.usage_on_cancel = usage_on_cancel
        self.attempts: list[int] = []
        self.timeouts: list[float] = []
        self.errors: list[BaseException] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.attempts.append(attempt)
        self.timeouts.append(timeout)
        if attempt in self.hang_on:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as exc:
                if self.usage_on_cancel is not None:
                    exc.__dict__["_failed_token_usage"] = dict(self.usage_on_cancel)
                raise
        return f"done:{attempt}", dict(USAGE)  # type: ignore[return-value]

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.errors.append(exception)


class _RaisesTimeout(LLMCallStrategy[str]):
    """Raises ``errors[attempt - 1]`` while there are any, then succeeds."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors_to_raise = errors
        self.seen: list[BaseException] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if attempt <= len(self.errors_to_raise):
            raise self.errors_to_raise[attempt - 1]
        return "recovered", dict(USAGE)  # type: ignore[return-value]

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.seen.append(exception)


class ProviderTimeout(TimeoutError):
    """A provider SDK's own timeout type."""


def _config(max_attempts: int = 3, **overrides: Any) -> Any:
    overrides.setdefault("max_workers", 1)
    overrides.setdefault("timeout_per_item", TIMEOUT)
    return fast_config(
        retry=RetryConfig(
            max_attempts=max_attempts, initial_wait=0.001, max_wait=0.001, jitter=False
        ),
        **overrides,
    )


async def _run_one(strategy: LLMCallStrategy[Any], config: Any) -> WorkItemResult[Any, Any]:
    async with Processor(config=config) as processor:
        batch = await run_batch(processor, items_for(strategy, 1))
    result: WorkItemResult[Any, Any] = batch.results[0]
    return result


class TestFrameworkDeadline:
    async def test_expiry_raises_framework_timeout_error(self) -> None:
        """An attempt over timeout_per_item fails with FrameworkTimeoutError and its details."""
        strategy = _Hangs(hang_on={1})
        result = await _run_one(strategy, _config())
        assert result.success is True
        (error,) = strategy.errors
        assert isinstance(error, FrameworkTimeoutError)
        assert error.item_id == "item-0"
        assert error.timeout_limit == TIMEOUT
        assert error.elapsed is not None
        assert error.elapsed >= TIMEOUT
        assert "timeout_per_item" in str(error)
        assert error.__cause__ is not None

    async def test_deadline_is_per_attempt(self) -> None:
        """A strategy slow only on attempt 1 succeeds on attempt 2 with a fresh deadline."""
        strategy = _Hangs(hang_on={1})
        result = await _run_one(strategy, _config())
        assert result.output == "done:2"
        assert strategy.attempts == [1, 2]
        assert strategy.timeouts == [TIMEOUT, TIMEOUT]

    async def test_repeated_timeouts_exhaust_retries(self) -> None:
        """Timeouts are retried like other retryable errors until max_attempts."""
        strategy = _Hangs(hang_on={1, 2, 3})
        result = await _run_one(strategy, _config(max_attempts=3))
        assert result.success is False
        assert result.error is not None
        assert result.error.startswith("FrameworkTimeoutError: ")
        assert strategy.attempts == [1, 2, 3]
        assert all(isinstance(error, FrameworkTimeoutError) for error in strategy.errors)

    async def test_expiry_does_not_leak_into_the_next_item(self) -> None:
        """After one attempt timed out, the worker's later items run undisturbed."""

        class HangsOnFirstCall(_Hangs):
            async def execute(
                self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
            ) -> tuple[str, TokenUsage]:
                self.hang_on = {attempt} if not self.attempts else set()
                return await super().execute(prompt, attempt, timeout, state)

        strategy = HangsOnFirstCall()
        async with Processor(config=_config()) as processor:
            batch = await run_batch(processor, items_for(strategy, 4))
        assert batch.succeeded == 4
        assert strategy.attempts == [1, 2, 1, 1, 1]
        assert len(strategy.errors) == 1

    async def test_cancelled_attempt_tokens_are_kept(self) -> None:
        """_failed_token_usage set on the cancelled attempt's exception is counted."""
        strategy = _Hangs(hang_on={1, 2}, usage_on_cancel=ATTEMPT_USAGE)
        result = await _run_one(strategy, _config(max_attempts=2))
        assert result.success is False
        assert strategy.errors[0].__dict__["_failed_token_usage"] == ATTEMPT_USAGE
        assert result.token_usage["input_tokens"] == 80
        assert result.token_usage["total_tokens"] == 84

    async def test_cancelled_attempt_tokens_kept_outside_a_worker(self) -> None:
        """The 0.7.2 retry wrapper (no worker deadline) keeps the cancelled attempt's tokens."""
        strategy = _Hangs(hang_on={1, 2}, usage_on_cancel=ATTEMPT_USAGE)
        item = LLMWorkItem(item_id="direct", strategy=strategy, prompt="p")
        async with Processor(config=_config(max_attempts=2)) as processor:
            with pytest.raises(FrameworkTimeoutError) as caught:
                await processor._process_item_with_retries(item, 0)
        assert caught.value.item_id == "direct"
        assert caught.value.__dict__["_failed_token_usage"]["total_tokens"] == 84


class TestStrategyTimeouts:
    async def test_strategy_timeout_error_is_not_converted(self) -> None:
        """A TimeoutError raised by the strategy reaches on_error as is (D10)."""
        original = TimeoutError("read timed out")
        strategy = _RaisesTimeout([original])
        result = await _run_one(strategy, _config(timeout_per_item=5.0))
        assert strategy.seen == [original]
        assert not isinstance(strategy.seen[0], FrameworkTimeoutError)
        assert result.success is True
        assert result.output == "recovered"

    async def test_strategy_timeout_is_retried_then_reported_as_is(self) -> None:
        """An exhausted provider timeout is reported under its own class name (D10)."""
        strategy = _RaisesTimeout([ProviderTimeout(f"upstream {n}") for n in range(2)])
        result = await _run_one(strategy, _config(max_attempts=2, timeout_per_item=5.0))
        assert result.success is False
        assert result.error == "ProviderTimeout: upstream 1"
        assert [type(error) for error in strategy.seen] == [ProviderTimeout, ProviderTimeout]

    async def test_strategy_timeout_keeps_its_tokens(self) -> None:
        """A provider TimeoutError carrying _failed_token_usage is counted once per attempt."""
        errors: list[BaseException] = []
        for _ in range(2):
            error = TimeoutError("slow upstream")
            error.__dict__["_failed_token_usage"] = dict(ATTEMPT_USAGE)
            errors.append(error)
        result = await _run_one(
            _RaisesTimeout(errors), _config(max_attempts=2, timeout_per_item=5.0)
        )
        assert result.error == "TimeoutError: slow upstream"
        assert result.token_usage["total_tokens"] == 84

    async def test_strategy_timeout_not_converted_outside_a_worker(self) -> None:
        """The 0.7.2 retry wrapper also lets a strategy's own TimeoutError through (D10)."""
        strategy = _RaisesTimeout([ProviderTimeout("a"), ProviderTimeout("b")])
        item = LLMWorkItem(item_id="direct", strategy=strategy, prompt="p")
        async with Processor(config=_config(max_attempts=2, timeout_per_item=5.0)) as processor:
            with pytest.raises(ProviderTimeout, match=r"^b$"):
                await processor._process_item_with_retries(item, 0)


async def _in_task(body: Any) -> Any:
    """Run ``body()`` in its own task so cancelling it cannot disturb the test's task."""
    return await asyncio.create_task(body())


class TestAttemptDeadline:
    async def test_requires_a_running_task(self) -> None:
        """Creating a deadline in a plain loop callback (no task) is an error."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException | None] = loop.create_future()

        def callback() -> None:
            try:
                AttemptDeadline()
            except RuntimeError as exc:
                outcome.set_result(exc)
            else:
                outcome.set_result(None)

        loop.call_soon(callback)
        error = await outcome
        assert isinstance(error, RuntimeError)
        assert "inside the task" in str(error)

    async def test_disarm_before_expiry(self) -> None:
        """An attempt finishing in time is not cancelled and disarm() returns False."""

        async def body() -> bool:
            deadline = AttemptDeadline()
            deadline.arm(10.0)
            await asyncio.sleep(0)
            expired = deadline.disarm()
            deadline.close()
            return expired

        assert await _in_task(body) is False

    async def test_expiry_cancels_and_disarm_reports_it(self) -> None:
        """On expiry the task is cancelled, disarm() is True and the cancel is withdrawn."""

        async def body() -> tuple[bool, int]:
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                expired = deadline.disarm()
                task = asyncio.current_task()
                assert task is not None
                return expired, task.cancelling()
            finally:
                deadline.close()
            raise AssertionError("the deadline never fired")

        assert await _in_task(body) == (True, 0)

    async def test_rearmed_timer_reschedules_instead_of_firing(self) -> None:
        """A timer left from a short attempt moves to the new deadline instead of cancelling."""

        async def body() -> tuple[bool, float, float]:
            loop = asyncio.get_running_loop()
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            assert deadline.disarm() is False
            deadline.arm(30.0)
            # The stale timer fires during this sleep; it must not cancel us.
            await asyncio.sleep(0.003)
            when = deadline._handle_when
            expected = deadline._deadline
            expired = deadline.disarm()
            deadline.close()
            assert when > loop.time() + 20
            return expired, when, expected

        expired, when, expected = await _in_task(body)
        assert expired is False
        assert when == expected

    async def test_shorter_deadline_reschedules_earlier(self) -> None:
        """Arming a shorter deadline than the pending timer fires at the shorter one."""

        async def body() -> bool:
            deadline = AttemptDeadline()
            deadline.arm(30.0)
            deadline.disarm()
            deadline.arm(0.001)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return deadline.disarm()
            finally:
                deadline.close()
            raise AssertionError("the deadline never fired")

        assert await _in_task(body) is True

    async def test_external_cancellation_is_not_expiry(self) -> None:
        """A cancel from outside is not mistaken for the deadline: disarm() is False."""
        observed: list[bool] = []
        started = asyncio.Event()

        async def body() -> None:
            deadline = AttemptDeadline()
            deadline.arm(30.0)
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                observed.append(deadline.disarm())
                raise
            finally:
                deadline.close()

        task = asyncio.create_task(body())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert observed == [False]

    async def test_external_cancel_together_with_expiry_still_propagates(self) -> None:
        """When an outer cancel coincides with expiry, disarm() is False so it propagates."""
        observed: list[bool] = []
        deadlines: list[AttemptDeadline] = []
        started = asyncio.Event()

        async def body() -> None:
            deadline = AttemptDeadline()
            deadlines.append(deadline)
            deadline.arm(30.0)
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                observed.append(deadline.disarm())
                raise
            finally:
                deadline.close()

        task = asyncio.create_task(body())
        await started.wait()
        (deadline,) = deadlines
        # The timer expires and someone else cancels the task before it runs again.
        deadline.arm(0.0)
        deadline._fire()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert observed == [False]

    async def test_close_drops_the_timer(self) -> None:
        """After close() an armed deadline never fires."""

        async def body() -> bool:
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            deadline.close()
            await asyncio.sleep(0.003)
            return deadline._handle is None

        assert await _in_task(body) is True

    async def test_fire_after_disarm_does_nothing(self) -> None:
        """A timer firing while no attempt is armed leaves the task alone and unscheduled."""

        async def body() -> bool:
            deadline = AttemptDeadline()
            deadline.arm(0.001)
            deadline.disarm()
            await asyncio.sleep(0.003)
            handle_gone = deadline._handle is None
            deadline.close()
            return handle_gone

        assert await _in_task(body) is True
