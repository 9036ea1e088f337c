"""The proactive limiter (max_requests_per_minute): one acquire per attempt, and it paces."""

from __future__ import annotations

from typing import Any

from aiolimiter import AsyncLimiter

from async_batch_llm import ParallelBatchProcessor, RateLimitConfig, RetryConfig
from support import (
    EchoStrategy,
    RateLimitError,
    ScriptedStrategy,
    TransientError,
    fast_config,
    items_for,
    run_batch,
)

Processor = ParallelBatchProcessor[str, Any, Any]


class CountingLimiter(AsyncLimiter):
    """An AsyncLimiter that counts acquisitions and those that found no free capacity."""

    def __init__(self, max_rate: float, time_period: float = 60) -> None:
        super().__init__(max_rate, time_period)
        self.acquired = 0
        self.had_to_wait = 0

    async def acquire(self, amount: float = 1) -> None:
        if not self.has_capacity(amount):
            self.had_to_wait += 1
        await super().acquire(amount)
        self.acquired += 1


def _config(**overrides: Any) -> Any:
    overrides.setdefault("max_workers", 2)
    overrides.setdefault("max_requests_per_minute", 6000.0)
    overrides.setdefault(
        "rate_limit",
        RateLimitConfig(
            cooldown_seconds=0.0,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )
    return fast_config(**overrides)


async def _run(
    strategy: Any, count: int, limiter: CountingLimiter, **config: Any
) -> tuple[Any, Processor]:
    processor = Processor(config=_config(**config))
    processor._proactive_rate_limiter = limiter
    async with processor:
        batch = await run_batch(processor, items_for(strategy, count))
    return batch, processor


class TestConstruction:
    def test_limiter_built_from_config(self) -> None:
        """max_requests_per_minute gives an AsyncLimiter of that rate over 60 seconds."""
        processor = Processor(config=_config(max_requests_per_minute=120.0))
        limiter = processor._proactive_rate_limiter
        assert isinstance(limiter, AsyncLimiter)
        assert limiter.max_rate == 120.0
        assert limiter.time_period == 60

    def test_no_limiter_by_default(self) -> None:
        """Without max_requests_per_minute there is no limiter."""
        processor = Processor(config=fast_config())
        assert processor._proactive_rate_limiter is None


class TestAcquirePerAttempt:
    async def test_replacing_the_limiter_takes_effect(self) -> None:
        """A limiter assigned to _proactive_rate_limiter is the one the attempts use."""
        limiter = CountingLimiter(1000)
        _, processor = await _run(EchoStrategy(), 1, limiter)
        assert processor._proactive_rate_limiter is limiter
        assert limiter.acquired == 1

    async def test_once_per_item_without_retries(self) -> None:
        """Each successful single-attempt item acquires the limiter once."""
        limiter = CountingLimiter(1000)
        batch, _ = await _run(EchoStrategy(), 7, limiter)
        assert batch.succeeded == 7
        assert limiter.acquired == 7

    async def test_once_per_attempt_with_retries(self) -> None:
        """Retried and rate-limited attempts each acquire the limiter again."""
        limiter = CountingLimiter(1000)
        strategy = ScriptedStrategy([TransientError("a"), RateLimitError(), TransientError("b")])
        config = RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False)
        batch, _ = await _run(strategy, 2, limiter, retry=config, max_workers=1)
        assert batch.succeeded == 2
        assert len(strategy.attempts) == 5
        assert limiter.acquired == 5

    async def test_once_per_dry_run_attempt(self) -> None:
        """Dry-run attempts acquire the limiter too."""
        limiter = CountingLimiter(1000)
        strategy = EchoStrategy()
        batch, _ = await _run(strategy, 4, limiter, dry_run=True)
        assert batch.succeeded == 4
        assert strategy.calls == []
        assert limiter.acquired == 4

    async def test_permanent_failure_acquires_once(self) -> None:
        """A permanent failure costs its one acquire and no more."""
        limiter = CountingLimiter(1000)
        batch, _ = await _run(ScriptedStrategy([ValueError("bad")]), 3, limiter)
        assert batch.failed == 1
        assert limiter.acquired == 3


class TestPacing:
    async def test_small_capacity_makes_attempts_wait(self) -> None:
        """With capacity 1 per short period, later attempts wait for the bucket to drain."""
        limiter = CountingLimiter(max_rate=1, time_period=0.01)
        batch, _ = await _run(EchoStrategy(), 3, limiter, max_workers=3)
        assert batch.succeeded == 3
        assert limiter.acquired == 3
        assert limiter.had_to_wait >= 1

    async def test_initial_capacity_equals_max_rate(self) -> None:
        """A batch no larger than max_rate runs without waiting on the limiter."""
        limiter = CountingLimiter(max_rate=5, time_period=60)
        batch, _ = await _run(EchoStrategy(), 5, limiter, max_workers=5)
        assert batch.succeeded == 5
        assert limiter.acquired == 5
        assert limiter.had_to_wait == 0
