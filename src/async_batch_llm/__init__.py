"""async-batch-llm: run thousands of LLM calls concurrently, safely and observably.

Queue `LLMWorkItem` objects on a `ParallelBatchProcessor` and run them with
`process_all`; each item's `LLMCallStrategy` makes the
call. Retries, shared rate-limit cooldowns, token accounting, middleware and observers are
handled by the processor.
"""

from __future__ import annotations

from typing import TypeVar

# Submodules are attributes of the package (``from async_batch_llm import models`` works).
from async_batch_llm import (  # noqa: F401 - imported to become package attributes
    base,
    classifiers,
    core,
    llm_strategies,
    middleware,
    models,
    observers,
    parallel,
    rate_control,
    strategies,
    streaming,
    testing,
    token_extractor,
)
from async_batch_llm.base import (
    BatchProcessor,
    BatchResult,
    LLMResponse,
    LLMWorkItem,
    PostProcessorFunc,
    ProcessingStats,
    ProgressCallbackFunc,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.budget import Budget as Budget
from async_batch_llm.budget import BudgetExhaustedError as BudgetExhaustedError
from async_batch_llm.classifiers import GeminiErrorClassifier
from async_batch_llm.core import LLMModel, ManagedLLMModel
from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig, RetryConfig
from async_batch_llm.llm_strategies import GeminiStrategy, LLMCallStrategy, PydanticAIStrategy
from async_batch_llm.middleware import BaseMiddleware, Middleware
from async_batch_llm.models import GeminiCachedModel, GeminiModel
from async_batch_llm.observers import (
    BaseObserver,
    MetricsObserver,
    ProcessingEvent,
    ProcessorObserver,
)
from async_batch_llm.parallel import ParallelBatchProcessor
from async_batch_llm.strategies import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    FrameworkTimeoutError,
    RateLimitStrategy,
    TokenTrackingError,
)

# Beyond 0.7.2, importable from here but not in ``__all__`` (which keeps 0.7.2's names).
from async_batch_llm.streaming import process_stream as process_stream


def __getattr__(name: str) -> str:
    # ``__version__`` on first use: importlib.metadata costs more to import than the rest of
    # the package's own modules.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("async-batch-llm")
        except PackageNotFoundError:  # running from a source tree that is not installed
            found = "0.0.0+dev"
        globals()["__version__"] = found
        return found
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


_T = TypeVar("_T")

#: ``ParallelBatchProcessor`` for string prompts and no context: ``SimpleBatchProcessor[Out]``.
SimpleBatchProcessor = ParallelBatchProcessor[str, _T, None]
#: ``LLMWorkItem`` for string prompts and no context: ``SimpleWorkItem[Out](item_id=..., ...)``.
SimpleWorkItem = LLMWorkItem[str, _T, None]
#: ``WorkItemResult`` without context.
SimpleResult = WorkItemResult[_T, None]

__all__ = [
    # data types
    "BatchProcessor",
    "BatchResult",
    "LLMWorkItem",
    "PostProcessorFunc",
    "ProcessingStats",
    "ProgressCallbackFunc",
    "RetryState",
    "TokenUsage",
    "WorkItemResult",
    # configuration
    "ProcessorConfig",
    "RateLimitConfig",
    "RetryConfig",
    # strategies and models
    "GeminiStrategy",
    "LLMCallStrategy",
    "PydanticAIStrategy",
    "GeminiModel",
    "GeminiCachedModel",
    "LLMModel",
    "LLMResponse",
    "ManagedLLMModel",
    # errors and classification
    "ErrorClassifier",
    "ErrorInfo",
    "DefaultErrorClassifier",
    "FrameworkTimeoutError",
    "TokenTrackingError",
    # rate limiting
    "RateLimitStrategy",
    "ExponentialBackoffStrategy",
    "FixedDelayStrategy",
    # extension points
    "Middleware",
    "BaseMiddleware",
    "ProcessorObserver",
    "BaseObserver",
    "MetricsObserver",
    "ProcessingEvent",
    "GeminiErrorClassifier",
    # processors and aliases
    "ParallelBatchProcessor",
    "SimpleBatchProcessor",
    "SimpleWorkItem",
    "SimpleResult",
]
