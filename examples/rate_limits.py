"""Rate limits: one shared cooldown per burst of 429s, sized by the server's retry hint.

A fake provider answers a burst of calls with ``429 Too Many Requests`` and a
``retry-after: 0.3`` header. Every worker that was in flight gets a 429, yet the processor
pauses only once, for the 0.3 s the server asked for (not the configured 30 s), and then
lets items through slowly before going back to full speed. Rate-limited attempts do not
use up ``RetryConfig.max_attempts``; ``RateLimitConfig.max_rate_limit_retries`` bounds
them instead, so the one prompt that is always refused fails after two retries.

Expect 13 429s and 4 cooldowns: one for the burst of ten, and one for each of the three
refusals of the last prompt (a lone 429 after a cooldown has ended starts a new one).

Run it with ``python examples/rate_limits.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from async_batch_llm import (
    BaseObserver,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)


class TooManyRequests(Exception):
    """What an HTTP SDK raises for a 429: the status in the message, the headers attached."""

    def __init__(self, retry_after: str) -> None:
        super().__init__("429 Too Many Requests")
        self.headers = {"retry-after": retry_after}


class FakeProvider:
    """Refuses calls 11-20 (a burst of concurrent 429s) and every "always refused" prompt."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, prompt: str) -> str:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.01)
        if 11 <= call <= 20 or prompt == "always refused":
            raise TooManyRequests(retry_after="0.3")
        return prompt[::-1]


class ProviderStrategy(LLMCallStrategy[str]):
    """One provider call per attempt."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return await self.provider.complete(prompt), {"input_tokens": 3, "output_tokens": 3}


class CooldownLog(BaseObserver):
    """Record the length of every cooldown and count the 429s."""

    def __init__(self) -> None:
        self.cooldowns: list[float] = []
        self.rate_limit_hits = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.COOLDOWN_STARTED:
            self.cooldowns.append(data["duration"])
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            self.rate_limit_hits += 1


# --8<-- [start:config]
config = ProcessorConfig(
    max_workers=10,
    retry=RetryConfig(max_attempts=2, initial_wait=0.01),
    rate_limit=RateLimitConfig(
        cooldown_seconds=30.0,  # used only when the error carries no retry hint
        slow_start_items=10,  # after a cooldown, delay the next 10 items ...
        slow_start_initial_delay=0.05,  # ... by 0.05 s at first ...
        slow_start_final_delay=0.01,  # ... shrinking to 0.01 s
        max_rate_limit_retries=2,  # an item may be rate limited 3 times; the 3rd fails it
    ),
)
# --8<-- [end:config]


async def main() -> None:
    provider = FakeProvider()
    strategy = ProviderStrategy(provider)
    log = CooldownLog()
    prompts = [f"prompt {i}" for i in range(60)] + ["always refused"]
    started = time.perf_counter()
    async with ParallelBatchProcessor[str, str, None](config=config, observers=[log]) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=f"r{i}", strategy=strategy, prompt=prompt))
        result = await processor.process_all()
    elapsed = time.perf_counter() - started

    failures = [r.error for r in result.results if not r.success]
    print(f"429s received:  {log.rate_limit_hits}")
    print(f"cooldowns:      {len(log.cooldowns)} of {log.cooldowns} seconds")
    print(f"provider calls: {provider.calls} for {len(prompts)} prompts")
    print(f"failures:       {failures}")
    print(f"wall time:      {elapsed:.2f}s")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    # Cooldowns are logged as WARNING; this example prints its own summary.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main())
