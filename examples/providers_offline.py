"""Gemini and pydantic-ai batches run offline, against the bundled provider simulator.

`ProviderSimulator` is a local HTTP server that answers like the Gemini, OpenAI and
Anthropic APIs, so the real SDK clients work against it unmodified. Here it allows 20
requests per "minute" compressed to one second, and fails 5 % of requests with a 500 or
503. Each batch of 40 prompts therefore meets server errors (retried after a short
backoff) and rate limits (one shared cooldown as long as the server's retry hint), and
still finishes every item, in a few seconds and without a network connection.

The same strategies talk to the real providers when the clients are built without a
``base_url`` (and with real API keys).

Run it with ``python examples/providers_offline.py`` (needs the ``all`` extra).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BaseObserver,
    BatchResult,
    GeminiErrorClassifier,
    GeminiModel,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.models import gemini_client
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

PROMPTS = [f"Review #{i}: the product arrived {'late' if i % 3 else 'on time'}." for i in range(40)]


# --8<-- [start:config]
config = ProcessorConfig(
    max_workers=8,
    timeout_per_item=30.0,
    retry=RetryConfig(max_attempts=5, initial_wait=0.05, max_wait=0.2),
    rate_limit=RateLimitConfig(
        cooldown_seconds=30.0,  # used only when a 429 carries no retry hint
        slow_start_items=4,
        slow_start_initial_delay=0.05,
        slow_start_final_delay=0.01,
        max_rate_limit_retries=50,
    ),
)
# --8<-- [end:config]


# --8<-- [start:gemini]
def text_of(response: LLMResponse) -> str:
    return response.text


async def gemini_batch(base_url: str) -> BatchResult[str, None]:
    # gemini_client() builds a google.genai.Client on httpx2 with the SDK's retries off;
    # without base_url it talks to Google, with the key from GOOGLE_API_KEY if none is given.
    client = gemini_client("offline-key", base_url=base_url)
    try:
        model = GeminiModel(
            "gemini-2.5-flash", client, system_instruction="Summarise the review in one line."
        )
        return await run_batch(GeminiStrategy(model, text_of))
    finally:
        await client.aio.aclose()


# --8<-- [end:gemini]


# --8<-- [start:pydantic_ai]
class Sentiment(BaseModel):
    label: str
    confidence: float


async def openai_batch(base_url: str) -> BatchResult[Sentiment, None]:
    provider = OpenAIProvider(base_url=base_url, api_key="offline-key")
    agent = Agent(OpenAIChatModel("gpt-4o-mini", provider=provider), output_type=Sentiment)
    # Entering the agent keeps its HTTP client open for the batch and closes it afterwards.
    async with agent:
        return await run_batch(PydanticAIStrategy(agent))


# --8<-- [end:pydantic_ai]


class CooldownLog(BaseObserver):
    """Collects the length of every shared cooldown."""

    def __init__(self) -> None:
        self.cooldowns: list[float] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.COOLDOWN_STARTED:
            self.cooldowns.append(data["duration"])


async def run_batch(strategy: LLMCallStrategy[Any]) -> BatchResult[Any, None]:
    log = CooldownLog()
    started = time.perf_counter()
    async with ParallelBatchProcessor[str, Any, None](
        config=config, error_classifier=GeminiErrorClassifier(), observers=[log]
    ) as processor:
        for i, prompt in enumerate(PROMPTS):
            await processor.add_work(LLMWorkItem(item_id=f"r{i}", strategy=strategy, prompt=prompt))
        result = await processor.process_all()
    elapsed = time.perf_counter() - started
    print(f"  {result.succeeded} of {len(PROMPTS)} items in {elapsed:.2f}s")
    if log.cooldowns:
        print(
            f"  {len(log.cooldowns)} cooldowns of {min(log.cooldowns):.3f}-"
            f"{max(log.cooldowns):.3f}s, each as long as the server's retry hint"
        )
    print(f"  tokens in/out: {result.total_input_tokens}/{result.total_output_tokens}")
    return result


async def main() -> None:
    # --8<-- [start:simulator]
    simulator_config = SimulatorConfig(rpm=20, window_seconds=1.0, error_rate=0.05, seed=7)
    async with ProviderSimulator(simulator_config) as sim:
        print(f"simulator listening on {sim.base_url}")
        print("GeminiStrategy (google-genai):")
        gemini = await gemini_batch(sim.gemini_base_url)
        print("PydanticAIStrategy (pydantic-ai, OpenAI model):")
        openai = await openai_batch(sim.openai_base_url)
        stats = sim.stats
    # --8<-- [end:simulator]

    print(f"first Gemini reply: {gemini.results[0].output!r}")
    print(f"first OpenAI reply: {openai.results[0].output!r}")
    print(
        f"simulator served {stats.requests_total} requests: {stats.successes} answered, "
        f"{stats.rate_limited} rate limited, {stats.injected_errors} injected 5xx"
    )
    succeeded = gemini.succeeded + openai.succeeded
    failed = gemini.failed + openai.failed
    print(f"{succeeded} succeeded, {failed} failed")


if __name__ == "__main__":
    # Retries and cooldowns are logged as WARNING; this example prints its own summary.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main())
