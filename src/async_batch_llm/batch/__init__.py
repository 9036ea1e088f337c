"""Provider batch mode: requests submitted as provider batch jobs at batch prices.

Switch it on with ``ProcessorConfig(mode="batch")`` (every item through batch jobs) or
``mode="auto"`` (batch first, online for what fails, expires or misses
``batch_deadline``). A strategy takes part through `LLMCallStrategy.batch_api`:
`PydanticAIStrategy` returns a `PydanticAIBatchAPI` for models with a batch API
(OpenAI Responses, Anthropic, Google), `GeminiStrategy` a `GeminiBatchAPI`; implement
`BatchAPI` for your own.
"""

from __future__ import annotations

from async_batch_llm.batch.base import (
    BatchAPI,
    BatchJob,
    BatchRequestNotRun,
    EncodedRequest,
    JobState,
    RequestResult,
    ResultStatus,
)
from async_batch_llm.batch.gemini import GeminiBatchAPI
from async_batch_llm.batch.pydantic_ai import PydanticAIBatchAPI, batch_api_for_agent

__all__ = [
    "BatchAPI",
    "BatchJob",
    "BatchRequestNotRun",
    "EncodedRequest",
    "GeminiBatchAPI",
    "JobState",
    "PydanticAIBatchAPI",
    "RequestResult",
    "ResultStatus",
    "batch_api_for_agent",
]
