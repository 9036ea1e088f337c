"""Whole batches against a provider with a real per-minute limit, in virtual time.

The provider is a continuously refilling request bucket (as OpenAI's and Anthropic's limits
are) that answers a call over its limit with a 429 at once, with or without a retry hint.
The batches use the processor's defaults, as a user who configured nothing gets them, and
run in virtual time (`virtual_time`): two minutes of provider-imposed waiting take a few
hundred milliseconds, and every run sees the same times.

The numbers asserted are the promises of docs/guides/rate-control.md: every item succeeds,
the batch takes at most 1.25x the ideal time with a retry hint and fewer than 5% of the
attempts rejected, at most 1.5x without any hint or header, even when the very first call
is rejected; and the learned pace never collapses.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy
from virtual_time import run_virtual

USAGE: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


class ProviderRateLimited(Exception):
    """The provider's 429 (classified as a rate limit by its message)."""

    def __init__(self, retry_after: float | None, headers: dict[str, str] | None) -> None:
        super().__init__("429 Too Many Requests")
        if retry_after is not None:
            self.retry_after = retry_after
        if headers is not None:
            self.response = SimpleNamespace(headers=headers)


@dataclass
class Provider:
    """A per-window request bucket that starts full (or empty) and refills continuously."""

    limit: float
    window: float = 60.0
    send_hint: bool = True
    send_headers: bool = False
    reject_first: bool = False
    start_empty: bool = False
    latency: tuple[float, float] = (0.1, 0.8)
    seed: int = 1
    level: float = field(init=False)
    updated: float = 0.0
    served: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        self.level = 0.0 if self.start_empty else self.limit
        self.random = random.Random(self.seed)

    @property
    def rate(self) -> float:
        return self.limit / self.window

    async def call(self) -> None:
        now = asyncio.get_running_loop().time()
        self.level = min(self.limit, self.level + (now - self.updated) * self.rate)
        self.updated = now
        first = self.served + self.rejected == 0
        if self.level >= 1 and not (first and self.reject_first):
            self.level -= 1
            self.served += 1
            await asyncio.sleep(self.random.uniform(*self.latency))
            return
        self.rejected += 1
        await asyncio.sleep(0.005)
        hint = max(0.0, (1 - self.level) / self.rate) if self.send_hint else None
        headers = None
        if self.send_headers:
            reset = (self.limit - self.level) / self.rate
            headers = {
                "x-ratelimit-limit-requests": str(int(self.limit)),
                "x-ratelimit-remaining-requests": str(max(0, int(self.level))),
                "x-ratelimit-reset-requests": f"{reset:.3f}s",
            }
        raise ProviderRateLimited(hint, headers)

    def ideal_seconds(self, items: int) -> float:
        """The fastest the provider allows `items` calls (plus one mean call)."""
        budget = 0.0 if self.start_empty or self.reject_first else self.limit
        mean_latency = sum(self.latency) / 2
        return max(0.0, items - budget) / self.rate + mean_latency


class ProviderStrategy(LLMCallStrategy[str]):
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        await self.provider.call()
        return prompt, dict(USAGE)  # type: ignore[return-value]


@dataclass
class Outcome:
    seconds: float
    succeeded: int
    failed: int
    rejected_fraction: float
    learned_rpm: list[float]


async def run_batch(
    provider: Provider,
    *,
    items: int = 600,
    workers: int = 20,
    config: ProcessorConfig | None = None,
    strategy: Any = None,
) -> Outcome:
    loop = asyncio.get_running_loop()
    config = config or ProcessorConfig(max_workers=workers)
    call = ProviderStrategy(provider)
    processor = ParallelBatchProcessor[str, str, None](config=config, rate_limit_strategy=strategy)
    learned: list[float] = []

    async def sample() -> None:
        adaptive = processor.rate_limit_strategy
        while isinstance(adaptive, AdaptiveRateLimitStrategy):
            for snapshot in adaptive.snapshot():
                if snapshot.requests_per_minute is not None:
                    learned.append(snapshot.requests_per_minute)
            await asyncio.sleep(1.0)

    sampler = asyncio.ensure_future(sample())
    start = loop.time()
    async with processor:
        for i in range(items):
            await processor.add_work(LLMWorkItem(item_id=f"i{i}", strategy=call, prompt="p"))
        result = await processor.process_all()
    elapsed = loop.time() - start
    sampler.cancel()
    attempts = provider.served + provider.rejected
    return Outcome(elapsed, result.succeeded, result.failed, provider.rejected / attempts, learned)


