"""OpenAI's Files API (``/v1/files``) and Batch API (``/v1/batches``).

A batch reads a JSONL input file of ``{"custom_id", "method", "url", "body"}`` lines and,
once it ends, writes an output file (lines with a 2xx ``response``) and an error file (lines
with an error ``response``, and ``batch_expired``/``batch_cancelled`` lines for the requests
it never ran), the way the real API does and pydantic-ai's ``_openai_batch`` reads them. A
bad input file does not refuse the create call: the batch is created ``validating`` and then
reads as ``failed`` with its ``errors``, as OpenAI validates asynchronously.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from async_batch_llm.testing.simulator._batch_http import DAY, BatchContext
from async_batch_llm.testing.simulator._batches import (
    PROVIDER_MAX_BYTES,
    BatchJob,
    new_id,
    request_cap,
)
from async_batch_llm.testing.simulator._files import StoredFile
from async_batch_llm.testing.simulator._http import OPENAI, OPENAI_RESPONSES, api_key, json_body
from async_batch_llm.testing.simulator._wire import Json, Wire

__all__ = ["OpenAIBatchAPI", "openai_status"]

_ENDPOINTS: Mapping[str, Wire] = {
    "/v1/responses": OPENAI_RESPONSES,
    "/v1/chat/completions": OPENAI,
}
"""The batch endpoints the simulator can answer, with the wire format of each."""
_OTHER_ENDPOINTS = frozenset(
    {
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    }
)
_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
_EXPIRED = "This request could not be executed before the completion window expired."
_CANCELLED = "This request was not executed because the batch was cancelled."


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Json:
    body = OPENAI.status_body(status, message)
    body["error"]["param"] = param
    if code is not None:
        body["error"]["code"] = code
    return body


def openai_status(job: BatchJob, *, fresh: bool = False) -> str:
    """The batch's ``status``: ``validating`` when just created, then as the job stands."""
    if fresh:
        return "validating"
    if job.end is not None:
        return {"completed": "completed", "failed": "failed", "expired": "expired"}.get(
            job.end, "cancelled"
        )
    return "cancelling" if job.cancel_at is not None else "in_progress"


