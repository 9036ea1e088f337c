"""Strategies wired to the package's fakes."""

from __future__ import annotations

from async_batch_llm.base import TOutput
from async_batch_llm.llm_strategies import PydanticAIStrategy
from async_batch_llm.testing.mocks import MockAgent

__all__ = ["mock_strategy"]


def mock_strategy(mock_agent: MockAgent[TOutput]) -> PydanticAIStrategy[TOutput]:
    """A `PydanticAIStrategy` running ``mock_agent``.

    Like ``PydanticAIStrategy`` itself, it needs pydantic-ai to be installed.

    Raises:
        ImportError: pydantic-ai is not installed.
    """
    return PydanticAIStrategy(agent=mock_agent)
