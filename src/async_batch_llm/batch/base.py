"""What the processor needs from a provider's batch API, whatever the provider.

A strategy whose calls can go through a batch API returns a `BatchAPI` from
`LLMCallStrategy.batch_api`. The processor (``ProcessorConfig(mode="batch" | "auto")``)
then encodes each item's prompt with it, submits the requests as jobs (split to the
API's caps), records each job in the checkpoint before it waits, polls the jobs with a
growing interval, and decodes each request's result into the item's output. The job
handle (`BatchJob`) is plain data, so a later process can poll and collect the same job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from async_batch_llm._internal.values import TokenUsage

__all__ = [
    "BatchAPI",
    "BatchJob",
    "BatchRequestNotRun",
    "EncodedRequest",
    "JobState",
    "RequestResult",
    "ResultStatus",
]

TOutput = TypeVar("TOutput")

JobState: TypeAlias = Literal["in_progress", "canceling", "ended"]
"""Where a job stands: running (validating, queued or processing), being cancelled, or
ended (completed, expired, cancelled or failed: its requests' results say which)."""

ResultStatus: TypeAlias = Literal["succeeded", "errored", "expired", "canceled"]
"""How the provider finished one request of a job."""


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One request encoded for a batch API."""

    custom_id: str
    """Matches the request to its result within the job."""
    size: int
    """Bytes the request adds to a job (what the API's byte cap counts)."""
    body: Any
    """What `BatchAPI.submit` sends (the API's own request object)."""


@dataclass(slots=True)
class BatchJob:
    """A submitted job: plain JSON-like data, kept in the checkpoint store."""

    id: str
    """The provider's id of the job."""
    provider: str
    model: str
    group: str
    """What the job's requests share (endpoint, account, model); never a secret."""
    state: JobState
    request_count: int
    submitted_at: float
    """When the job was submitted (epoch seconds)."""
    handle: dict[str, Any] = field(default_factory=dict)
    """The API's own description of the job, enough to poll and collect it later."""
    counts: dict[str, int] = field(default_factory=dict)
    """Request counts the provider last reported (e.g. ``succeeded``, ``errored``)."""
    provider_status: str | None = None
    """The provider's own word for the job's state (``"completed"``, ``"expired"``, ...)."""


@dataclass(frozen=True, slots=True)
class RequestResult:
    """The provider's result for one request of an ended job."""

    custom_id: str
    status: ResultStatus
    body: Any = None
    """The API's own result object (decoded by `BatchAPI.decode`)."""


class BatchRequestNotRun(Exception):
    """The provider ended a request without running it: its job expired or was cancelled,
    or the job ended without a result for it."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


class BatchAPI(ABC, Generic[TOutput]):
    """A provider's batch API, for the calls of one strategy.

    Requests of APIs with the same `group` can share a job. Every method may raise the
    SDK's own errors; the processor classifies them like the errors of online calls.
    """

    provider: str
    """The provider's name (as pydantic-ai names it: ``openai``, ``anthropic``, ...)."""
    model: str
    """The model's name."""
    group: str
    """What requests must share to be in one job (endpoint, account, model); no secrets."""
    max_requests: int
    """The most requests the provider accepts in one job."""
    max_bytes: int | None = None
    """The most bytes the provider accepts in one job, or ``None``."""

    @abstractmethod
    async def encode(self, custom_id: str, prompt: str) -> EncodedRequest:
        """The request that an online call for `prompt` would make, for a batch job."""

    @abstractmethod
    async def submit(self, requests: Sequence[EncodedRequest]) -> BatchJob:
        """Submit `requests` (within the caps) as one job and return its handle."""

    @abstractmethod
    async def refresh(self, job: BatchJob) -> BatchJob:
        """The job's current state (without its results)."""

    @abstractmethod
    async def results(self, job: BatchJob) -> list[RequestResult]:
        """The results of an ended job, one per request that has one."""

    @abstractmethod
    async def cancel(self, job: BatchJob) -> BatchJob:
        """Ask the provider to cancel the job; return its state."""

    @abstractmethod
    def decode(self, result: RequestResult, prompt: str) -> tuple[TOutput, TokenUsage]:
        """The output and token usage of a request that succeeded.

        Raises the error the online call would have raised for an ``errored`` result, and
        `BatchRequestNotRun` for an ``expired`` or ``canceled`` one.
        """
