"""Test a pipeline against the provider simulator: the real SDK, real HTTP, scripted failures.

``MockAgent`` (see ``testing_with_mocks.py``) replaces the model object. The simulator
replaces only the provider's server, so a test covers everything from your strategy down to
the SDK's HTTP requests, and the processor's handling of real 429 and 5xx responses, with no
network and no API key. Each test starts its own simulator on a free port in a few
milliseconds.

The ``test_*`` functions below are ordinary pytest tests (with pytest-asyncio in auto
mode); running this file calls them one by one without pytest.

Run it with ``python examples/testing_with_simulator.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BatchResult,
    GeminiErrorClassifier,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.testing.simulator import ProviderRequest, ProviderSimulator, SimulatorConfig


# --8<-- [start:pipeline]
# The code under test: classify reviews with a pydantic-ai agent, in one batch.
class Sentiment(BaseModel):
    label: Literal["positive", "negative"]


async def classify_all(
    agent: Agent[None, Sentiment], reviews: list[str], config: ProcessorConfig
) -> BatchResult[Sentiment, None]:
    strategy = PydanticAIStrategy(agent)
    async with ParallelBatchProcessor[str, Sentiment, None](
        config=config, error_classifier=GeminiErrorClassifier()
    ) as processor:
        for i, review in enumerate(reviews):
            await processor.add_work(LLMWorkItem(item_id=str(i), strategy=strategy, prompt=review))
        return await processor.process_all()


# --8<-- [end:pipeline]


# Tiny waits, so that retries and cooldowns take milliseconds.
FAST = ProcessorConfig(
    max_workers=4,
    retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001),
    rate_limit=RateLimitConfig(cooldown_seconds=0.0, slow_start_items=0),
)


@asynccontextmanager
async def simulated_agent(
    config: SimulatorConfig | None = None,
) -> AsyncIterator[tuple[ProviderSimulator, Agent[None, Sentiment]]]:
    """A running simulator, and the agent under test pointed at it."""
    async with ProviderSimulator(config) as sim, httpx2.AsyncClient() as http:
        provider = OpenAIProvider(base_url=sim.openai_base_url, api_key="sk-test", http_client=http)
        model = OpenAIChatModel("gpt-4o-mini", provider=provider)
        yield sim, Agent(model, output_type=Sentiment)


# --8<-- [start:tests]
async def test_structured_output_validates() -> None:
    """By default the simulator answers with JSON valid for the agent's output type."""
    async with simulated_agent() as (_, agent):
        result = await classify_all(agent, ["Great!", "Awful."], FAST)
    assert result.succeeded == 2
    assert all(isinstance(r.output, Sentiment) for r in result.results)


async def test_reply_hook_plays_the_model() -> None:
    """A reply hook decides the answer to each request."""

    def rule(request: ProviderRequest) -> dict[str, str]:
        return {"label": "negative" if "Awful" in request.prompt else "positive"}

    async with simulated_agent() as (sim, agent):
        sim.reply_hook = rule
        result = await classify_all(agent, ["Great!", "Awful."], FAST)
    labels = {r.item_id: r.output.label for r in result.results if r.output}
    assert labels == {"0": "positive", "1": "negative"}


async def test_server_errors_are_retried() -> None:
    """Two 503s in a row cost two retries, not the item."""
    async with simulated_agent() as (sim, agent):
        sim.fail_next(2, status=503)
        result = await classify_all(agent, ["Great!"], FAST)
    assert result.succeeded == 1
    assert sim.stats.by_status[503] == 2


async def test_rate_limit_is_retried_after_the_hint() -> None:
    """A 429 with a retry hint pauses the batch for the hint, then the item succeeds."""
    async with simulated_agent() as (sim, agent):
        sim.fail_next(1, status=429, retry_after=0.01)
        result = await classify_all(agent, ["Great!"], FAST)
    assert result.succeeded == 1
    assert sim.stats.by_status[429] == 1


async def test_exhausted_quota_fails_without_retrying() -> None:
    """Once the key's hard quota is used up, items fail at once instead of cooling down."""
    async with simulated_agent(SimulatorConfig(daily_request_quota=2)) as (sim, agent):
        result = await classify_all(agent, ["a", "b", "c", "d"], FAST)
    assert (result.succeeded, result.failed) == (2, 2)
    assert sim.stats.requests_total == 4  # no retries of the refused requests


# --8<-- [end:tests]


TESTS: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_structured_output_validates,
    test_reply_hook_plays_the_model,
    test_server_errors_are_retried,
    test_rate_limit_is_retried_after_the_hint,
    test_exhausted_quota_fails_without_retrying,
]

if __name__ == "__main__":
    # Retries and final failures are logged; the tests check them instead.
    logging.basicConfig(level=logging.CRITICAL)
    failed = 0
    for test in TESTS:
        try:
            asyncio.run(test())
        except AssertionError as exc:
            failed += 1
            print(f"FAILED {test.__name__}: {exc!r}")
        else:
            print(f"passed {test.__name__}")
    print(f"{len(TESTS) - failed} succeeded, {failed} failed")
    raise SystemExit(1 if failed else 0)
