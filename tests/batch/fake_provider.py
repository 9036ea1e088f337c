"""An in-process batch provider, to test the batch engine's logic without HTTP.

The provider-facing tests drive the real SDKs against the bundled simulator; these fakes
let the engine's own decisions (grouping, caps, resubmission, deadlines, resume) be
tested quickly and exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.exceptions import ModelHTTPError

from async_batch_llm import LLMCallStrategy, RetryState, TokenUsage
from async_batch_llm.batch import (
    BatchAPI,
    BatchJob,
    BatchRequestNotRun,
    EncodedRequest,
    RequestResult,
)

USAGE: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


def request_failed(status: int) -> ModelHTTPError:
    """A per-request error as pydantic-ai raises it (its status says if it is retryable)."""
    return ModelHTTPError(status, "fake-model", {"error": f"HTTP {status}"})


@dataclass
class FakeJob:
    id: str
    requests: list[EncodedRequest]
    ended: bool = False
    cancelled: bool = False
    checks: int = 0


@dataclass
class FakeProvider:
    """Jobs end after `checks_to_end` status checks; `outcomes` picks each prompt's result."""

    checks_to_end: int = 1
    max_requests: int = 1000
    max_bytes: int | None = None
    fail_submit: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    """prompt -> "expired" | "canceled" | "error500" | "error400" | "missing" (else success)."""
    never_end: bool = False
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    checked: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at every status check (tests clear it and wait for the next)."""
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def submitted(self) -> int:
        return len(self.jobs)


class FakeBatchAPI(BatchAPI[str]):
    def __init__(self, provider: FakeProvider, *, group: str = "g") -> None:
        self.fake = provider
        self.provider = "fake"
        self.model = "fake-model"
        self.group = group
        self.max_requests = provider.max_requests
        self.max_bytes = provider.max_bytes

    async def encode(self, custom_id: str, prompt: str) -> EncodedRequest:
        return EncodedRequest(custom_id, len(prompt.encode()) + 10, {"prompt": prompt})

    async def submit(self, requests: Sequence[EncodedRequest]) -> BatchJob:
        fake = self.fake
        if fake.fail_submit:
            fake.fail_submit -= 1
            raise request_failed(503)
        assert len(requests) <= fake.max_requests
        if fake.max_bytes is not None:
            assert sum(r.size for r in requests) <= fake.max_bytes
        job_id = f"job-{next(fake._ids)}"
        fake.jobs[job_id] = FakeJob(job_id, list(requests))
        return self._handle(fake.jobs[job_id], time.time())

    def _handle(self, job: FakeJob, submitted_at: float) -> BatchJob:
        return BatchJob(
            id=job.id,
            provider="fake",
            model="fake-model",
            group=self.group,
            state="ended" if job.ended else "in_progress",
            request_count=len(job.requests),
            submitted_at=submitted_at,
            handle={"id": job.id},
            provider_status="cancelled" if job.cancelled else ("ended" if job.ended else "running"),
        )

    async def refresh(self, job: BatchJob) -> BatchJob:
        fake_job = self.fake.jobs[job.id]
        fake_job.checks += 1
        self.fake.checked.set()
        if fake_job.checks >= self.fake.checks_to_end and not self.fake.never_end:
            fake_job.ended = True
        return self._handle(fake_job, job.submitted_at)

    async def results(self, job: BatchJob) -> list[RequestResult]:
        fake_job = self.fake.jobs[job.id]
        results = []
        for request in fake_job.requests:
            prompt = request.body["prompt"]
            outcome = self.fake.outcomes.get(prompt, "ok")
            if fake_job.cancelled:
                outcome = "canceled"
            if outcome == "missing":
                continue
            status = outcome if outcome in ("expired", "canceled") else "succeeded"
            if outcome.startswith("error"):
                status = "errored"
            results.append(
                RequestResult(request.custom_id, status, {"prompt": prompt, "o": outcome})
            )  # type: ignore[arg-type]
        return results

    async def cancel(self, job: BatchJob) -> BatchJob:
        fake_job = self.fake.jobs[job.id]
        self.fake.cancelled.append(job.id)
        fake_job.cancelled = True
        fake_job.ended = True
        fake_job.checks = 10**6
        self.fake.never_end = False
        handle = self._handle(fake_job, job.submitted_at)
        return handle

    def decode(self, result: RequestResult, prompt: str) -> tuple[str, TokenUsage]:
        if result.status in ("expired", "canceled"):
            raise BatchRequestNotRun(f"request {result.status}", status=result.status)
        outcome = result.body["o"]
        if outcome == "error500":
            raise request_failed(500)
        if outcome == "error400":
            raise request_failed(400)
        return f"batch:{prompt}", dict(USAGE)  # type: ignore[return-value]


class BatchableStrategy(LLMCallStrategy[str]):
    """Online: ``online:<prompt>``; batch: through `FakeBatchAPI`."""

    def __init__(self, provider: FakeProvider | None, *, group: str = "g") -> None:
        self.api = FakeBatchAPI(provider, group=group) if provider is not None else None
        self.online_calls: list[str] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.online_calls.append(prompt)
        return f"online:{prompt}", dict(USAGE)  # type: ignore[return-value]

    def batch_api(self) -> BatchAPI[str] | None:
        return self.api


class FlakyBatchAPI(FakeBatchAPI):
    """Every status check fails (`refresh_fails`), or every cancellation does, or the
    results of some jobs are gone (`results_gone`)."""

    def __init__(
        self,
        provider: FakeProvider,
        *,
        refresh_fails: bool = False,
        cancel_fails: bool = False,
        results_gone: set[str] | None = None,
    ) -> None:
        super().__init__(provider)
        self.refresh_fails = refresh_fails
        self.cancel_fails = cancel_fails
        self.results_gone = results_gone or set()

    async def results(self, job: BatchJob) -> list[RequestResult]:
        if job.id in self.results_gone:
            raise request_failed(404)
        return await super().results(job)

    async def refresh(self, job: BatchJob) -> BatchJob:
        if self.refresh_fails:
            raise request_failed(503)
        return await super().refresh(job)

    async def cancel(self, job: BatchJob) -> BatchJob:
        if self.cancel_fails:
            raise request_failed(500)
        return await super().cancel(job)
