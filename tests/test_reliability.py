"""Regression tests for issue 8 ("Nothing lost, ever"): one per defect, one per mistake.

Each test states in its docstring the property that must hold, and would fail on the
behaviour the issue describes. Waits are tiny and configured (`_config`); the tests about
the per-attempt deadline (defect 1) run on a virtual clock (`virtual_time`), so they use the
issue's own numbers without spending them. Defects 4 and 5 (whole batches against a provider
with a per-minute limit) need real rate-limit timing and are covered by
``tests/test_rate_limit_scenarios.py``, in virtual time; they are not repeated here.

The invariant checked wherever a batch runs: every accepted item ends in exactly one result,
and the counts of the `BatchResult`, of ``get_stats()`` and of a `MetricsObserver` agree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    BatchResult,
    ExponentialBackoffStrategy,
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy
from support import USAGE, EchoStrategy, RateLimitError, RecordingObserver, items_for, run_batch
from virtual_time import run_virtual

Processor = ParallelBatchProcessor[str, Any, Any]
Item = LLMWorkItem[str, Any, Any]
Result = WorkItemResult[Any, Any]
T = TypeVar("T")

#: The tiny bound every configured wait uses (seconds).
TINY = 0.05
#: A guard against a hang: a test that reaches it has failed, whatever its speed.
HANG_GUARD = 30.0


def _config(**overrides: Any) -> ProcessorConfig:
    """Tiny time bounds on every step and hook, and fast retries without jitter."""
    overrides.setdefault("max_workers", 4)
    overrides.setdefault("timeout_per_item", TINY)
    overrides.setdefault(
        "retry", RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False)
    )
    for name in ("hook_timeout", "prepare_timeout", "cleanup_timeout", "observer_timeout"):
        overrides.setdefault(name, TINY)
    overrides.setdefault("cancellation_grace", TINY)
    overrides.setdefault("observer_drain_timeout", 0.5)
    overrides.setdefault("post_processor_timeout", TINY)
    overrides.setdefault("progress_callback_timeout", TINY)
    return ProcessorConfig(**overrides)


async def _bounded(awaitable: Awaitable[T]) -> T:
    """`awaitable`, failing the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, HANG_GUARD)


def _one_result_each(batch: BatchResult[Any, Any], items: list[Item]) -> dict[str, Result]:
    """Assert one result per item (by id); return the results by id."""
    assert Counter(r.item_id for r in batch.results) == Counter(i.item_id for i in items)
    return {r.item_id: r for r in batch.results}


async def _assert_counts_agree(
    batch: BatchResult[Any, Any],
    processor: Processor,
    metrics: MetricsObserver | None = None,
) -> None:
    """The counts of the BatchResult, of get_stats() and (if given) of the metrics agree."""
    stats = await processor.get_stats()
    assert batch.total_items == stats["processed"] == stats["total"] == len(batch.results)
    assert batch.succeeded == stats["succeeded"]
    assert batch.failed == stats["failed"]
    assert batch.total_input_tokens == stats["total_input_tokens"]
    assert batch.total_output_tokens == stats["total_output_tokens"]
    assert batch.total_cached_tokens == stats["cached_input_tokens"]
    if metrics is not None:
        snapshot = await metrics.get_metrics()
        assert snapshot["items_processed"] == batch.total_items
        assert snapshot["items_succeeded"] == batch.succeeded
        assert snapshot["items_failed"] == batch.failed


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


class Scripted(LLMCallStrategy[str]):
    """Each call takes the next step of ``script`` (raise it if an exception, else call it
    with ``(prompt, attempt)`` and await the result); then ``("ok", USAGE)`` for ever.

    It has no ``on_error`` hook: nothing runs between a failed attempt and the next wait.
    """

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.attempts: list[int] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.attempts.append(attempt)
        step: Any = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        if step is not None:
            return await step(prompt, attempt)  # type: ignore[no-any-return]
        return "ok", dict(USAGE)  # type: ignore[return-value]


class ByPrompt(LLMCallStrategy[str]):
    """``raise:<n>`` prompts raise ``errors[n]`` on their first attempt; the rest succeed."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        self.calls: list[tuple[str, int]] = []
        self.cleanup_calls = 0

    async def cleanup(self) -> None:
        self.cleanup_calls += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append((prompt, attempt))
        if prompt.startswith("raise:") and attempt == 1:
            raise self.errors[int(prompt.split(":")[1])]
        return f"ok:{prompt}", dict(USAGE)  # type: ignore[return-value]


class Returns(LLMCallStrategy[str]):
    """Returns ``value`` from every call, however malformed."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        return self.value  # type: ignore[no-any-return]


async def _hang() -> None:
    """Wait for ever (honouring cancellation)."""
    await asyncio.Event().wait()


