"""Fakes for testing code built on async-batch-llm without calling a model."""

from __future__ import annotations

from async_batch_llm.testing.mocks import MockAgent, MockResult
from async_batch_llm.testing.strategies import mock_strategy

__all__ = ["MockAgent", "MockResult", "mock_strategy"]
