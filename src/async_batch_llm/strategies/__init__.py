"""Error classification and rate-limit strategies."""

from __future__ import annotations

from async_batch_llm.strategies.errors import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    TokenTrackingError,
)
from async_batch_llm.strategies.rate_limit import (
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    RateLimitStrategy,
)

__all__ = [
    "ErrorClassifier",
    "ErrorInfo",
    "DefaultErrorClassifier",
    "FrameworkTimeoutError",
    "TokenTrackingError",
    "RateLimitStrategy",
    "ExponentialBackoffStrategy",
    "FixedDelayStrategy",
]