async def _ignore_cancellation(release: asyncio.Event) -> None:
    """Wait until `release` is set, swallowing every cancellation meanwhile."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


# -- Defect 1: the per-attempt deadline is disarmed on every exit path ----------------------


def _virtual_run(
    strategy: LLMCallStrategy[Any],
    config: ProcessorConfig,
    count: int = 1,
    **processor_args: Any,
) -> tuple[BatchResult[Any, Any], dict[str, Any], float]:
    """Run `count` items of `strategy` on a virtual clock; the batch, stats and time taken."""

    async def main() -> tuple[BatchResult[Any, Any], dict[str, Any], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with Processor(config=config, **processor_args) as processor:
            batch = await run_batch(processor, items_for(strategy, count))
            stats = await processor.get_stats()
        return batch, stats, loop.time() - start

    return run_virtual(main())


def _connection_error_then_ok() -> Scripted:
    return Scripted(ConnectionError("connection reset by peer"))


class TestDefect1StaleDeadline:
    def test_exact_reproduction_retry_wait_longer_than_deadline(self) -> None:
        """The issue's reproduction: a retry wait (1 s) longer than the deadline (0.5 s) after a
        ConnectionError ends in one successful result, not a CancelledError."""
        strategy = _connection_error_then_ok()
        config = ProcessorConfig(
            timeout_per_item=0.5,
            retry=RetryConfig(initial_wait=1.0, max_wait=1.0, jitter=False),
        )
        batch, stats, elapsed = _virtual_run(strategy, config)
        assert [r.success for r in batch.results] == [True]
        assert strategy.attempts == [1, 2]
        assert stats["succeeded"] == 1
        assert elapsed >= 1.0  # the retry wait really outlasted the deadline

    async def test_retry_wait_longer_than_deadline_in_real_time(self) -> None:
        """The same ordering with tiny real waits: deadline 0.05 s, retry wait 0.1 s."""
        strategy = _connection_error_then_ok()
        config = _config(
            timeout_per_item=TINY,
            retry=RetryConfig(max_attempts=2, initial_wait=0.1, max_wait=0.1, jitter=False),
        )
        async with Processor(config=config) as processor:
            batch = await _bounded(run_batch(processor, items_for(strategy, 1)))
            await _assert_counts_agree(batch, processor)
        assert [r.success for r in batch.results] == [True]
        assert strategy.attempts == [1, 2]

    def test_429_at_default_settings_does_not_abort_the_batch(self) -> None:
        """Every setting at its default: one 429 without a retry hint is waited out and the
        item succeeds (0.7.2-style code aborted the batch when the 120 s deadline fired)."""
        strategy = Scripted(RateLimitError())
        batch, stats, _ = _virtual_run(strategy, ProcessorConfig())
        assert [r.success for r in batch.results] == [True]
        assert strategy.attempts == [1, 2]
        assert stats["rate_limit_count"] == 1

    def test_deadline_does_not_fire_during_a_cooldown(self) -> None:
        """A shared 0.7.2 cooldown (300 s) longer than the deadline (120 s) is waited out."""
        strategy = Scripted(RateLimitError())
        cooldown = ExponentialBackoffStrategy(initial_cooldown=300.0, slow_start_items=0)
        batch, _, elapsed = _virtual_run(
            strategy, ProcessorConfig(timeout_per_item=120.0), rate_limit_strategy=cooldown
        )
        assert [r.success for r in batch.results] == [True]
        assert strategy.attempts == [1, 2]
        assert elapsed >= 300.0

    def test_deadline_does_not_fire_during_an_adaptive_controller_wait(self) -> None:
        """A scope pause of the adaptive controller (a 2 s retry hint) longer than the
        deadline (0.5 s) is waited out inside admission, and the item succeeds."""
        strategy = Scripted(RateLimitError(retry_after=2.0))
        batch, _, elapsed = _virtual_run(
            strategy,
            ProcessorConfig(timeout_per_item=0.5),
            rate_limit_strategy=AdaptiveRateLimitStrategy(),
        )
        assert [r.success for r in batch.results] == [True]
        assert strategy.attempts == [1, 2]
        assert elapsed >= 2.0

    def test_deadline_does_not_fire_while_a_worker_waits_for_the_queue(self) -> None:
        """A worker whose item failed at once (ValueError) is not cancelled later, while the
        other worker is still busy (preparing its strategy for 10 s, past the 0.5 s
        deadline): both items get their result."""

        class SlowPrepare(EchoStrategy):
            async def prepare(self) -> None:
                self.prepare_calls += 1
                await asyncio.sleep(10.0)

        failing = Scripted(ValueError("bad input"))
        slow = SlowPrepare()
        items: list[Item] = [
            LLMWorkItem(item_id="fails", strategy=failing, prompt="a"),
            LLMWorkItem(item_id="slow", strategy=slow, prompt="b"),
        ]

        async def main() -> BatchResult[Any, Any]:
            config = ProcessorConfig(max_workers=2, timeout_per_item=0.5)
            async with Processor(config=config) as processor:
                return await run_batch(processor, items)

        batch = run_virtual(main())
        by_id = _one_result_each(batch, items)
        assert by_id["slow"].success is True
        assert by_id["fails"].error == "ValueError: bad input"
        assert failing.attempts == [1]


# -- Defect 2: malformed usage never crashes the batch ---------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(
            {
                "input_tokens": None,
                "output_tokens": 5,
                "total_tokens": 5,
                "cached_input_tokens": None,
            },
            {"input_tokens": 0, "output_tokens": 5, "total_tokens": 5, "cached_input_tokens": 0},
            id="None",
        ),
        pytest.param(
            {"input_tokens": "10", "output_tokens": "5", "total_tokens": "15"},
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            id="str",
        ),
        pytest.param(
            {"input_tokens": 3.5, "output_tokens": 2, "total_tokens": 5},
            {"output_tokens": 2, "total_tokens": 5},
            id="float",
        ),
        pytest.param(
            {"input_tokens": -1, "output_tokens": 2, "total_tokens": 1},
            {"output_tokens": 2, "total_tokens": 1},
            id="negative",
        ),
        pytest.param(
            {"input_tokens": True, "output_tokens": False, "total_tokens": 4},
            {"total_tokens": 4},
            id="bool",
        ),
    ],
)
async def test_defect2_malformed_usage_values(
    usage: dict[str, Any], expected: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Usage values that are not non-negative ints are coerced (None -> 0, "10" -> 10) or
    dropped; every item succeeds, the totals are consistent ints, one WARNING names the
    strategy."""
    strategy = Returns(("out", usage))
    items = items_for(strategy, 5)
    metrics = MetricsObserver()
    async with Processor(config=_config(), observers=[metrics]) as processor:
        batch = await _bounded(run_batch(processor, items))
        by_id = _one_result_each(batch, items)
        await _assert_counts_agree(batch, processor, metrics)
    assert batch.succeeded == 5
    assert all(result.token_usage == expected for result in by_id.values())
    assert batch.total_input_tokens == 5 * expected.get("input_tokens", 0)
    assert batch.total_output_tokens == 5 * expected.get("output_tokens", 0)
    assert type(batch.total_input_tokens) is int
    assert len(_warnings(caplog, "Strategy Returns reported malformed token usage")) == 1


