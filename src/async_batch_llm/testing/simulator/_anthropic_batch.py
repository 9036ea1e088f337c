"""Anthropic's Message Batches API (``/v1/messages/batches``, also with ``?beta=true``).

As the ``MessageBatch`` type documents, every request counts as ``processing`` until the whole
batch ends, and ``results_url`` (absolute, pointing back at the simulator) appears only then.
Results are JSONL lines of ``{"custom_id", "result": {"type": ...}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from async_batch_llm.testing.simulator._batch_http import BatchContext, origin
from async_batch_llm.testing.simulator._batches import (
    PROVIDER_MAX_BYTES,
    BatchJob,
    Outcome,
    new_id,
    request_cap,
)
from async_batch_llm.testing.simulator._formats import rfc3339
from async_batch_llm.testing.simulator._http import ANTHROPIC, api_key
from async_batch_llm.testing.simulator._wire import Json

__all__ = ["AnthropicBatchAPI", "anthropic_status"]

_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _error(status: int, message: str) -> Json:
    return ANTHROPIC.status_body(status, message)


def anthropic_status(job: BatchJob) -> str:
    """The batch's ``processing_status``."""
    if job.ended:
        return "ended"
    return "canceling" if job.cancel_at is not None else "in_progress"


class AnthropicBatchAPI:
    """The handlers of Anthropic's Message Batches endpoints."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/batches``: ``{"requests": [{"custom_id", "params"}, ...]}``."""
        ctx = self._ctx
        raw = await request.read()
        if len(raw) > PROVIDER_MAX_BYTES["anthropic"]:
            message = (
                f"Request exceeds the maximum allowed number of bytes "
                f"({PROVIDER_MAX_BYTES['anthropic']})."
            )
            return ctx.json(request, "anthropic", 413, _error(413, message))
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return ctx.json(request, "anthropic", 400, _error(400, "Invalid JSON body."))
        parsed = self._requests(body.get("requests"))
        if isinstance(parsed, str):
            return ctx.json(request, "anthropic", 400, _error(400, parsed))
        job = ctx.new_job(
            provider="anthropic",
            job_id=new_id("msgbatch_", 24),
            model="",
            api_key=api_key(request),
            wire=ANTHROPIC,
            path="/v1/messages",
            requests=parsed,
        )
        return ctx.json(request, "anthropic", 200, _render(job, request))

    def _requests(self, requests: Any) -> list[tuple[str, Mapping[str, Any], Json]] | str:
        """The requests of a create body, or the message of the 400 refusing it."""
        if not isinstance(requests, list) or not requests:
            return "requests: List should have at least 1 item after validation, not 0"
        cap = request_cap("anthropic", self._ctx.config)
        if cap is not None and len(requests) > cap:
            return f"requests: List should have at most {cap} items, not {len(requests)}"
        parsed: list[tuple[str, Mapping[str, Any], Json]] = []
        seen: set[str] = set()
        for index, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, Mapping) else None
            params = entry.get("params") if isinstance(entry, Mapping) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                return (
                    f"requests.{index}.custom_id: String should match pattern "
                    f"'^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if custom_id in seen:
                return (
                    f"requests.{index}.custom_id: Duplicate custom_id {custom_id!r}; each "
                    f"request in a batch needs a unique custom_id."
                )
            seen.add(custom_id)
            if not isinstance(params, Mapping):
                return f"requests.{index}.params: Field required"
            for name in ("model", "max_tokens", "messages"):
                if name not in params:
                    return f"requests.{index}.params.{name}: Field required"
            if params.get("stream") is True:
                return f"requests.{index}.params.stream: Batch requests cannot be streamed."
            parsed.append((custom_id, params, {}))
        return parsed

    async def get(self, request: web.Request) -> web.Response:
        """``GET /v1/messages/batches/{id}``."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        return self._ctx.json(request, "anthropic", 200, _render(job, request))

    async def results(self, request: web.Request) -> web.Response:
        """``GET /v1/messages/batches/{id}/results``: JSONL, once the batch has ended."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        if not job.ended:
            message = (
                f"Batch {job.id} is still {anthropic_status(job)}; its results are available "
                f"once processing has ended."
            )
            return self._ctx.json(request, "anthropic", 400, _error(400, message))
        lines = [
            json.dumps(_result_line(item.custom_id, outcome)) for item, outcome in job.outcomes()
        ]
        data = ("\n".join(lines) + "\n").encode()
        return self._ctx.data(request, "anthropic", data, "application/binary")

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/batches/{id}/cancel``: ``canceling``, ``ended`` when next read.

        Cancelling an ended batch changes nothing and answers it as it is.
        """
        job = self._job(request)
        if job is None:
            return self._missing(request)
        self._ctx.cancel(job)
        return self._ctx.json(request, "anthropic", 200, _render(job, request))

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /v1/messages/batches``, newest first (``limit``, ``after_id``, ``before_id``)."""
        ctx = self._ctx
        jobs = ctx.store.listing("anthropic", ctx.now())
        query = request.query
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            message = "limit: Input should be greater than or equal to 1 and at most 1000"
            return ctx.json(request, "anthropic", 400, _error(400, message))
        ids = [job.id for job in jobs]
        after, before = query.get("after_id"), query.get("before_id")
        if after:
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
            page, has_more = jobs[:limit], len(jobs) > limit
        elif before:
            jobs = jobs[: ids.index(before)] if before in ids else []
            page, has_more = jobs[-limit:], len(jobs) > limit
        else:
            page, has_more = jobs[:limit], len(jobs) > limit
        body = {
            "data": [_render(job, request) for job in page],
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
        return ctx.json(request, "anthropic", 200, body)

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /v1/messages/batches/{id}``: only once it has ended."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        if not job.ended:
            message = (
                f"Batch {job.id} cannot be deleted while it is {anthropic_status(job)}; cancel "
                f"it and wait for processing to end first."
            )
            return self._ctx.json(request, "anthropic", 400, _error(400, message))
        job.deleted = True
        body = {"id": job.id, "type": "message_batch_deleted"}
        return self._ctx.json(request, "anthropic", 200, body)

    def _job(self, request: web.Request) -> BatchJob | None:
        return self._ctx.store.get("anthropic", request.match_info["id"], self._ctx.now())

    def _missing(self, request: web.Request) -> web.Response:
        message = f"Message batch {request.match_info['id']!r} not found."
        return self._ctx.json(request, "anthropic", 404, _error(404, message))


def _render(job: BatchJob, request: web.Request) -> Json:
    counts = job.counts()
    ended = job.ended
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": anthropic_status(job),
        "request_counts": {
            "processing": 0 if ended else len(job.items),
            "succeeded": counts["succeeded"] if ended else 0,
            "errored": counts["errored"] if ended else 0,
            "canceled": counts["canceled"] if ended else 0,
            "expired": counts["expired"] if ended else 0,
        },
        "created_at": rfc3339(job.created_wall),
        "expires_at": rfc3339(job.wall(job.expires_at or job.created_at)),
        "ended_at": rfc3339(job.wall(job.ended_at)) if job.ended_at is not None else None,
        "cancel_initiated_at": (
            rfc3339(job.wall(job.cancel_at)) if job.cancel_at is not None else None
        ),
        "archived_at": None,
        "results_url": (
            f"{origin(request)}/v1/messages/batches/{job.id}/results" if ended else None
        ),
    }


def _result_line(custom_id: str, outcome: Outcome) -> Json:
    result: Json
    if outcome.kind == "succeeded":
        result = {"type": "succeeded", "message": outcome.body}
    elif outcome.kind == "errored":
        result = {"type": "errored", "error": outcome.body}
    else:
        result = {"type": outcome.kind}
    return {"custom_id": custom_id, "result": result}