class OpenAIBatchAPI:
    """The handlers of OpenAI's file and batch endpoints."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx

    # -- files -----------------------------------------------------------------------------

    async def file_create(self, request: web.Request) -> web.Response:
        """``POST /v1/files``: a multipart upload of ``file`` with a ``purpose``."""
        ctx = self._ctx
        try:
            form = await request.post()
        except ValueError:
            return ctx.json(request, "openai", 400, _error(400, "Invalid multipart form."))
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, web.FileField):
            return ctx.json(
                request, "openai", 400, _error(400, "Missing required parameter: 'file'.", "file")
            )
        if not isinstance(purpose, str) or purpose not in _PURPOSES:
            message = f"Invalid value for 'purpose': {purpose!r}. Use 'batch' for batch input."
            return ctx.json(request, "openai", 400, _error(400, message, "purpose"))
        stored = ctx.files.add(
            StoredFile(
                provider="openai",
                id=new_id("file-", 22),
                filename=upload.filename or "upload",
                data=upload.file.read(),
                created_wall=ctx.wall_now(),
                purpose=purpose,
            )
        )
        return ctx.json(request, "openai", 200, _file_object(stored))

    async def file_get(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}``."""
        stored = self._ctx.files.get("openai", request.match_info["id"])
        if stored is None:
            return self._no_file(request)
        return self._ctx.json(request, "openai", 200, _file_object(stored))

    async def file_content(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}/content``: the file's bytes."""
        stored = self._ctx.files.get("openai", request.match_info["id"])
        if stored is None:
            return self._no_file(request)
        return self._ctx.data(request, "openai", stored.data, "application/octet-stream")

    async def file_delete(self, request: web.Request) -> web.Response:
        """``DELETE /v1/files/{id}``."""
        file_id = request.match_info["id"]
        if not self._ctx.files.delete("openai", file_id):
            return self._no_file(request)
        body = {"id": file_id, "object": "file", "deleted": True}
        return self._ctx.json(request, "openai", 200, body)

    async def file_list(self, request: web.Request) -> web.Response:
        """``GET /v1/files``, newest first (``purpose``, ``limit``, ``after``)."""
        files = self._ctx.files.listing("openai")
        purpose = request.query.get("purpose")
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        objects = [_file_object(f) for f in files]
        return self._page(request, objects, default_limit=10000, max_limit=10000)

    def _no_file(self, request: web.Request) -> web.Response:
        message = f"No such File object: {request.match_info['id']}"
        return self._ctx.json(request, "openai", 404, _error(404, message, "id"))

    # -- batches ---------------------------------------------------------------------------

    async def batch_create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``: a batch of the requests in ``input_file_id``."""
        ctx = self._ctx
        body = await json_body(request)
        if body is None:
            return ctx.json(request, "openai", 400, _error(400, "Invalid JSON body."))
        refused = self._refusal(body)
        if refused is not None:
            return ctx.json(request, "openai", 400, refused)
        endpoint = str(body["endpoint"])
        stored = ctx.files.get("openai", str(body["input_file_id"]))
        assert stored is not None  # checked by _refusal
        text = stored.data.decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.strip()]
        cap = request_cap("openai", ctx.config)
        if cap is not None and len(lines) > cap:
            message = (
                f"The batch input file has {len(lines)} requests, more than the {cap} a batch "
                f"can hold. Split the requests into several batches."
            )
            return ctx.json(request, "openai", 400, _error(400, message, "input_file_id"))
        requests, errors, model = _parse_lines(lines, endpoint)
        job = ctx.new_job(
            provider="openai",
            job_id=new_id("batch_", 32, lower=True),
            model=model,
            api_key=api_key(request),
            wire=_ENDPOINTS[endpoint],
            path=endpoint,
            requests=requests,
            details={
                "endpoint": endpoint,
                "input_file_id": stored.id,
                "completion_window": body.get("completion_window"),
                "metadata": body.get("metadata"),
            },
        )
        if errors:
            ctx.store.fail(job, errors, job.created_at)
        return ctx.json(request, "openai", 200, self._render(job, fresh=True), model=model)

    def _refusal(self, body: Mapping[str, Any]) -> Json | None:
        """The 400 for a create request the API refuses outright, if it is one."""
        endpoint = body.get("endpoint")
        if endpoint in _OTHER_ENDPOINTS:
            message = f"The simulator does not answer batches to {endpoint}."
            return _error(400, message, "endpoint", "invalid_value")
        if endpoint not in _ENDPOINTS:
            supported = ", ".join(sorted(_ENDPOINTS) + sorted(_OTHER_ENDPOINTS))
            message = (
                f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: {supported}."
            )
            return _error(400, message, "endpoint", "invalid_value")
        if body.get("completion_window") != "24h":
            message = (
                f"Invalid value for 'completion_window': {body.get('completion_window')!r}. "
                f"Supported values are: '24h'."
            )
            return _error(400, message, "completion_window", "invalid_value")
        file_id = body.get("input_file_id")
        stored = self._ctx.files.get("openai", file_id) if isinstance(file_id, str) else None
        if stored is None:
            message = f"Invalid 'input_file_id': {file_id!r}. No such File object."
            return _error(400, message, "input_file_id", "invalid_value")
        if stored.purpose != "batch":
            message = f"The input file {file_id} must be uploaded with purpose 'batch'."
            return _error(400, message, "input_file_id", "invalid_value")
        if len(stored.data) > PROVIDER_MAX_BYTES["openai"]:
            message = (
                f"The batch input file is larger than the {PROVIDER_MAX_BYTES['openai']} bytes "
                f"a batch can hold."
            )
            return _error(400, message, "input_file_id", "invalid_value")
        return None

    async def batch_get(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{id}``."""
        job = self._ctx.store.get("openai", request.match_info["id"], self._ctx.now())
        if job is None:
            return self._no_batch(request)
        return self._ctx.json(request, "openai", 200, self._render(job), model=job.model)

    async def batch_cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{id}/cancel``: ``cancelling``, then ``cancelled`` when next read."""
        ctx = self._ctx
        job = ctx.store.get("openai", request.match_info["id"], ctx.now())
        if job is None:
            return self._no_batch(request)
        if not ctx.cancel(job):
            message = f"Cannot cancel a batch with status '{openai_status(job)}'."
            return ctx.json(request, "openai", 409, _error(409, message))
        return ctx.json(request, "openai", 200, self._render(job), model=job.model)

    async def batch_list(self, request: web.Request) -> web.Response:
        """``GET /v1/batches``, newest first (``limit`` 1-100, default 20; ``after``)."""
        jobs = self._ctx.store.listing("openai", self._ctx.now())
        objects = [self._render(job) for job in jobs]
        return self._page(request, objects, default_limit=20, max_limit=100)

    def _no_batch(self, request: web.Request) -> web.Response:
        message = f"No batch found with id '{request.match_info['id']}'."
        return self._ctx.json(request, "openai", 404, _error(404, message, "batch_id"))

    def _page(
        self, request: web.Request, objects: list[Json], *, default_limit: int, max_limit: int
    ) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", default_limit))
        except ValueError:
            limit = 0
        if not 1 <= limit <= max_limit:
            message = f"Invalid 'limit': must be between 1 and {max_limit}."
            return self._ctx.json(request, "openai", 400, _error(400, message, "limit"))
        after = query.get("after")
        if after:
            ids = [obj["id"] for obj in objects]
            objects = objects[ids.index(after) + 1 :] if after in ids else []
        page = objects[:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(objects) > limit,
        }
        return self._ctx.json(request, "openai", 200, body)

    # -- rendering -------------------------------------------------------------------------

    def _render(self, job: BatchJob, *, fresh: bool = False) -> Json:
        status = openai_status(job, fresh=fresh)
        details = job.details
        counts = job.counts()
        failed = job.end == "failed"
        ended_wall = int(job.wall(job.ended_at)) if job.ended_at is not None else None
        if job.ended and not failed and not fresh:
            self._write_results(job)
        body: Json = {
            "id": job.id,
            "object": "batch",
            "endpoint": details["endpoint"],
            "model": job.model or None,
            "errors": None,
            "input_file_id": details["input_file_id"],
            "completion_window": details["completion_window"],
            "status": status,
            "output_file_id": None if fresh else details.get("output_file_id"),
            "error_file_id": None if fresh else details.get("error_file_id"),
            "created_at": int(job.created_wall),
            "in_progress_at": None if fresh or failed else int(job.created_wall),
            "expires_at": int(job.wall(job.expires_at or job.created_at + DAY)),
            "finalizing_at": ended_wall if status == "completed" else None,
            "completed_at": ended_wall if status == "completed" else None,
            "failed_at": ended_wall if status == "failed" else None,
            "expired_at": ended_wall if status == "expired" else None,
            "cancelling_at": (
                int(job.wall(job.cancel_at)) if job.cancel_at is not None and not fresh else None
            ),
            "cancelled_at": ended_wall if status == "cancelled" else None,
            "request_counts": {
                "total": 0 if failed else len(job.items),
                "completed": 0 if fresh else counts["succeeded"],
                "failed": 0 if fresh else counts["errored"],
            },
            "usage": _usage(job) if not fresh else _usage(None),
            "metadata": details.get("metadata"),
        }
        if failed and not fresh:
            body["errors"] = {"object": "list", "data": job.errors}
        return body

    def _write_results(self, job: BatchJob) -> None:
        """Write the output and error files of an ended job, once."""
        details = job.details
        if details.get("written"):
            return
        details["written"] = True
        output: list[str] = []
        errors: list[str] = []
        for item, outcome in job.outcomes():
            line: Json = {"id": self._ctx.new_line_id(), "custom_id": item.custom_id}
            if outcome.kind in ("succeeded", "errored"):
                line["response"] = {
                    "status_code": outcome.status,
                    "request_id": f"req_sim{outcome.sequence:08d}",
                    "body": outcome.body,
                }
                line["error"] = None
            else:
                expired = outcome.kind == "expired"
                line["response"] = None
                line["error"] = {
                    "code": "batch_expired" if expired else "batch_cancelled",
                    "message": _EXPIRED if expired else _CANCELLED,
                }
            (output if outcome.kind == "succeeded" else errors).append(json.dumps(line))
        wall = job.wall(job.ended_at if job.ended_at is not None else job.created_at)
        for key, kind, lines in (
            ("output_file_id", "output", output),
            ("error_file_id", "error", errors),
        ):
            if lines:
                stored = self._ctx.files.add(
                    StoredFile(
                        provider="openai",
                        id=new_id("file-", 22),
                        filename=f"{job.id}_{kind}.jsonl",
                        data=("\n".join(lines) + "\n").encode(),
                        created_wall=wall,
                        purpose="batch_output",
                        mime_type="application/jsonl",
                        source="generated",
                    )
                )
                details[key] = stored.id


def _file_object(stored: StoredFile) -> Json:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": len(stored.data),
        "created_at": int(stored.created_wall),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _parse_lines(
    lines: list[str], endpoint: str
) -> tuple[list[tuple[str, Mapping[str, Any], Json]], list[Json], str]:
    """The requests of an input file, the validation errors that fail it, and its model."""
    requests: list[tuple[str, Mapping[str, Any], Json]] = []
    errors: list[Json] = []
    seen: set[str] = set()
    model = ""

    def fail(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    if not lines:
        errors.append({"code": "empty_file", "message": "The batch input file is empty."})
    for number, text in enumerate(lines, start=1):
        try:
            line = json.loads(text)
        except ValueError:
            fail(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict):
            fail(number, "invalid_json_line", "This line is not a JSON object.")
            continue
        custom_id = line.get("custom_id")
        body = line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            fail(number, "missing_required_parameter", "Missing 'custom_id'.", "custom_id")
            continue
        if custom_id in seen:
            message = (
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch."
            )
            fail(number, "duplicate_custom_id", message, "custom_id")
            continue
        seen.add(custom_id)
        if line.get("method") != "POST":
            fail(number, "invalid_method", "The method must be 'POST'.", "method")
            continue
        if line.get("url") != endpoint:
            message = (
                f"The URL provided for this request does not match the batch endpoint {endpoint!r}."
            )
            fail(number, "invalid_url", message, "url")
            continue
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            fail(number, "missing_required_parameter", "Missing 'body.model'.", "body.model")
            continue
        if model and body["model"] != model:
            message = (
                f"The provided model '{body['model']}' does not match the model of the other "
                f"requests in this batch ('{model}'). A batch can only use one model."
            )
            fail(number, "mismatched_model", message, "body.model")
            continue
        model = body["model"]
        requests.append((custom_id, body, {}))
    return requests, errors, model


def _usage(job: BatchJob | None) -> Json:
    """The batch's token usage: the sum over its successful requests."""
    prompt = output = cached = 0
    for _, outcome in job.outcomes() if job is not None else ():
        usage = outcome.body.get("usage") if outcome.kind == "succeeded" else None
        if isinstance(usage, Mapping):
            prompt += int(usage.get("input_tokens", usage.get("prompt_tokens", 0)))
            output += int(usage.get("output_tokens", usage.get("completion_tokens", 0)))
            details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details")
            if isinstance(details, Mapping):
                cached += int(details.get("cached_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }
