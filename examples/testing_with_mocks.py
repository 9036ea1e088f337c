"""Test a pipeline built on async-batch-llm without calling a model, using ``MockAgent``.

``MockAgent`` behaves like a pydantic-ai ``Agent``: ``await agent.run(prompt)`` returns a
result with ``.output`` and ``.usage()``. It can be told to answer slowly, to fail at random,
to raise one ``429`` rate-limit error, or to hang on one call until the processor's
per-attempt timeout fires.

The ``test_*`` functions below are ordinary pytest tests (with pytest-asyncio in auto
mode); running this file calls them one by one without pytest.

Run it with ``python examples/testing_with_mocks.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from async_batch_llm import (
    BatchResult,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing import MockAgent


# --8<-- [start:pipeline]
# The code under test: a strategy around any agent with ``run()``, and a batch function.
class AgentStrategy(LLMCallStrategy[Any]):
    """Runs a pydantic-ai style agent once per attempt."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Any, TokenUsage]:
        result = await self.agent.run(prompt)
        usage = result.usage()
        return result.output, {
            "input_tokens": usage.request_tokens,
            "output_tokens": usage.response_tokens,
            "total_tokens": usage.total_tokens,
        }


async def summarise_all(
    agent: Any, prompts: list[str], config: ProcessorConfig
) -> BatchResult[Any, None]:
    strategy = AgentStrategy(agent)
    async with ParallelBatchProcessor[str, Any, None](config=config) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=str(i), strategy=strategy, prompt=prompt))
        result = await processor.process_all()
    return result


# --8<-- [end:pipeline]


# --8<-- [start:tests]
# Tiny waits and no cooldown, so the tests take milliseconds.
FAST = ProcessorConfig(
    max_workers=4,
    timeout_per_item=5.0,
    retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001),
    rate_limit=RateLimitConfig(cooldown_seconds=0.0, slow_start_items=0),
)


async def test_every_prompt_gets_an_answer() -> None:
    """Each prompt's output comes from the agent."""
    agent = MockAgent(response_factory=lambda prompt: f"summary of {prompt}", latency=0.001)
    result = await summarise_all(agent, ["a", "b", "c"], FAST)
    assert result.succeeded == 3
    assert {r.output for r in result.results} == {"summary of a", "summary of b", "summary of c"}


async def test_rate_limited_call_is_retried() -> None:
    """A 429 on the first call is retried after the (zero-length) cooldown."""
    agent: MockAgent[Any] = MockAgent(latency=0.001, rate_limit_on_call=1)
    result = await summarise_all(agent, ["a"], FAST)
    assert result.succeeded == 1
    assert agent.call_count == 2


async def test_hung_call_times_out_and_is_retried() -> None:
    """A call that hangs is cut off by timeout_per_item and tried again."""
    agent: MockAgent[Any] = MockAgent(latency=0.001, timeout_on_call=1)
    result = await summarise_all(agent, ["a"], replace(FAST, timeout_per_item=0.05))
    assert result.succeeded == 1
    assert agent.call_count == 2


async def test_random_failures_are_retried() -> None:
    """With 30% failing calls and 3 attempts, a seeded run still succeeds for every prompt."""
    random.seed(1)
    agent: MockAgent[Any] = MockAgent(latency=0.001, failure_rate=0.3)
    result = await summarise_all(agent, [f"p{i}" for i in range(20)], FAST)
    assert result.succeeded + result.failed == 20
    assert agent.call_count > 20  # some calls failed and were retried


async def test_tokens_are_counted() -> None:
    """Token totals add up the usage the agent reports."""
    agent: MockAgent[Any] = MockAgent(
        latency=0.001, tokens_per_call={"input_tokens": 7, "output_tokens": 3}
    )
    result = await summarise_all(agent, ["a", "b"], FAST)
    assert (result.total_input_tokens, result.total_output_tokens) == (14, 6)


# --8<-- [end:tests]


TESTS: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_every_prompt_gets_an_answer,
    test_rate_limited_call_is_retried,
    test_hung_call_times_out_and_is_retried,
    test_random_failures_are_retried,
    test_tokens_are_counted,
]

if __name__ == "__main__":
    # Retries and cooldowns are logged as WARNING; the tests check them instead.
    logging.basicConfig(level=logging.CRITICAL)
    failed = 0
    for test in TESTS:
        try:
            asyncio.run(test())
        except AssertionError as exc:
            failed += 1
            print(f"FAILED {test.__name__}: {exc}")
        else:
            print(f"passed {test.__name__}")
    print(f"{len(TESTS) - failed} succeeded, {failed} failed")
    raise SystemExit(1 if failed else 0)
