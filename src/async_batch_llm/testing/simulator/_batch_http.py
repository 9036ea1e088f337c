"""What the batch API handlers of every provider share: the job and file stores, responses."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from async_batch_llm.testing.simulator._batches import (
    Answer,
    BatchItem,
    BatchJob,
    BatchStore,
    new_id,
)
from async_batch_llm.testing.simulator._config import SimulatorConfig
from async_batch_llm.testing.simulator._files import FileStore
from async_batch_llm.testing.simulator._request import Provider
from async_batch_llm.testing.simulator._stats import SimulatorStats
from async_batch_llm.testing.simulator._wire import Json, Wire

__all__ = ["DAY", "BatchContext", "Record", "is_gemini", "origin"]

DAY = 86_400.0
"""The providers' completion window for a batch job, in seconds."""

Record = Callable[[web.Request, Provider, "str | None", int], None]
"""Counts one finished HTTP request in the simulator's stats."""


def origin(request: web.Request) -> str:
    """``scheme://host:port`` the client reached the simulator at, for absolute URLs."""
    return f"{request.scheme}://{request.host}"


def is_gemini(request: web.Request) -> bool:
    """Whether a request to a path OpenAI shares (``/v1/files``, ``/v1/batches``) is Gemini's."""
    return "x-goog-api-key" in request.headers or "key" in request.query


class BatchContext:
    """The state behind every provider's batch and file endpoints, and how they answer."""

    __slots__ = ("_config", "_record", "_rng", "files", "stats", "store")

    def __init__(
        self,
        *,
        config: Callable[[], SimulatorConfig],
        stats: SimulatorStats,
        answer: Answer,
        record: Record,
    ) -> None:
        self._config = config
        self._record = record
        self.stats = stats
        self.store = BatchStore(answer)
        self.files = FileStore()
        seed = config().seed
        self._rng = random.Random(None if seed is None else f"batch-errors:{seed}")

    @property
    def config(self) -> SimulatorConfig:
        """The simulator's current settings."""
        return self._config()

    def now(self) -> float:
        """The simulator's (monotonic) clock."""
        return self._config().clock()

    def wall_now(self) -> float:
        """The simulator's wall clock, in epoch seconds."""
        return self._config().wall_clock()

    def clear(self) -> None:
        """Forget every job, file and upload."""
        self.store.clear()
        self.files.clear()

    def new_job(
        self,
        *,
        provider: Provider,
        job_id: str,
        model: str,
        api_key: str,
        wire: Wire,
        path: str,
        requests: list[tuple[str, Mapping[str, Any], Json]],
        details: Json | None = None,
    ) -> BatchJob:
        """Create and store a job of ``requests`` (custom id, body, extras), counting it.

        Each request's failure at ``batch_error_rate`` is drawn now, in order, so a seeded
        run fails the same requests however the job is polled.
        """
        config = self._config()
        now = config.clock()
        rate = config.batch_error_rate
        items = [
            BatchItem(
                custom_id=custom_id,
                body=body,
                fail=bool(rate) and self._rng.random() < rate,
                extra=extra,
            )
            for custom_id, body, extra in requests
        ]
        job = BatchJob(
            provider=provider,
            id=job_id,
            model=model,
            api_key=api_key,
            wire=wire,
            path=path,
            items=items,
            created_at=now,
            created_wall=config.wall_clock(),
            latency=config.batch_latency,
            expires_at=now + (config.batch_expiry if config.batch_expiry is not None else DAY),
            details=details or {},
        )
        self.store.add(job)
        self.stats.batch_jobs_created[provider] += 1
        return job

    def cancel(self, job: BatchJob) -> bool:
        """Request ``job``'s cancellation; ``False`` when it has already ended."""
        outcome = self.store.cancel(job, self.now())
        if outcome == "accepted":
            self.stats.batch_jobs_cancelled[job.provider] += 1
        return outcome != "ended"

    def json(
        self,
        request: web.Request,
        provider: Provider,
        status: int,
        body: Json,
        headers: Mapping[str, str] | None = None,
        *,
        model: str | None = None,
    ) -> web.Response:
        """A JSON response, counted in the stats."""
        self._record(request, provider, model, status)
        return web.json_response(body, status=status, headers=headers)

    def data(
        self,
        request: web.Request,
        provider: Provider,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """A 200 response carrying ``body`` as is, counted in the stats."""
        self._record(request, provider, None, 200)
        return web.Response(body=body, content_type=content_type, headers=headers)

    @staticmethod
    def new_line_id() -> str:
        """An id for one line of an OpenAI batch output file."""
        return new_id("batch_req_", 32, lower=True)