@pytest.mark.parametrize("usage", [42, None], ids=["int", "None"])
async def test_defect2_usage_that_is_not_a_dict(
    usage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``(output, 42)`` and ``(output, None)`` succeed with zero usage; one WARNING."""
    strategy = Returns(("out", usage))
    items = items_for(strategy, 3)
    metrics = MetricsObserver()
    async with Processor(config=_config(), observers=[metrics]) as processor:
        batch = await _bounded(run_batch(processor, items))
        by_id = _one_result_each(batch, items)
        await _assert_counts_agree(batch, processor, metrics)
    assert batch.succeeded == 3
    assert all(r.output == "out" for r in by_id.values())
    assert all(not any(r.token_usage.values()) for r in by_id.values())
    assert batch.total_input_tokens == batch.total_output_tokens == 0
    assert len(_warnings(caplog, "Strategy Returns reported malformed token usage")) == 1


async def test_defect2_three_tuple_return_is_named() -> None:
    """A 3-tuple return fails its item (once each) with a TypeError saying "a tuple of 3
    items", not "got tuple"; the batch still returns consistent counts."""
    strategy = Returns(("out", dict(USAGE), "extra"))
    items = items_for(strategy, 3)
    metrics = MetricsObserver()
    async with Processor(config=_config(), observers=[metrics]) as processor:
        batch = await _bounded(run_batch(processor, items))
        by_id = _one_result_each(batch, items)
        await _assert_counts_agree(batch, processor, metrics)
    assert batch.failed == 3
    for result in by_id.values():
        assert (result.error or "").startswith("TypeError: Returns.execute() must return")
        assert "a tuple of 3 items" in (result.error or "")
    assert strategy.calls == 3  # a TypeError is permanent: no retries


async def test_defect2_one_warning_per_strategy(caplog: pytest.LogCaptureFixture) -> None:
    """Two strategies with malformed usage, several items each: exactly one WARNING each,
    naming the strategy's class."""

    class First(Returns):
        pass

    class Second(Returns):
        pass

    first = First(("a", {"input_tokens": None, "output_tokens": "3", "total_tokens": 3}))
    second = Second(("b", {"input_tokens": -4, "total_tokens": 1.5}))
    items = items_for(first, 4, prefix="first") + items_for(second, 4, prefix="second")
    async with Processor(config=_config()) as processor:
        batch = await _bounded(run_batch(processor, items))
        _one_result_each(batch, items)
        await _assert_counts_agree(batch, processor)
    assert batch.succeeded == 8
    assert batch.total_output_tokens == 4 * 3
    malformed = _warnings(caplog, "reported malformed token usage")
    assert len(malformed) == 2
    assert sum("Strategy First " in message for message in malformed) == 1
    assert sum("Strategy Second " in message for message in malformed) == 1


# -- Defect 3: observers cannot stall or break work -------------------------------------------


class HangingObserver(BaseObserver):
    """Hangs in every call; ``ignore_cancellation`` makes it swallow cancellations too.

    Records, per call, the event it was given.
    """

    def __init__(self, *, ignore_cancellation: bool = False) -> None:
        self.ignore_cancellation = ignore_cancellation
        self.release = asyncio.Event()
        self.received: list[ProcessingEvent] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.received.append(event)
        if self.ignore_cancellation:
            await _ignore_cancellation(self.release)
        else:
            await _hang()


class WatchingStrategy(EchoStrategy):
    """Records how many calls the hanging observer had received at each of its own calls."""

    def __init__(self, observer: HangingObserver) -> None:
        super().__init__()
        self.observer = observer
        self.observer_calls_seen: list[int] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.observer_calls_seen.append(len(self.observer.received))
        return await super().execute(prompt, attempt, timeout, state)


@pytest.mark.parametrize("ignore_cancellation", [False, True], ids=["hangs", "ignores-cancel"])
async def test_defect3_hanging_observer_delays_no_worker(
    ignore_cancellation: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A hanging observer (also one that ignores cancellation) delays no worker: the batch
    finishes, the other observers get every event in order, and one WARNING says how many
    events the hanging one missed."""
    hanging = HangingObserver(ignore_cancellation=ignore_cancellation)
    recorder = RecordingObserver()
    metrics = MetricsObserver()
    strategy = WatchingStrategy(hanging)
    items = items_for(strategy, 5)
    # A per-event bound longer than the batch: every item runs while the hanging observer is
    # still on its first event, and the drain gives up on it after 0.2 s.
    config = _config(max_workers=1, observer_timeout=5.0, observer_drain_timeout=0.2)
    try:
        async with Processor(config=config, observers=[hanging, recorder, metrics]) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor, metrics)
    finally:
        hanging.release.set()
        for _ in range(3):
            await asyncio.sleep(0)
    assert batch.succeeded == 5
    assert strategy.observer_calls_seen == [1] * 5
    events = [event for event, _ in recorder.events]
    assert events == [
        ProcessingEvent.BATCH_STARTED,
        ProcessingEvent.WORKER_STARTED,
        *[ProcessingEvent.ITEM_STARTED, ProcessingEvent.ITEM_COMPLETED] * 5,
        ProcessingEvent.WORKER_STOPPED,
        ProcessingEvent.BATCH_COMPLETED,
    ]
    assert [d["item_id"] for d in recorder.of(ProcessingEvent.ITEM_COMPLETED)] == [
        i.item_id for i in items
    ]
    assert hanging.received == [ProcessingEvent.BATCH_STARTED]
    assert _warnings(caplog, "missed") == [
        f"Observer HangingObserver missed {len(events)} event(s) of this batch: it was too "
        "slow, hung or overfull (observer_timeout=5.0s, observer_drain_timeout=0.2s)"
    ]


class StubbornOnceObserver(RecordingObserver):
    """Ignores the cancellation of its first call until released; records every event."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        first = not self.events
        await super().on_event(event, data)
        if first:
            await _ignore_cancellation(self.release)


def test_defect3_observer_ignoring_cancellation_is_abandoned_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An observer that ignores the cancellation of an overrunning call is left behind: that
    one event counts as missed, every later event still reaches it in order, and
    process_all() does not wait for the abandoned call (virtual time)."""
    stubborn = StubbornOnceObserver()
    recorder = RecordingObserver()
    strategy = EchoStrategy()
    items = items_for(strategy, 3)
    config = _config(max_workers=1, observer_drain_timeout=30.0)

    async def main() -> tuple[BatchResult[Any, Any], float]:
        loop = asyncio.get_running_loop()
        async with Processor(config=config, observers=[stubborn, recorder]) as processor:
            start = loop.time()
            batch = await run_batch(processor, items)
            elapsed = loop.time() - start
        stubborn.release.set()
        for _ in range(3):
            await asyncio.sleep(0)
        return batch, elapsed

    batch, elapsed = run_virtual(main())
    _one_result_each(batch, items)
    assert batch.succeeded == 3
    assert stubborn.events == recorder.events  # it saw every event, in order
    assert elapsed < config.observer_drain_timeout
    assert _warnings(caplog, "missed") == [
        "Observer StubbornOnceObserver missed 1 event(s) of this batch: it was too slow, hung "
        "or overfull (observer_timeout=0.05s, observer_drain_timeout=30.0s)"
    ]


def test_defect3_call_given_up_at_drain_is_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    """An observer call the drain gave up on is counted once: when its own deadline passes
    later, the next batch's WARNING still counts only that batch's events (virtual time)."""
    hanging = HangingObserver(ignore_cancellation=True)
    recorder = RecordingObserver()

    async def main() -> tuple[int, int]:
        config = _config(max_workers=1, observer_timeout=5.0, observer_drain_timeout=0.2)
        async with Processor(config=config, observers=[hanging, recorder]) as processor:
            await run_batch(processor, items_for(EchoStrategy(), 2))
            first = len(recorder.events)
            await asyncio.sleep(10.0)  # past the hung call's deadline and grace
            await processor.process_all()  # a second, empty batch
            second = len(recorder.events) - first
        hanging.release.set()
        for _ in range(3):
            await asyncio.sleep(0)
        return first, second

    first, second = run_virtual(main())
    assert [message.split(" of this batch")[0] for message in _warnings(caplog, "missed")] == [
        f"Observer HangingObserver missed {first} event(s)",
        f"Observer HangingObserver missed {second} event(s)",
    ]


# -- Defect 6: every user hook runs under a bound ----------------------------------------------


class HangingMiddleware(BaseMiddleware[str, Any, Any]):
    """Hangs in the hook named ``hook``; counts calls of each hook."""

    def __init__(self, hook: str) -> None:
        self.hook = hook
        self.called: Counter[str] = Counter()

    async def _maybe_hang(self, hook: str) -> None:
        self.called[hook] += 1
        if hook == self.hook:
            await _hang()

    async def before_process(self, work_item: Item) -> Item | None:
        await self._maybe_hang("before_process")
        return work_item

    async def after_process(self, result: Result) -> Result:
        await self._maybe_hang("after_process")
        return result

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        await self._maybe_hang("on_error")
        return None


class TestDefect6BoundedHooks:
    @pytest.mark.parametrize("hook", ["before_process", "after_process"])
    async def test_hanging_middleware_around_a_success(
        self, hook: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A middleware hanging in before_process/after_process is cut off after
        hook_timeout and skipped: every item still succeeds."""
        middleware = HangingMiddleware(hook)
        strategy = EchoStrategy()
        items = items_for(strategy, 3)
        metrics = MetricsObserver()
        async with Processor(
            config=_config(), middlewares=[middleware], observers=[metrics]
        ) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor, metrics)
        assert batch.succeeded == 3
        assert middleware.called[hook] == 3
        assert len(_warnings(caplog, f"Middleware HangingMiddleware.{hook} raised or overran")) == 3

    async def test_hanging_middleware_on_error(self) -> None:
        """A middleware hanging in on_error is cut off: the item fails with its own error."""
        middleware = HangingMiddleware("on_error")
        strategy = Scripted(ValueError("bad input"))
        items = items_for(strategy, 1)
        async with Processor(config=_config(), middlewares=[middleware]) as processor:
            batch = await _bounded(run_batch(processor, items))
            by_id = _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor)
        assert by_id["item-0"].error == "ValueError: bad input"
        assert middleware.called["on_error"] == 1

    async def test_middleware_ignoring_cancellation_is_abandoned(self) -> None:
        """A before_process that ignores its cancellation fails only its item (an abandoned
        HookTimeoutError); a new worker carries on with the other items."""
        release = asyncio.Event()

        class StubbornMiddleware(BaseMiddleware[str, Any, Any]):
            calls = 0

            async def before_process(self, work_item: Item) -> Item | None:
                type(self).calls += 1
                if work_item.item_id == "item-0":
                    await _ignore_cancellation(release)
                return work_item

        strategy = EchoStrategy()
        items = items_for(strategy, 3)
        metrics = MetricsObserver()
        try:
            async with Processor(
                config=_config(max_workers=1),
                middlewares=[StubbornMiddleware()],
                observers=[metrics],
            ) as processor:
                batch = await _bounded(run_batch(processor, items))
                by_id = _one_result_each(batch, items)
                await _assert_counts_agree(batch, processor, metrics)
                release.set()
                # The abandoned hook now returns: its item must not get a second result.
                for _ in range(5):
                    await asyncio.sleep(0)
                stats = await processor.get_stats()
        finally:
            release.set()
        assert stats["processed"] == 3
        error = by_id["item-0"].error or ""
        assert error.startswith(
            "HookTimeoutError: middleware StubbornMiddleware.before_process() for item 'item-0'"
        )
        assert "abandoned" in error
        assert [by_id["item-1"].success, by_id["item-2"].success] == [True, True]
        assert [prompt for prompt, _ in strategy.calls] == ["p1", "p2"]

    @pytest.mark.parametrize("ignore_cancellation", [False, True], ids=["hangs", "ignores-cancel"])
    async def test_hanging_prepare_fails_the_items(self, ignore_cancellation: bool) -> None:
        """A prepare() that hangs (or ignores its cancellation) fails its items with
        HookTimeoutError after prepare_timeout; execute and cleanup never run."""
        release = asyncio.Event()

        class HangingPrepare(EchoStrategy):
            async def prepare(self) -> None:
                self.prepare_calls += 1
                if ignore_cancellation:
                    await _ignore_cancellation(release)
                else:
                    await _hang()

        strategy = HangingPrepare()
        items = items_for(strategy, 2)
        metrics = MetricsObserver()
        try:
            async with Processor(config=_config(), observers=[metrics]) as processor:
                batch = await _bounded(run_batch(processor, items))
                by_id = _one_result_each(batch, items)
                await _assert_counts_agree(batch, processor, metrics)
        finally:
            release.set()
            for _ in range(3):
                await asyncio.sleep(0)
        assert batch.failed == 2
        for result in by_id.values():
            assert (result.error or "").startswith(
                "HookTimeoutError: prepare() of strategy HangingPrepare did not finish within 0.05s"
            )
            assert ("abandoned" in (result.error or "")) is ignore_cancellation
        assert strategy.calls == []
        assert strategy.cleanup_calls == 0

    @pytest.mark.parametrize("ignore_cancellation", [False, True], ids=["hangs", "ignores-cancel"])
    async def test_hanging_cleanup_does_not_hold_up_the_exit(
        self, ignore_cancellation: bool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A cleanup() that hangs (or ignores cancellation) is given up on after
        cleanup_timeout: leaving ``async with`` returns, the results are kept, a WARNING."""
        release = asyncio.Event()

        class HangingCleanup(EchoStrategy):
            async def cleanup(self) -> None:
                self.cleanup_calls += 1
                if ignore_cancellation:
                    await _ignore_cancellation(release)
                else:
                    await _hang()

        strategy = HangingCleanup()
        items = items_for(strategy, 2)
        try:
            async with Processor(config=_config()) as processor:
                batch = await run_batch(processor, items)
            # (the exit itself is what must not hang)
        finally:
            release.set()
        assert batch.succeeded == 2
        assert strategy.cleanup_calls == 1
        assert _warnings(caplog, "cleanup() of strategy HangingCleanup failed")

    async def test_strategy_swallowing_cancellation_is_abandoned(self) -> None:
        """A strategy that swallows its cancellation fails its item with an abandoned
        FrameworkTimeoutError; a new worker carries on with the queue and the batch ends."""
        release = asyncio.Event()

        async def stuck(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
            await _ignore_cancellation(release)
            return "late", dict(USAGE)  # type: ignore[return-value]

        strategy = Scripted(stuck)
        items = items_for(strategy, 4)
        metrics = MetricsObserver()
        try:
            async with Processor(config=_config(max_workers=1), observers=[metrics]) as processor:
                batch = await _bounded(run_batch(processor, items))
                by_id = _one_result_each(batch, items)
                await _assert_counts_agree(batch, processor, metrics)
                release.set()
                # The abandoned call now returns: it must not record a second result.
                for _ in range(5):
                    await asyncio.sleep(0)
                stats = await processor.get_stats()
        finally:
            release.set()
        error = by_id["item-0"].error or ""
        assert error.startswith("FrameworkTimeoutError: ")
        assert "abandoned" in error
        assert [by_id[f"item-{i}"].success for i in range(1, 4)] == [True, True, True]
        assert stats["processed"] == 4
        assert strategy.attempts == [1, 1, 1, 1]

    async def test_replacement_stuck_in_a_taken_over_post_processor_stops(self) -> None:
        """A replacement worker stuck post-processing the result it took over is abandoned
        in turn; when that post-processor finally returns, the worker stops instead of going
        back to the queue (regression: it took items outside the pool's watch, so the batch
        could end without their results, and it published WORKER_STOPPED after the batch)."""
        release_call = asyncio.Event()
        release_post = asyncio.Event()

        async def stuck(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
            await _ignore_cancellation(release_call)
            return "late", dict(USAGE)  # type: ignore[return-value]

        async def unblock_post(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
            release_post.set()  # the stuck post-processor returns while items are queued
            await asyncio.sleep(0)
            return "ok", dict(USAGE)  # type: ignore[return-value]

        async def post(result: Result) -> None:
            if result.item_id == "item-0":
                await _ignore_cancellation(release_post)

        strategy = Scripted(stuck, unblock_post)
        items = items_for(strategy, 6)
        recorder = RecordingObserver()
        try:
            async with Processor(
                config=_config(max_workers=1, post_processor_timeout=TINY),
                observers=[recorder],
                post_processor=post,
            ) as processor:
                batch = await _bounded(run_batch(processor, items))
                by_id = _one_result_each(batch, items)
        finally:
            release_call.set()
            release_post.set()
        assert [by_id[f"item-{i}"].success for i in range(1, 6)] == [True] * 5
        started_by = {data["worker_id"] for data in recorder.of(ProcessingEvent.ITEM_STARTED)}
        # Worker 0 ran item-0 and got stuck; worker 1 took it over and got stuck in the
        # post-processor; worker 2 ran every other item.
        assert started_by == {0, 2}
        stopped = [data["worker_id"] for data in recorder.of(ProcessingEvent.WORKER_STOPPED)]
        assert stopped == [2]

    async def test_hanging_strategy_on_error(self) -> None:
        """A strategy's on_error that hangs is cut off after hook_timeout: the retry runs
        and the item succeeds."""

        class HangingOnError(Scripted):
            def __init__(self, *script: Any) -> None:
                super().__init__(*script)
                self.errors_seen: list[str] = []

            async def on_error(
                self, exception: Exception, attempt: int, state: RetryState | None = None
            ) -> None:
                self.errors_seen.append(type(exception).__name__)
                await _hang()

        strategy = HangingOnError(ConnectionError("reset"))
        items = items_for(strategy, 1)
        async with Processor(config=_config()) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor)
        assert batch.succeeded == 1
        assert strategy.attempts == [1, 2]
        assert strategy.errors_seen == ["ConnectionError"]

    async def test_hanging_on_rate_limit(self, caplog: pytest.LogCaptureFixture) -> None:
        """A rate-limit strategy whose on_rate_limit hangs is cut off after hook_timeout: the
        cooldown ends at once and the item is retried to success."""

        class HangingRateLimitStrategy(ExponentialBackoffStrategy):
            calls = 0

            async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
                type(self).calls += 1
                await _hang()
                return 0.0

        strategy = Scripted(RateLimitError())
        items = items_for(strategy, 1)
        rate_strategy = HangingRateLimitStrategy(slow_start_items=0)
        async with Processor(config=_config(), rate_limit_strategy=rate_strategy) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor)
        assert batch.succeeded == 1
        assert strategy.attempts == [1, 2]
        assert HangingRateLimitStrategy.calls == 1
        assert _warnings(caplog, "failed to choose a cooldown")


_HUNG_SYNC_CALLBACKS = textwrap.dedent(
    """
    import asyncio
    import concurrent.futures
    import threading

    from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
    from support import EchoStrategy

    HUNG = threading.Event()  # never set
    entered = {"progress": 0, "post": 0}


    def progress(completed, total, item_id):
        entered["progress"] += 1
        HUNG.wait()


    def post(result):
        entered["post"] += 1
        HUNG.wait()


    async def main():
        loop = asyncio.get_running_loop()
        # A default executor with room for two jobs: one hung callback in it would show.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        config = ProcessorConfig(
            max_workers=1,
            progress_interval=1,
            progress_callback_timeout=0.05,
            post_processor_timeout=0.05,
        )
        strategy = EchoStrategy()
        async with ParallelBatchProcessor(
            config=config, progress_callback=progress, post_processor=post
        ) as processor:
            for i in range(6):
                await processor.add_work(LLMWorkItem(f"item-{i}", strategy, f"p{i}"))
            result = await processor.process_all()
            while processor._progress_tasks:
                await asyncio.wait(list(processor._progress_tasks))
        print("succeeded:", result.succeeded)
        print("post-processors hung:", entered["post"])
        print("progress callbacks hung:", entered["progress"])
        # The pool the SDKs share (DNS lookups, for instance) still runs work.
        jobs = [loop.run_in_executor(None, threading.get_ident) for _ in range(8)]
        names = await asyncio.wait_for(asyncio.gather(*jobs), 10)
        print("executor jobs done:", len(names))
        hung = [t for t in threading.enumerate() if t.name.startswith("async-batch-llm")]
        print("hung threads are daemons:", bool(hung) and all(t.daemon for t in hung))


    asyncio.run(main())
    print("asyncio.run returned")
    """
)


def test_defect6_hung_sync_callbacks_block_neither_exit_nor_thread_pool(tmp_path: Path) -> None:
    """Hung sync progress callbacks and six hung sync post-processors: the batch ends, the
    default executor still runs work, asyncio.run() returns and the interpreter exits."""
    script = tmp_path / "hung_callbacks.py"
    script.write_text(_HUNG_SYNC_CALLBACKS)
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,  # only a hang gets near it
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[:2] == ["succeeded: 6", "post-processors hung: 6"]
    assert int(lines[2].split(":")[1]) >= 1  # at least one progress callback hung
    assert lines[3:] == [
        "executor jobs done: 8",
        "hung threads are daemons: True",
        "asyncio.run returned",
    ]


# -- Defect 7: one call cannot abort everything ------------------------------------------------


class CustomInterrupt(BaseException):
    """A user-defined BaseException that is not an Exception."""


class TestDefect7Interruptions:
    async def test_stray_cancelled_error_fails_only_its_attempt(self) -> None:
        """A CancelledError raised inside execute (nothing cancelled the batch) fails only
        that attempt; the attempt is retried and every item succeeds."""
        strategy = ByPrompt([asyncio.CancelledError("leaked by an SDK")])
        items = [
            LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt="raise:0" if i == 2 else "p")
            for i in range(5)
        ]
        metrics = MetricsObserver()
        async with Processor(config=_config(), observers=[metrics]) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor, metrics)
        assert batch.succeeded == 5
        assert [attempt for prompt, attempt in strategy.calls if prompt == "raise:0"] == [1, 2]

    async def test_custom_base_exception_fails_only_its_item(self) -> None:
        """A custom BaseException raised inside execute fails only its item, permanently
        (no retry); every finished result is kept."""
        strategy = ByPrompt([CustomInterrupt("boom")])
        items = [
            LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt="raise:0" if i == 5 else "p")
            for i in range(10)
        ]
        metrics = MetricsObserver()
        async with Processor(config=_config(max_workers=2), observers=[metrics]) as processor:
            batch = await _bounded(run_batch(processor, items))
            by_id = _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor, metrics)
        assert batch.succeeded == 9
        error = by_id["item-5"].error or ""
        assert error.startswith("CallInterruptedError: ")
        assert "CustomInterrupt" in error
        assert [attempt for prompt, attempt in strategy.calls if prompt == "raise:0"] == [1]

    async def test_cancelling_process_all_propagates_and_leaves_nothing_running(self) -> None:
        """Cancelling process_all() by its caller propagates; no task is left running and the
        prepared strategy is cleaned up once by ``async with``."""
        started = asyncio.Event()

        class Blocks(EchoStrategy):
            async def execute(
                self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
            ) -> tuple[str, TokenUsage]:
                started.set()
                await _hang()
                raise AssertionError("unreachable")

        strategy = Blocks()
        before = asyncio.all_tasks()
        async with Processor(config=_config(timeout_per_item=60.0)) as processor:
            for item in items_for(strategy, 8):
                await processor.add_work(item)
            run = asyncio.create_task(processor.process_all())
            await _bounded(started.wait())
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        assert asyncio.all_tasks() == before
        assert strategy.prepare_calls == strategy.cleanup_calls == 1

    def test_keyboard_interrupt_in_execute_propagates(self) -> None:
        """A KeyboardInterrupt raised inside execute propagates out of process_all() (not out
        of the event loop), with the strategy cleaned up and no task left running."""
        strategy = ByPrompt([KeyboardInterrupt()])
        items = [
            LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt="raise:0" if i == 1 else "p")
            for i in range(4)
        ]

        outcome = _run_expecting_interrupt(items, config=_config(max_workers=1))
        assert outcome == "propagated from process_all; 0 task(s) left"
        assert strategy.cleanup_calls == 1

    @pytest.mark.parametrize("kind", ["async", "sync"])
    def test_keyboard_interrupt_in_progress_callback_propagates(self, kind: str) -> None:
        """A KeyboardInterrupt raised by a progress callback (async, or sync on its thread)
        comes out of process_all(), like one raised by any other hook (regression: it escaped
        the event loop from the callback's task and the batch kept running)."""
        strategy = ByPrompt([])
        items = [LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt="p") for i in range(6)]

        def sync_callback(completed: int, total: int, current: str) -> None:
            raise KeyboardInterrupt

        async def async_callback(completed: int, total: int, current: str) -> None:
            raise KeyboardInterrupt

        callback = async_callback if kind == "async" else sync_callback

        outcome = _run_expecting_interrupt(
            items,
            config=_config(max_workers=1, progress_interval=1),
            progress_callback=callback,
        )
        assert outcome == "propagated from process_all; 0 task(s) left"


