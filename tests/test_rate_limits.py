"""Rate limits: one shared cooldown per burst, retry budget, server hints, slow start."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from async_batch_llm import (
    DefaultErrorClassifier,
    ErrorInfo,
    ExponentialBackoffStrategy,
    LLMCallStrategy,
    ParallelBatchProcessor,
    ProcessingEvent,
    RateLimitConfig,
    RateLimitStrategy,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm._internal import item_runner
from async_batch_llm._internal.rate_limit_coordinator import (
    DEFAULT_MAX_COOLDOWN,
    RateLimitCoordinator,
)
from support import (
    USAGE,
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


def _rate_limit(**overrides: Any) -> RateLimitConfig:
    overrides.setdefault("cooldown_seconds", 0.001)
    return RateLimitConfig(
        slow_start_items=0, slow_start_initial_delay=0.0, slow_start_final_delay=0.0, **overrides
    )


class _FixedCooldown(RateLimitStrategy):
    """Cooldown ``seconds`` (default 0), no slow start; records every on_rate_limit call."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[tuple[int, int]] = []

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        self.calls.append((worker_id, consecutive_limit_count))
        return self.seconds

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        return (False, 0.0)


class _BurstStrategy(LLMCallStrategy[str]):
    """Each item's first call waits until ``expected`` first calls are in flight, then 429s."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_in_flight = asyncio.Event()
        self.calls: Counter[str] = Counter()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls[prompt] += 1
        if self.calls[prompt] == 1:
            self.arrived += 1
            if self.arrived == self.expected:
                self.all_in_flight.set()
            await self.all_in_flight.wait()
            raise RateLimitError()
        return prompt, dict(USAGE)  # type: ignore[return-value]


async def _run(
    strategy: LLMCallStrategy[Any],
    *,
    count: int = 1,
    observers: list[Any] | None = None,
    rate_limit_strategy: RateLimitStrategy | None = None,
    error_classifier: Any = None,
    **config: Any,
) -> tuple[Any, dict[str, Any], Processor]:
    config.setdefault("max_workers", 1)
    config.setdefault("rate_limit", _rate_limit())
    processor = Processor(
        config=fast_config(**config),
        observers=observers,
        rate_limit_strategy=rate_limit_strategy,
        error_classifier=error_classifier,
    )
    async with processor:
        batch = await run_batch(processor, items_for(strategy, count))
        stats = await processor.get_stats()
    return batch, stats, processor


class TestOneCooldownPerBurst:
    async def test_twenty_simultaneous_429s_cause_one_cooldown(self) -> None:
        """20 workers all rate-limited at once share exactly one cooldown, then all succeed."""
        observer = RecordingObserver()
        strategy = _BurstStrategy(expected=20)
        batch, stats, _ = await _run(strategy, count=20, max_workers=20, observers=[observer])
        assert len(observer.of(ProcessingEvent.COOLDOWN_STARTED)) == 1
        assert len(observer.of(ProcessingEvent.COOLDOWN_ENDED)) == 1
        assert len(observer.of(ProcessingEvent.RATE_LIMIT_HIT)) == 20
        assert stats["rate_limit_count"] == 20
        assert batch.succeeded == 20
        assert set(strategy.calls.values()) == {2}

    async def test_burst_cooldown_asks_the_strategy_once(self) -> None:
        """The rate-limit strategy is consulted once for the whole burst."""
        rate_strategy = _FixedCooldown()
        batch, _, _ = await _run(
            _BurstStrategy(expected=8), count=8, max_workers=8, rate_limit_strategy=rate_strategy
        )
        assert batch.succeeded == 8
        assert len(rate_strategy.calls) == 1
        assert rate_strategy.calls[0][1] == 1


class TestRetryBudget:
    async def test_rate_limits_do_not_use_max_attempts(self) -> None:
        """With max_attempts=1 an item still succeeds after 429s (D5)."""
        strategy = ScriptedStrategy([RateLimitError(), RateLimitError()])
        batch, stats, _ = await _run(
            strategy, retry=RetryConfig(max_attempts=1, initial_wait=0.001, max_wait=0.001)
        )
        assert batch.succeeded == 1
        assert strategy.attempts == [1, 2, 3]
        assert stats["rate_limit_count"] == 2

    async def test_rate_limits_and_failures_have_separate_budgets(self) -> None:
        """Two 429s and then max_attempts-1 retryable failures still leave a final attempt."""
        script = [RateLimitError(), TransientError("a"), RateLimitError(), TransientError("b")]
        strategy = ScriptedStrategy(script)
        batch, _, _ = await _run(
            strategy, retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001)
        )
        assert batch.succeeded == 1
        assert strategy.attempts == [1, 2, 3, 4, 5]

    async def test_no_backoff_on_top_of_the_cooldown(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A rate-limited attempt is retried after the cooldown with no retry backoff (D5)."""
        sleeps = SleepRecorder().install(monkeypatch, item_runner)
        strategy = ScriptedStrategy([RateLimitError(), RateLimitError()])
        batch, _, _ = await _run(
            strategy, retry=RetryConfig(max_attempts=3, initial_wait=30.0, max_wait=60.0)
        )
        assert batch.succeeded == 1
        assert sleeps.delays == []

    async def test_bound_exceeded_fails_with_the_rate_limit_error(self) -> None:
        """Past max_rate_limit_retries the item fails with the rate-limit error."""
        strategy = ScriptedStrategy([RateLimitError("429 slow down") for _ in range(10)])
        batch, stats, _ = await _run(strategy, rate_limit=_rate_limit(max_rate_limit_retries=2))
        result = batch.results[0]
        assert result.success is False
        assert result.error == "RateLimitError: 429 slow down"
        assert strategy.attempts == [1, 2, 3]
        assert stats["rate_limit_count"] == 3

    async def test_bound_zero_never_retries_a_rate_limit(self) -> None:
        """max_rate_limit_retries=0 fails the item on its first 429."""
        strategy = ScriptedStrategy([RateLimitError()])
        batch, _, _ = await _run(strategy, rate_limit=_rate_limit(max_rate_limit_retries=0))
        assert batch.failed == 1
        assert strategy.attempts == [1]

    async def test_non_retryable_rate_limit_still_retried(self) -> None:
        """A classifier marking 429s non-retryable (Gemini-style) still gets the retry (D5)."""

        class GeminiLikeClassifier:
            def __init__(self) -> None:
                self.default = DefaultErrorClassifier()

            def classify(self, exception: Exception) -> ErrorInfo:
                if "429" in str(exception):
                    return ErrorInfo(
                        is_retryable=False,
                        is_rate_limit=True,
                        is_timeout=False,
                        error_category="rate_limit",
                        suggested_wait=300.0,
                    )
                return self.default.classify(exception)

        observer = RecordingObserver()
        strategy = ScriptedStrategy([RateLimitError("429 RESOURCE_EXHAUSTED")])
        batch, _, _ = await _run(
            strategy, error_classifier=GeminiLikeClassifier(), observers=[observer]
        )
        assert batch.succeeded == 1
        assert strategy.attempts == [1, 2]
        assert len(observer.of(ProcessingEvent.COOLDOWN_STARTED)) == 1
        assert observer.of(ProcessingEvent.ITEM_FAILED) == []


