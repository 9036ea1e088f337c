"""mock_strategy: a PydanticAIStrategy around a MockAgent."""

from __future__ import annotations

import typing

import pytest

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    llm_strategies,
    testing,
)
from async_batch_llm.testing import MockAgent, mock_strategy
from async_batch_llm.testing import strategies as testing_strategies


def test_exported_from_testing() -> None:
    """``mock_strategy`` is in ``async_batch_llm.testing.__all__`` and is the defined function."""
    assert "mock_strategy" in testing.__all__
    assert testing.mock_strategy is testing_strategies.mock_strategy


def test_wraps_the_agent() -> None:
    """The result is a PydanticAIStrategy whose agent is the given MockAgent."""
    agent: MockAgent[dict[str, str]] = MockAgent(latency=0.0)
    strategy = mock_strategy(agent)
    assert isinstance(strategy, PydanticAIStrategy)
    assert strategy.agent is agent


def test_requires_pydantic_ai(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like PydanticAIStrategy, it raises ImportError without pydantic-ai."""
    monkeypatch.setattr(llm_strategies, "Agent", typing.Any)
    with pytest.raises(ImportError, match="pydantic-ai is required"):
        mock_strategy(MockAgent())


async def test_runs_a_batch() -> None:
    """A batch of mock-strategy items succeeds with the agent's outputs and tokens."""
    agent: MockAgent[dict[str, str]] = MockAgent(latency=0.0)
    strategy = mock_strategy(agent)
    async with ParallelBatchProcessor[str, dict[str, str], None](
        config=ProcessorConfig(max_workers=2)
    ) as processor:
        for i in range(3):
            await processor.add_work(
                LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt=f"p{i}")
            )
        batch = await processor.process_all()
    assert batch.succeeded == 3
    assert agent.call_count == 3
    assert batch.total_input_tokens == 30
    assert {r.output["response"] for r in batch.results if r.output} == {
        f"Mock response to: p{i}" for i in range(3)
    }
