"""Quick start: 1,000 prompts through ParallelBatchProcessor, offline, no API key.

The "model" is :class:`async_batch_llm.testing.MockAgent`: a few milliseconds of latency
per call, about 5% transient failures and one ``429 RESOURCE_EXHAUSTED`` rate-limit error.
The processor retries the failures, pauses every worker once for the rate limit, ramps back
up, and counts tokens; the summary at the end shows what happened.

To call a real model, replace the body of ``MockAgentStrategy.execute`` with your SDK call.

Run it with ``./scripts/demo`` or ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import Any

from async_batch_llm import (
    BaseObserver,
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing import MockAgent, MockResult

ITEMS = 1_000
WORKERS = 50


# --8<-- [start:strategy]
class MockAgentStrategy(LLMCallStrategy[str]):
    """Makes one call per attempt and reports the call's token usage."""

    def __init__(self, agent: MockAgent[str]) -> None:
        self.agent = agent

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        # Errors raised here are classified by the processor: retried, cooled down, or final.
        result = await self.agent.run(prompt)
        usage = result.usage()
        tokens: TokenUsage = {
            "input_tokens": usage.request_tokens,
            "output_tokens": usage.response_tokens,
            "total_tokens": usage.total_tokens,
        }
        return result.output, tokens


# --8<-- [end:strategy]


class JitteryMockAgent(MockAgent[str]):
    """A MockAgent whose latency varies from call to call, like a real network."""

    async def run(self, prompt: str, **kwargs: Any) -> MockResult[str]:
        self.latency = random.uniform(0.002, 0.008)
        return await super().run(prompt, **kwargs)


class CooldownCounter(BaseObserver):
    """Counts the shared cooldowns (one per burst of rate limits, not one per 429)."""

    def __init__(self) -> None:
        self.cooldowns = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.COOLDOWN_STARTED:
            self.cooldowns += 1


async def show_progress(completed: int, total: int, current_item: str) -> None:
    """Draw a progress bar (called every ``progress_interval`` results, never blocking)."""
    width = 30
    filled = width * completed // total
    bar = "#" * filled + "-" * (width - filled)
    if sys.stdout.isatty():  # redraw one line in a terminal, one line per update in a log
        print(f"\r  [{bar}] {completed:>5}/{total}", end="", flush=True)
    else:
        print(f"  [{bar}] {completed:>5}/{total}", flush=True)


# --8<-- [start:config]
config = ProcessorConfig(
    max_workers=WORKERS,
    timeout_per_item=10.0,  # seconds per attempt
    # Transient errors: up to 3 attempts per item, with short exponential waits.
    retry=RetryConfig(max_attempts=3, initial_wait=0.01, max_wait=0.05),
    # A 429 pauses all workers once, then the next 20 items start with a shrinking delay.
    rate_limit=RateLimitConfig(
        cooldown_seconds=0.5,
        slow_start_items=20,
        slow_start_initial_delay=0.05,
        slow_start_final_delay=0.005,
    ),
    progress_interval=100,
)
# --8<-- [end:config]


async def main() -> None:
    random.seed(2024)  # the same failures on every run
    agent = JitteryMockAgent(
        failure_rate=0.05,  # ~5% of calls raise "Random failure on call <n>" (retryable)
        rate_limit_on_call=200,  # call #200 raises "429 RESOURCE_EXHAUSTED" (rate limit)
        tokens_per_call={"input_tokens": 12, "output_tokens": 40},
    )
    strategy = MockAgentStrategy(agent)
    metrics = MetricsObserver()
    cooldowns = CooldownCounter()

    print(f"Processing {ITEMS:,} prompts with {WORKERS} workers (simulated model, offline)")
    started = time.perf_counter()
    # --8<-- [start:run]
    async with ParallelBatchProcessor[str, str, None](
        config=config,
        observers=[metrics, cooldowns],
        progress_callback=show_progress,
    ) as processor:
        for i in range(ITEMS):
            prompt = f"Summarise document {i} in one sentence."
            await processor.add_work(
                LLMWorkItem(item_id=f"doc-{i}", strategy=strategy, prompt=prompt)
            )
        result = await processor.process_all()
        stats = await processor.get_stats()
    # --8<-- [end:run]
    wall_time = time.perf_counter() - started
    if sys.stdout.isatty():
        print()

    snapshot = await metrics.get_metrics()
    retries = agent.call_count - result.total_items
    rows = [
        ("items", f"{result.total_items:,}"),
        ("succeeded", f"{result.succeeded:,}"),
        ("failed", f"{result.failed:,}"),
        ("retries", f"{retries:,}  (attempts beyond each item's first)"),
        ("rate-limit hits", f"{stats['rate_limit_count']:,}"),
        ("cooldowns", f"{cooldowns.cooldowns:,}  ({snapshot['total_cooldown_time']:.2f}s paused)"),
        ("tokens in / out", f"{result.total_input_tokens:,} / {result.total_output_tokens:,}"),
        ("throughput", f"{result.total_items / wall_time:,.0f} items/s"),
        ("wall time", f"{wall_time:.2f}s"),
    ]
    print("\nSummary")
    for label, value in rows:
        print(f"  {label:<16} {value}")
    for failure in [r for r in result.results if not r.success][:5]:
        print(f"  failed: {failure.item_id} ({failure.error})")


if __name__ == "__main__":
    # The library logs each retry and cooldown (WARNING) and each final failure (ERROR) on
    # the "async_batch_llm" loggers; this demo reports them in its summary instead.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main())
