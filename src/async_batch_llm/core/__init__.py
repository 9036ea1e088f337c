"""Configuration dataclasses and the structural protocols for agents and models."""

from __future__ import annotations

from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig, RetryConfig
from async_batch_llm.core.protocols import (
    AgentLike,
    LLMModel,
    ManagedLLMModel,
    ResultLike,
    TOutput,
    UsageLike,
)

__all__ = [
    "ProcessorConfig",
    "RateLimitConfig",
    "RetryConfig",
    "AgentLike",
    "LLMModel",
    "ManagedLLMModel",
    "ResultLike",
    "TOutput",
    "UsageLike",
]