def _run_expecting_interrupt(items: list[Any], **options: Any) -> str:
    """Run `items` in a fresh event loop; say whether a KeyboardInterrupt came out of
    process_all() (not out of the loop) and how many tasks were left."""

    async def main() -> str:
        try:
            async with Processor(**options) as processor:
                await run_batch(processor, items)
        except KeyboardInterrupt:
            outcome = "propagated from process_all"
        else:
            outcome = "returned"
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        return f"{outcome}; {len(leftover)} task(s) left"

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the event loop instead of process_all()")


# -- Defect 8: what is accepted works --------------------------------------------------------


class TestDefect8AcceptedThenBroken:
    async def test_fractional_requests_per_minute(self) -> None:
        """max_requests_per_minute=0.5 means one request per two minutes: the limiter holds
        one request per 120 s window, an item gets it at once and succeeds, and the window
        then has no capacity left."""
        processor: Processor = ParallelBatchProcessor(
            config=_config(max_workers=1, max_requests_per_minute=0.5)
        )
        limiter = processor._limiter
        assert limiter is not None
        assert limiter.max_rate == 1
        assert limiter.time_period == 120.0
        async with processor:
            batch = await _bounded(run_batch(processor, items_for(EchoStrategy(), 1)))
        assert batch.succeeded == 1
        assert not limiter.has_capacity()  # the one request of this window is used

    async def test_workers_capped_by_the_work(self) -> None:
        """max_workers=1_000_000 with 10 items starts 10 workers."""
        recorder = RecordingObserver()
        strategy = EchoStrategy()
        items = items_for(strategy, 10)
        async with Processor(
            config=_config(max_workers=1_000_000), observers=[recorder]
        ) as processor:
            batch = await _bounded(run_batch(processor, items))
            _one_result_each(batch, items)
            await _assert_counts_agree(batch, processor)
        assert len(recorder.of(ProcessingEvent.WORKER_STARTED)) == 10
        assert len(processor._workers) == 10

    @pytest.mark.parametrize(
        ("edit", "error", "field"),
        [
            (lambda c: setattr(c, "max_workers", "3"), TypeError, "max_workers"),
            (lambda c: setattr(c, "timeout_per_item", -1.0), ValueError, "timeout_per_item"),
            (
                lambda c: setattr(c, "max_requests_per_minute", 0),
                ValueError,
                "max_requests_per_minute",
            ),
            (lambda c: setattr(c, "hook_timeout", None), TypeError, "hook_timeout"),
            (lambda c: setattr(c.retry, "max_attempts", 0), ValueError, "max_attempts"),
            (lambda c: setattr(c, "retry", None), TypeError, "retry"),
        ],
        ids=["type", "range", "rpm", "hook-bound", "nested", "nested-type"],
    )
    async def test_config_edited_after_construction_is_checked_up_front(
        self,
        edit: Callable[[ProcessorConfig], None],
        error: type[Exception],
        field: str,
    ) -> None:
        """A config edited after construction with a bad value makes process_all() raise
        TypeError/ValueError naming the field, before any item runs."""
        strategy = EchoStrategy()
        config = _config()
        async with Processor(config=config) as processor:
            for item in items_for(strategy, 3):
                await processor.add_work(item)
            edit(config)
            with pytest.raises(error, match=field):
                await _bounded(processor.process_all())
        assert strategy.calls == []
        assert strategy.prepare_calls == 0


