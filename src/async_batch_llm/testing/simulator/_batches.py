"""Batch jobs, shared by the OpenAI, Anthropic and Gemini batch APIs.

A job holds its requests (a custom id and the provider-native body of each) and works out its
state from the clock whenever it is read; nothing runs in the background, so a test that moves
an injected clock sees the job move with it. With ``batch_latency`` seconds, request ``i`` of
``n`` is done at ``created + batch_latency * (i + 1) / n``; each is answered when it is first
seen done, by the simulator's online reply logic (scripted replies, the reply hook, the
default reply) but without its rate limits, injected faults or latency. A job ends when every
request is done, or earlier when it is cancelled or expires: the requests done by then keep
their results and the rest are cancelled or expired.

The provider modules turn jobs into their own wire shapes; this one knows none of them.
"""

from __future__ import annotations

import secrets
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from async_batch_llm.testing.simulator._config import SimulatorConfig
from async_batch_llm.testing.simulator._request import Provider
from async_batch_llm.testing.simulator._wire import Json, Wire

__all__ = [
    "PROVIDER_MAX_BYTES",
    "PROVIDER_MAX_REQUESTS",
    "Answer",
    "Answered",
    "BatchItem",
    "BatchJob",
    "BatchJobRecord",
    "BatchStore",
    "JobEnd",
    "Outcome",
    "OutcomeKind",
    "new_id",
    "request_cap",
]

OutcomeKind: TypeAlias = Literal["succeeded", "errored", "canceled", "expired"]
JobEnd: TypeAlias = Literal["completed", "cancelled", "expired", "failed"]

PROVIDER_MAX_REQUESTS: Mapping[Provider, int | None] = {
    "openai": 50_000,
    "anthropic": 100_000,
    # The Gemini API limits a job by its size, not its number of requests.
    "gemini": None,
}
"""The most requests each provider accepts in one batch job."""

PROVIDER_MAX_BYTES: Mapping[str, int] = {
    "openai": 200_000_000,  # the input file
    "anthropic": 256_000_000,  # the create request's body
    "gemini": 20_000_000,  # inline requests, the create request's body
    "gemini-file": 2_000_000_000,  # an input file
}
"""The most bytes each provider accepts in one batch job's input."""


def request_cap(provider: Provider, config: SimulatorConfig) -> int | None:
    """The most requests a job may hold: the provider's cap, or the config's lower one."""
    caps = [cap for cap in (PROVIDER_MAX_REQUESTS[provider], config.batch_max_requests) if cap]
    return min(caps) if caps else None


_ALPHABET = string.ascii_letters + string.digits
_LOWER = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int, *, lower: bool = False) -> str:
    """A random id like the provider's: ``prefix`` and ``length`` letters or digits."""
    alphabet = _LOWER if lower else _ALPHABET
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True, slots=True)
class Answered:
    """How the reply logic answered one request of a job."""

    status: int
    body: Json
    sequence: int


Answer: TypeAlias = Callable[["BatchJob", "BatchItem"], Answered]
"""Answers one request of a job (the simulator's reply logic, without limits or faults)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request: its kind, and for answered ones the status and body.

    ``done_at`` is the clock time it was done, cancelled or expired.
    """

    kind: OutcomeKind
    done_at: float
    status: int = 0
    body: Json = field(default_factory=dict)
    sequence: int = 0


@dataclass(slots=True)
class BatchItem:
    """One request of a job: its custom id, provider-native body and provider extras."""

    custom_id: str
    body: Mapping[str, Any]
    fail: bool = False
    extra: Json = field(default_factory=dict)
    outcome: Outcome | None = None


@dataclass(slots=True, eq=False)
class BatchJob:
    """A batch job and everything its provider module needs to render it.

    Times without ``wall`` are on the simulator's (monotonic) ``clock``; `wall` converts them.
    """

    provider: Provider
    id: str
    model: str
    api_key: str
    wire: Wire
    path: str
    items: list[BatchItem]
    created_at: float
    created_wall: float
    latency: float
    expires_at: float | None
    details: Json = field(default_factory=dict)
    cancel_at: float | None = None
    ended_at: float | None = None
    end: JobEnd | None = None
    errors: list[Json] = field(default_factory=list)
    deleted: bool = False

    def due(self, index: int) -> float:
        """When request ``index`` is done, if the job lasts that long."""
        return self.created_at + self.latency * (index + 1) / len(self.items)

    def wall(self, at: float) -> float:
        """Clock time ``at`` as epoch seconds."""
        return self.created_wall + (at - self.created_at)

    @property
    def ended(self) -> bool:
        """Whether the job has ended (completed, cancelled, expired or failed)."""
        return self.end is not None

    @property
    def done(self) -> list[BatchItem]:
        """The requests that have an outcome so far, in order."""
        return [item for item in self.items if item.outcome is not None]

    def counts(self) -> Counter[str]:
        """Requests per outcome kind so far."""
        return Counter(item.outcome.kind for item in self.items if item.outcome is not None)

    def outcomes(self) -> Iterator[tuple[BatchItem, Outcome]]:
        """The requests that have an outcome, with it."""
        for item in self.items:
            if item.outcome is not None:
                yield item, item.outcome

    @property
    def custom_ids(self) -> tuple[str, ...]:
        """The custom ids of the requests, in order."""
        return tuple(item.custom_id for item in self.items)