class TestDefaultsAgainstAPerMinuteLimit:
    def test_with_a_retry_hint(self) -> None:
        """300/min, 429s with Retry-After, nothing configured: 600/600 within 1.25x of the
        ideal time, fewer than 5% of the attempts rejected."""
        provider = Provider(300)
        outcome = run_virtual(run_batch(provider))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.25 * provider.ideal_seconds(600)
        assert outcome.rejected_fraction < 0.05

    def test_with_headers_on_the_429s(self) -> None:
        """The same with rate-limit headers on the 429s: as fast, as few rejections."""
        provider = Provider(300, send_headers=True)
        outcome = run_virtual(run_batch(provider))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.25 * provider.ideal_seconds(600)
        assert outcome.rejected_fraction < 0.05

    def test_without_any_hint_or_header(self) -> None:
        """No Retry-After, no headers: 600/600 within 1.5x of the ideal time."""
        provider = Provider(300, send_hint=False)
        outcome = run_virtual(run_batch(provider))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.5 * provider.ideal_seconds(600)

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_first_call_rejected_without_hints_never_collapses(self, seed: int) -> None:
        """The very first call is rejected, with no hint and no header: 600/600 within 1.5x,
        and the learned limit never drops near zero (it stays above what the provider
        demonstrably let through: here, its 300/min)."""
        provider = Provider(300, send_hint=False, reject_first=True, seed=seed)
        outcome = run_virtual(run_batch(provider))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.5 * provider.ideal_seconds(600)
        assert outcome.learned_rpm
        assert min(outcome.learned_rpm) >= 0.5 * 300

    def test_a_key_already_used_up_by_someone_else(self) -> None:
        """The bucket starts empty: no item fails, and the batch still takes at most 1.5x."""
        provider = Provider(300, send_hint=False, start_empty=True)
        outcome = run_virtual(run_batch(provider))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.5 * provider.ideal_seconds(600)

    @pytest.mark.parametrize("window", [6.0, 600.0])
    def test_windows_other_than_a_minute(self, window: float) -> None:
        """A provider counting 300 per 6 s or per 10 min (the default assumes a minute):
        learning finds the real pace; no item fails."""
        provider = Provider(300, window=window, send_hint=False)
        outcome = run_virtual(run_batch(provider, workers=100))
        assert (outcome.succeeded, outcome.failed) == (600, 0)
        assert outcome.seconds <= 1.5 * provider.ideal_seconds(600)


class TestTheCooldownOf072:
    def test_no_item_fails_while_the_provider_makes_progress(self) -> None:
        """With the 0.7.2 shared cooldown configured, items fail only when the provider lets
        nothing through: here it serves 5/s throughout, so all 600 succeed."""
        provider = Provider(300)
        config = ProcessorConfig(
            max_workers=20,
            rate_limit=RateLimitConfig(
                cooldown_seconds=1.0, slow_start_items=5, slow_start_initial_delay=0.2
            ),
        )
        outcome = run_virtual(run_batch(provider, config=config))
        assert (outcome.succeeded, outcome.failed) == (600, 0)

    def test_items_fail_when_nothing_gets_through(self) -> None:
        """A provider that rejects every call: after max_rate_limit_retries cooldowns
        without a success, the items fail with the rate-limit error instead of looping."""
        provider = Provider(0.001, start_empty=True)
        config = ProcessorConfig(
            max_workers=4,
            rate_limit=RateLimitConfig(
                cooldown_seconds=1.0, slow_start_items=0, max_rate_limit_retries=3
            ),
        )
        outcome = run_virtual(run_batch(provider, items=8, config=config))
        assert (outcome.succeeded, outcome.failed) == (0, 8)


class TestAdaptiveWithoutProgress:
    def test_items_fail_when_nothing_gets_through(self) -> None:
        """Adaptive control too: after max_rate_limit_retries pauses with no success in the
        scope, the items fail instead of retrying forever."""
        provider = Provider(0.001, start_empty=True, send_hint=False)
        config = ProcessorConfig(
            max_workers=4, rate_limit=RateLimitConfig(max_rate_limit_retries=3)
        )
        outcome = run_virtual(
            run_batch(provider, items=8, config=config, strategy=AdaptiveRateLimitStrategy())
        )
        assert (outcome.succeeded, outcome.failed) == (0, 8)