class _HeaderRateLimit(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("429 Too Many Requests")
        self.headers = headers


class _ResponseRateLimit(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("429 Too Many Requests")
        self.response = SimpleNamespace(headers=headers)


class TestServerRetryHint:
    @pytest.mark.parametrize(
        ("error", "hint"),
        [
            (RateLimitError(retry_after=0.003), 0.003),
            (_HeaderRateLimit({"retry-after": "0.002"}), 0.002),
            (_HeaderRateLimit({"retry-after-ms": "4"}), 0.004),
            (_ResponseRateLimit({"Retry-After": "0.001"}), 0.001),
        ],
        ids=["attribute", "header", "header-ms", "response-header"],
    )
    async def test_hint_sets_the_cooldown(self, error: Exception, hint: float) -> None:
        """The cooldown is the server's hint, not the strategy's formula (D6)."""
        observer = RecordingObserver()
        rate_strategy = _FixedCooldown(seconds=3600.0)
        batch, _, _ = await _run(
            ScriptedStrategy([error]), observers=[observer], rate_limit_strategy=rate_strategy
        )
        assert batch.succeeded == 1
        started = observer.of(ProcessingEvent.COOLDOWN_STARTED)
        assert [data["duration"] for data in started] == [hint]
        assert rate_strategy.calls == []

    async def test_hint_clipped_to_max_cooldown(self) -> None:
        """A hint above the strategy's max_cooldown is cut to max_cooldown (D6)."""
        observer = RecordingObserver()
        rate_strategy = ExponentialBackoffStrategy(
            initial_cooldown=0.0, max_cooldown=0.002, slow_start_items=0
        )
        batch, _, _ = await _run(
            ScriptedStrategy([RateLimitError(retry_after=120.0)]),
            observers=[observer],
            rate_limit_strategy=rate_strategy,
        )
        assert batch.succeeded == 1
        assert observer.of(ProcessingEvent.COOLDOWN_STARTED)[0]["duration"] == 0.002

    async def test_without_hint_the_formula_grows(self) -> None:
        """Without a hint consecutive cooldowns follow the strategy's growing formula."""
        observer = RecordingObserver()
        rate_strategy = ExponentialBackoffStrategy(
            initial_cooldown=0.001, backoff_multiplier=2.0, max_cooldown=1.0, slow_start_items=0
        )
        batch, _, processor = await _run(
            ScriptedStrategy([RateLimitError(), RateLimitError()]),
            observers=[observer],
            rate_limit_strategy=rate_strategy,
        )
        assert batch.succeeded == 1
        started = observer.of(ProcessingEvent.COOLDOWN_STARTED)
        assert [(d["duration"], d["consecutive"]) for d in started] == [(0.001, 1), (0.002, 2)]
        assert processor._consecutive_rate_limits == 0

    async def test_success_resets_the_consecutive_count(self) -> None:
        """A successful attempt between two 429s makes the next cooldown start over."""
        observer = RecordingObserver()
        rate_strategy = ExponentialBackoffStrategy(
            initial_cooldown=0.001, backoff_multiplier=2.0, max_cooldown=1.0, slow_start_items=0
        )
        # One worker: item 0 gets a 429 then succeeds, item 1 gets a 429 then succeeds.
        strategy = ScriptedStrategy([RateLimitError(), "a", RateLimitError(), "b"])
        batch, _, _ = await _run(
            strategy, count=2, observers=[observer], rate_limit_strategy=rate_strategy
        )
        assert batch.succeeded == 2
        started = observer.of(ProcessingEvent.COOLDOWN_STARTED)
        assert [(d["duration"], d["consecutive"]) for d in started] == [(0.001, 1), (0.001, 1)]


class _RampStrategy(RateLimitStrategy):
    """Cooldown 7 s, then delays 0.5, 0.4, 0.3 for three items; records every question."""

    delays = (0.5, 0.4, 0.3)

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        return 7.0

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        self.asked.append(items_since_resume)
        if items_since_resume < len(self.delays):
            return (True, self.delays[items_since_resume])
        return (False, 0.0)


class TestSlowStart:
    async def test_ramp_applies_the_delays_then_ends(self) -> None:
        """After a cooldown the next items wait the strategy's delays until it says stop."""
        ramp = _RampStrategy()
        processor = Processor(config=fast_config(max_workers=1), rate_limit_strategy=ramp)
        sleeps = SleepRecorder()
        processor._coordinator._sleep = sleeps
        strategy = ScriptedStrategy([RateLimitError()])
        async with processor:
            batch = await run_batch(processor, items_for(strategy, 7))
        assert batch.succeeded == 7
        assert sleeps.delays == [7.0, 0.5, 0.4, 0.3]
        # Items 1-3 are delayed, item 4 ends the ramp, items 5-6 are not asked about.
        assert ramp.asked == [0, 1, 2, 3]
        assert processor._slow_start_active is False
        assert processor._items_since_resume == 0

    async def test_no_slow_start_before_any_rate_limit(self) -> None:
        """Without a rate limit the strategy is never asked about slow start."""
        ramp = _RampStrategy()
        processor = Processor(config=fast_config(max_workers=2), rate_limit_strategy=ramp)
        async with processor:
            batch = await run_batch(processor, items_for(ScriptedStrategy(), 5))
        assert batch.succeeded == 5
        assert ramp.asked == []


class _ControlledSleep:
    """An injectable sleep that records its argument and blocks until released."""

    def __init__(self, *, released: bool = False) -> None:
        self.calls: list[float] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        if released:
            self.release.set()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.entered.set()
        await self.release.wait()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Events:
    def __init__(self) -> None:
        self.events: list[tuple[ProcessingEvent, dict[str, Any]]] = []

    def __call__(self, event: ProcessingEvent, payload: dict[str, Any]) -> None:
        self.events.append((event, dict(payload)))


def _coordinator(
    strategy: RateLimitStrategy, sleep: _ControlledSleep
) -> tuple[RateLimitCoordinator, _Events, _Clock]:
    events = _Events()
    clock = _Clock()
    coordinator = RateLimitCoordinator(
        strategy, publish=events, has_listeners=lambda: True, sleep=sleep, clock=clock
    )
    return coordinator, events, clock


class TestRateLimitCoordinator:
    async def test_leader_sleeps_and_followers_wait(self) -> None:
        """The first reporter leads the cooldown; a concurrent reporter only waits for it."""
        strategy = _FixedCooldown(seconds=12.0)
        sleep = _ControlledSleep()
        coordinator, events, clock = _coordinator(strategy, sleep)
        leader = asyncio.create_task(coordinator.handle_rate_limit(0))
        await sleep.entered.wait()
        assert coordinator.in_cooldown is True
        assert not coordinator.resume_event.is_set()
        assert coordinator.gate_open is False
        assert coordinator.generation == 1
        follower = asyncio.create_task(coordinator.handle_rate_limit(1))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not follower.done()
        clock.now += 12.5
        sleep.release.set()
        await asyncio.gather(leader, follower)
        assert strategy.calls == [(0, 1)]
        assert sleep.calls == [12.0]
        assert events.events == [
            (
                ProcessingEvent.COOLDOWN_STARTED,
                {"worker_id": 0, "duration": 12.0, "consecutive": 1},
            ),
            (ProcessingEvent.COOLDOWN_ENDED, {"duration": 12.5}),
        ]
        assert coordinator.in_cooldown is False
        assert coordinator.resume_event.is_set()
        assert coordinator.completed_generation == 1

    async def test_older_generation_is_a_follower(self) -> None:
        """A 429 from an attempt started before the latest cooldown starts no new one."""
        strategy = _FixedCooldown(seconds=1.0)
        sleep = _ControlledSleep(released=True)
        coordinator, events, _ = _coordinator(strategy, sleep)
        await coordinator.handle_rate_limit(0, observed_generation=0)
        await coordinator.handle_rate_limit(1, observed_generation=0)
        assert coordinator.generation == 1
        assert strategy.calls == [(0, 1)]
        assert len(events.events) == 2

    async def test_current_generation_starts_a_new_cooldown(self) -> None:
        """A 429 observed in the current generation after its cooldown leads a longer one."""
        strategy = _FixedCooldown(seconds=1.0)
        sleep = _ControlledSleep(released=True)
        coordinator, _, _ = _coordinator(strategy, sleep)
        await coordinator.handle_rate_limit(0, observed_generation=0)
        await coordinator.handle_rate_limit(2, observed_generation=1)
        assert coordinator.generation == 2
        assert strategy.calls == [(0, 1), (2, 2)]
        coordinator.record_success()
        await coordinator.handle_rate_limit(3)
        assert strategy.calls[-1] == (3, 1)

    async def test_cancelled_leader_reopens_the_gate(self) -> None:
        """Cancelling the leader mid-cooldown resumes workers and releases followers."""
        sleep = _ControlledSleep()
        coordinator, _, _ = _coordinator(_FixedCooldown(seconds=60.0), sleep)
        leader = asyncio.create_task(coordinator.handle_rate_limit(0))
        await sleep.entered.wait()
        follower = asyncio.create_task(coordinator.handle_rate_limit(1))
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        await follower
        assert coordinator.resume_event.is_set()
        assert coordinator.in_cooldown is False
        assert coordinator.completed_generation == coordinator.generation == 1

    async def test_failing_strategy_means_no_cooldown(self) -> None:
        """A strategy that raises gives a 0 s cooldown and COOLDOWN_ENDED carries the error."""

        class Broken(_FixedCooldown):
            async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
                raise RuntimeError("strategy exploded")

        sleep = _ControlledSleep()
        coordinator, events, _ = _coordinator(Broken(), sleep)
        await coordinator.handle_rate_limit(0)
        assert sleep.calls == []
        assert coordinator.resume_event.is_set()
        assert coordinator.in_cooldown is False
        started, ended = events.events
        assert started == (
            ProcessingEvent.COOLDOWN_STARTED,
            {"worker_id": 0, "duration": 0.0, "consecutive": 1},
        )
        assert ended[0] is ProcessingEvent.COOLDOWN_ENDED
        assert ended[1]["error"] == "strategy exploded"

    async def test_failing_sleep_still_reopens_the_gate(self) -> None:
        """An error from the sleep ends the cooldown early and is reported."""

        async def broken_sleep(seconds: float) -> None:
            raise OSError("clock gone")

        events = _Events()
        coordinator = RateLimitCoordinator(
            _FixedCooldown(seconds=5.0),
            publish=events,
            has_listeners=lambda: True,
            sleep=broken_sleep,
        )
        await coordinator.handle_rate_limit(0)
        assert coordinator.resume_event.is_set()
        assert events.events[-1][1]["error"] == "clock gone"

    async def test_retry_after_replaces_and_is_clipped(self) -> None:
        """retry_after sets the cooldown, clipped to [0, max_cooldown]; the strategy is unused."""
        strategy = ExponentialBackoffStrategy(initial_cooldown=50.0, max_cooldown=30.0)
        sleep = _ControlledSleep(released=True)
        coordinator, events, _ = _coordinator(strategy, sleep)
        await coordinator.handle_rate_limit(0, retry_after=1000.0)
        await coordinator.handle_rate_limit(0, retry_after=2.5)
        await coordinator.handle_rate_limit(0, retry_after=-3.0)
        assert sleep.calls == [30.0, 2.5]
        durations = [
            d["duration"] for e, d in events.events if e is ProcessingEvent.COOLDOWN_STARTED
        ]
        assert durations == [30.0, 2.5, 0.0]

    async def test_retry_after_without_max_cooldown_uses_the_default_cap(self) -> None:
        """A strategy without max_cooldown caps hints at DEFAULT_MAX_COOLDOWN."""
        sleep = _ControlledSleep(released=True)
        coordinator, _, _ = _coordinator(_FixedCooldown(), sleep)
        await coordinator.handle_rate_limit(0, retry_after=DEFAULT_MAX_COOLDOWN * 10)
        assert sleep.calls == [DEFAULT_MAX_COOLDOWN]

    async def test_no_events_without_listeners(self) -> None:
        """With has_listeners false nothing is emitted."""
        events = _Events()
        coordinator = RateLimitCoordinator(
            _FixedCooldown(), publish=events, sleep=_ControlledSleep(released=True)
        )
        await coordinator.handle_rate_limit(0)
        assert events.events == []
        assert coordinator.generation == 1

    async def test_gate_runs_the_slow_start_ramp(self) -> None:
        """wait_turn() sleeps each ramp delay, then the gate opens for good."""
        ramp = _RampStrategy()
        sleep = _ControlledSleep(released=True)
        coordinator, _, _ = _coordinator(ramp, sleep)
        assert coordinator.gate_open is True
        await coordinator.handle_rate_limit(0)
        assert coordinator.gate_open is False
        for _ in range(4):
            await coordinator.wait_turn()
        assert sleep.calls == [7.0, 0.5, 0.4, 0.3]
        assert coordinator.gate_open is True
        assert coordinator.slow_start_delay() == 0.0
        assert ramp.asked == [0, 1, 2, 3]