@dataclass(frozen=True, slots=True)
class BatchJobRecord:
    """A read-only view of one batch job, for tests (`ProviderSimulator.batch_jobs`).

    Attributes:
        provider: The provider whose batch API created it.
        id: Its id as the provider writes it (``batch_...``, ``msgbatch_...``,
            ``batches/...``).
        state: Its status as the provider's API reports it now, e.g. OpenAI ``"completed"``,
            Anthropic ``"ended"``, Gemini ``"BATCH_STATE_SUCCEEDED"``.
        request_count: How many requests it holds.
        custom_ids: Their custom ids (Gemini: the keys or metadata keys), in order.
        created_at: The simulator's ``clock`` when it was created.
        cancelled: Whether its cancellation was requested (and accepted).
        ended: Whether it has ended (completed, cancelled, expired or failed).
        deleted: Whether it was deleted through the API.
        outcomes: Requests per outcome so far (``succeeded``, ``errored``, ``canceled``,
            ``expired``).
    """

    provider: Provider
    id: str
    state: str
    request_count: int
    custom_ids: tuple[str, ...]
    created_at: float
    cancelled: bool
    ended: bool
    deleted: bool
    outcomes: Mapping[str, int]


class BatchStore:
    """Every batch job of a simulator, brought up to date with the clock as it is read."""

    __slots__ = ("_answer", "_jobs")

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._jobs: dict[str, BatchJob] = {}

    def __iter__(self) -> Iterator[BatchJob]:
        return iter(list(self._jobs.values()))

    def clear(self) -> None:
        """Forget every job."""
        self._jobs.clear()

    def add(self, job: BatchJob) -> None:
        """Store a newly created job (not refreshed: it reads as just created)."""
        self._jobs[job.id] = job

    def get(self, provider: Provider, job_id: str, now: float) -> BatchJob | None:
        """The live job ``job_id`` of ``provider``, brought up to ``now``; ``None`` if unknown."""
        job = self._jobs.get(job_id)
        if job is None or job.provider != provider or job.deleted:
            return None
        self.refresh(job, now)
        return job

    def listing(self, provider: Provider, now: float) -> list[BatchJob]:
        """The live jobs of ``provider``, newest first, brought up to ``now``."""
        jobs = [job for job in self._jobs.values() if job.provider == provider and not job.deleted]
        for job in jobs:
            self.refresh(job, now)
        return jobs[::-1]

    def refresh(self, job: BatchJob, now: float) -> None:
        """Answer the requests done by ``now``, and end the job if its time has come."""
        if job.ended:
            return
        stops = [at for at in (job.cancel_at, job.expires_at) if at is not None]
        stop = min(stops) if stops else None
        for index, item in enumerate(job.items):
            if item.outcome is not None:
                continue
            due = job.due(index)
            if due > now or (stop is not None and due > stop):
                break
            answered = self._answer(job, item)
            kind: OutcomeKind = "succeeded" if 200 <= answered.status < 300 else "errored"
            item.outcome = Outcome(kind, due, answered.status, answered.body, answered.sequence)
        if all(item.outcome is not None for item in job.items):
            job.end = "completed"
            job.ended_at = max(job.due(index) for index in range(len(job.items)))
        elif stop is not None and stop <= now:
            cancelled = job.cancel_at is not None and job.cancel_at == stop
            job.end = "cancelled" if cancelled else "expired"
            job.ended_at = stop
            unrun: OutcomeKind = "canceled" if cancelled else "expired"
            for item in job.items:
                if item.outcome is None:
                    item.outcome = Outcome(unrun, stop)

    def fail(self, job: BatchJob, errors: list[Json], now: float) -> None:
        """End ``job`` as failed validation: none of its requests run."""
        job.errors = errors
        job.end = "failed"
        job.ended_at = now

    def cancel(self, job: BatchJob, now: float) -> Literal["accepted", "repeated", "ended"]:
        """Request cancellation at ``now``: ``"accepted"``, or why nothing changed.

        The job reads as cancelling until it is next read, when it ends as cancelled.
        """
        self.refresh(job, now)
        if job.ended:
            return "ended"
        if job.cancel_at is not None:
            return "repeated"
        job.cancel_at = now
        return "accepted"

    def expire_all(self, now: float) -> int:
        """End every unfinished job as expired at ``now``; returns how many there were."""
        count = 0
        for job in self._jobs.values():
            self.refresh(job, now)
            if not job.ended:
                job.expires_at = now
                self.refresh(job, now)
                count += 1
        return count