# -- Defect 9: TokenTrackingError keeps the classification of what it wraps -----------------


async def test_defect9_token_tracking_error_keeps_a_permanent_error_permanent() -> None:
    """A ValueError wrapped in TokenTrackingError stays permanent (one attempt) while the
    tokens the failed call used are counted in the result and the totals."""
    spent = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}

    async def fails(prompt: str, attempt: int) -> tuple[str, TokenUsage]:
        try:
            raise ValueError("the model's answer is not valid JSON")
        except ValueError as exc:
            raise TokenTrackingError("call failed", token_usage=spent) from exc  # type: ignore[arg-type]

    strategy = Scripted(fails)
    items = items_for(strategy, 1)
    metrics = MetricsObserver()
    async with Processor(config=_config(), observers=[metrics]) as processor:
        batch = await _bounded(run_batch(processor, items))
        by_id = _one_result_each(batch, items)
        await _assert_counts_agree(batch, processor, metrics)
    assert strategy.attempts == [1]
    assert by_id["item-0"].success is False
    usage = by_id["item-0"].token_usage
    assert {key: usage.get(key) for key in spent} == spent
    assert batch.total_input_tokens == 7
    assert batch.total_output_tokens == 3


# -- Mistakes get a clear error up front -------------------------------------------------------


class AgentLike:
    """Looks like a pydantic-ai Agent: it has ``run``, not ``execute``."""

    async def run(self, prompt: str) -> str:
        return prompt


class SyncExecute(LLMCallStrategy[str]):
    def execute(  # type: ignore[override]
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return prompt, dict(USAGE)  # type: ignore[return-value]


async def _plain_async_function(prompt: str) -> str:
    return prompt


class TestMistakes:
    @pytest.mark.parametrize(
        ("strategy", "hints"),
        [
            (AgentLike(), ("must be an LLMCallStrategy", "PydanticAIStrategy(agent)")),
            (_plain_async_function, ("must be an LLMCallStrategy", "a function?")),
            (SyncExecute(), ("SyncExecute.execute()", "must be a coroutine function")),
            (EchoStrategy, ("the class EchoStrategy, not an instance", "EchoStrategy(...)")),
        ],
        ids=["agent-like", "async-function", "sync-execute", "class-not-instance"],
    )
    async def test_unusable_strategy_rejected_at_add_work(
        self, strategy: Any, hints: tuple[str, ...]
    ) -> None:
        """A strategy that is not an LLMCallStrategy, or whose execute is sync, raises a
        TypeError at add_work naming the item (and the fix); nothing is queued."""
        async with Processor(config=_config()) as processor:
            item: Item = LLMWorkItem(item_id="the-item", strategy=strategy, prompt="p")
            with pytest.raises(TypeError) as raised:
                await processor.add_work(item)
            stats = await processor.get_stats()
        message = str(raised.value)
        assert "'the-item'" in message
        assert all(hint in message for hint in hints), message
        assert stats["total"] == 0

    @pytest.mark.parametrize(
        ("kwargs", "named"),
        [
            ({"observers": [object()]}, "observers[0]"),
            ({"observers": RecordingObserver()}, "observers must be a list"),
            ({"observers": [RecordingObserver(), EchoStrategy()]}, "observers[1]"),
            ({"middlewares": [object()]}, "middlewares[0]"),
            ({"middlewares": [RecordingObserver()]}, "middlewares[0]"),
            ({"middlewares": BaseMiddleware()}, "middlewares must be a list"),
        ],
        ids=[
            "observer",
            "observer-not-list",
            "second-observer",
            "middleware",
            "observer-as-mw",
            "middleware-not-list",
        ],
    )
    def test_wrong_hook_types_rejected_at_construction(
        self, kwargs: dict[str, Any], named: str
    ) -> None:
        """Observers or middlewares of the wrong type raise TypeError at construction,
        naming the argument."""
        with pytest.raises(TypeError) as raised:
            ParallelBatchProcessor(config=_config(), **kwargs)
        assert named in str(raised.value)

    @pytest.mark.parametrize("name", ["post_processor", "progress_callback"])
    def test_non_callable_callbacks_rejected_at_construction(self, name: str) -> None:
        """A non-callable post_processor or progress_callback raises TypeError naming it."""
        with pytest.raises(TypeError, match=name):
            ParallelBatchProcessor(config=_config(), **{name: "print"})

    async def test_duplicate_item_id_is_warned_about(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A duplicate item_id within one batch logs a WARNING naming it; both items run."""
        strategy = EchoStrategy()
        items: list[Item] = [
            LLMWorkItem(item_id="same", strategy=strategy, prompt="a"),
            LLMWorkItem(item_id="other", strategy=strategy, prompt="b"),
            LLMWorkItem(item_id="same", strategy=strategy, prompt="c"),
        ]
        async with Processor(config=_config()) as processor:
            batch = await _bounded(run_batch(processor, items))
            await _assert_counts_agree(batch, processor)
        duplicates = _warnings(caplog, "added more than once")
        assert len(duplicates) == 1
        assert "'same'" in duplicates[0]
        assert sorted(r.item_id for r in batch.results) == ["other", "same", "same"]

    async def test_leaving_with_queued_items_is_warned_about(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Leaving ``async with`` with queued items never processed logs a WARNING with
        their number; no item ran."""
        strategy = EchoStrategy()
        async with Processor(config=_config()) as processor:
            for item in items_for(strategy, 3):
                await processor.add_work(item)
        assert strategy.calls == []
        assert _warnings(caplog, "3 queued item(s) were never processed")


class TestConfigEditedAfterConstruction:
    async def test_rate_limit_settings_edited_later_take_effect(self) -> None:
        """A config edited after construction is applied at the next batch, not only checked:
        a cooldown configured later selects the 0.7.2 cooldown, a budget set later is used."""
        config = ProcessorConfig(max_workers=1)
        processor = ParallelBatchProcessor[str, str, None](config=config)
        assert isinstance(processor.rate_limit_strategy, AdaptiveRateLimitStrategy)
        config.rate_limit.cooldown_seconds = 7.0
        config.max_requests_per_minute = 120
        async with processor:
            await processor.process_all()
            strategy = processor.rate_limit_strategy
            assert isinstance(strategy, ExponentialBackoffStrategy)
            assert strategy.initial_cooldown == 7.0
            limiter = processor._proactive_rate_limiter
            assert limiter is not None
            assert limiter.max_rate == 120
