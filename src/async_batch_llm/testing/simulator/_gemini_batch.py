"""The Gemini API's Batch Mode (``models/{model}:batchGenerateContent``) and File API.

A batch is a long-running operation named ``batches/<id>`` whose ``metadata`` carries the
``GenerateContentBatch`` google-genai's ``_BatchJob_from_mldev`` reads: ``state``
(``BATCH_STATE_PENDING``/``RUNNING``/``SUCCEEDED``/``CANCELLED``/``EXPIRED``), times,
``batchStats`` and, once it has ended, ``output``: ``inlinedResponses`` for inline requests,
or a ``responsesFile`` of ``{"key", "response" | "error"}`` lines for a file of requests. A
job cancelled or expired while it ran lists only the requests it finished; one that finished
none has no ``output`` at all. Per-request errors are ``google.rpc.Status`` objects, whose
``code`` is the RPC code (13 for ``INTERNAL``), not the HTTP status.

Files upload with Google's resumable protocol: a ``start`` request answered with an
``X-Goog-Upload-URL``, then ``upload`` chunks, the last one ``upload, finalize``.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
from async_batch_llm.testing.simulator._files import PendingUpload, StoredFile
from async_batch_llm.testing.simulator._formats import rfc3339
from async_batch_llm.testing.simulator._gemini import error_body, proto_field
from async_batch_llm.testing.simulator._http import GEMINI, api_key, json_body
from async_batch_llm.testing.simulator._wire import Json

__all__ = ["GeminiBatchAPI", "gemini_state"]

_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_FILE_LIFETIME = 48 * 3600.0
_CHUNK_GRANULARITY = "8388608"
_RPC_CODES = {
    400: 3,
    401: 16,
    403: 7,
    404: 5,
    409: 10,
    429: 8,
    499: 1,
    500: 13,
    501: 12,
    503: 14,
    504: 4,
}
"""The ``google.rpc.Code`` for each HTTP status a request can fail with."""
_NO_FILE = "You do not have permission to access the File {name} or it may not exist."


def gemini_state(job: BatchJob, *, fresh: bool = False) -> str:
    """The job's ``state``: pending until a request is done, then running, then its end."""
    if job.end is not None and not fresh:
        return {
            "completed": "BATCH_STATE_SUCCEEDED",
            "cancelled": "BATCH_STATE_CANCELLED",
            "expired": "BATCH_STATE_EXPIRED",
        }.get(job.end, "BATCH_STATE_FAILED")
    if fresh or not job.done:
        return "BATCH_STATE_PENDING"
    return "BATCH_STATE_RUNNING"


def _rpc_status(outcome: Outcome) -> Json:
    """A failed request's error as the ``google.rpc.Status`` a batch reports it with."""
    error = outcome.body.get("error")
    message = error.get("message") if isinstance(error, Mapping) else None
    return {
        "code": _RPC_CODES.get(outcome.status, 13 if outcome.status >= 500 else 2),
        "message": message if isinstance(message, str) else "Internal error encountered.",
    }


class GeminiBatchAPI:
    """The handlers of the Gemini batch and file endpoints."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx

    # -- batches ---------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        """``POST /{version}/models/{model}:batchGenerateContent``."""
        ctx = self._ctx
        model = request.match_info["model"]
        raw = await request.read()
        body = await json_body(request)
        batch = proto_field(body, "batch") if body is not None else None
        config = proto_field(batch, "inputConfig")
        if not isinstance(config, Mapping):
            message = "Invalid JSON payload: 'batch.inputConfig' is required."
            return self._error(request, 400, message)
        file_name = proto_field(config, "fileName")
        if file_name is not None:
            parsed = self._file_requests(file_name)
        else:
            if len(raw) > PROVIDER_MAX_BYTES["gemini"]:
                message = (
                    f"Request payload size exceeds the limit: {PROVIDER_MAX_BYTES['gemini']} "
                    f"bytes. Upload the requests as a file for larger batches."
                )
                return self._error(request, 400, message)
            parsed = _inline_requests(proto_field(config, "requests"))
        if isinstance(parsed, str):
            return self._error(request, 400, parsed)
        cap = request_cap("gemini", ctx.config)
        if cap is not None and len(parsed) > cap:
            message = f"The batch has {len(parsed)} requests, more than the {cap} allowed."
            return self._error(request, 400, message)
        if not parsed:
            return self._error(request, 400, "The batch must contain at least one request.")
        version = request.match_info["version"]
        collection = request.match_info["collection"]
        job = ctx.new_job(
            provider="gemini",
            job_id=new_id("batches/", 36, lower=True),
            model=model,
            api_key=api_key(request),
            wire=GEMINI,
            path=f"/{version}/{collection}/{model}:generateContent",
            requests=parsed,
            details={
                "display_name": proto_field(batch, "displayName") or "",
                "model": f"{collection}/{model}",
                "input_file": file_name,
                "version": version,
            },
        )
        return self._ok(request, self._render(job, request, fresh=True), model=model)

    def _file_requests(self, file_name: Any) -> list[tuple[str, Mapping[str, Any], Json]] | str:
        stored = self._ctx.files.get("gemini", str(file_name))
        if stored is None:
            return f"Input file {file_name!r} does not exist or you do not have access to it."
        if len(stored.data) > PROVIDER_MAX_BYTES["gemini-file"]:
            return f"The input file is larger than {PROVIDER_MAX_BYTES['gemini-file']} bytes."
        parsed: list[tuple[str, Mapping[str, Any], Json]] = []
        for number, text in enumerate(stored.data.decode("utf-8", "replace").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                return f"Line {number} of {file_name} is not valid JSON."
            request = proto_field(line, "request")
            if not isinstance(request, Mapping):
                return f"Line {number} of {file_name} has no 'request' object."
            key = proto_field(line, "key")
            custom_id = str(key) if key is not None else str(number - 1)
            parsed.append((custom_id, request, {"key": key}))
        return parsed

    async def get(self, request: web.Request) -> web.Response:
        """``GET /{version}/batches/{id}``."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        return self._ok(request, self._render(job, request), model=job.model)

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /{version}/batches/{id}:cancel``: the job reads as cancelled from then on."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        self._ctx.cancel(job)
        return self._ok(request, {}, model=job.model)

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /{version}/batches/{id}``: forgets the job (it does not cancel it)."""
        job = self._job(request)
        if job is None:
            return self._missing(request)
        job.deleted = True
        return self._ok(request, {}, model=job.model)

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /{version}/batches``, newest first (``pageSize``, ``pageToken``)."""
        ctx = self._ctx
        jobs = ctx.store.listing("gemini", ctx.now())
        try:
            size = int(request.query.get("pageSize", 50)) or 50
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return self._error(request, 400, "Invalid pageSize or pageToken.")
        page = jobs[start : start + size]
        body: Json = {"operations": [self._render(job, request) for job in page]}
        if start + size < len(jobs):
            body["nextPageToken"] = str(start + size)
        return self._ok(request, body)

    def _job(self, request: web.Request) -> BatchJob | None:
        name = f"batches/{request.match_info['id']}"
        return self._ctx.store.get("gemini", name, self._ctx.now())

    def _missing(self, request: web.Request) -> web.Response:
        message = f"Batch batches/{request.match_info['id']} not found."
        return self._error(request, 404, message)

    def _render(self, job: BatchJob, request: web.Request, *, fresh: bool = False) -> Json:
        details = job.details
        counts = job.counts()
        answered = 0 if fresh else counts["succeeded"] + counts["errored"]
        updated = job.ended_at if job.ended_at is not None else job.created_at
        if job.done and not fresh:
            updated = max(outcome.done_at for _, outcome in job.outcomes())
        metadata: Json = {
            "@type": _BATCH_TYPE,
            "model": details["model"],
            "displayName": details["display_name"],
            "createTime": rfc3339(job.created_wall),
            "updateTime": rfc3339(job.wall(updated)),
            "batchStats": {
                "requestCount": str(len(job.items)),
                "successfulRequestCount": str(0 if fresh else counts["succeeded"]),
                "failedRequestCount": str(0 if fresh else counts["errored"]),
                "pendingRequestCount": str(len(job.items) - answered),
            },
            "state": gemini_state(job, fresh=fresh),
            "name": job.id,
        }
        if details["input_file"] is not None:
            metadata["inputConfig"] = {"fileName": details["input_file"]}
        operation: Json = {"name": job.id, "metadata": metadata}
        if job.ended and not fresh:
            metadata["endTime"] = rfc3339(job.wall(job.ended_at or job.created_at))
            operation["done"] = True
            output = self._output(job, request) if answered else None
            if output is not None:
                metadata["output"] = output
                operation["response"] = {"@type": _OUTPUT_TYPE, **output}
        return operation

    def _output(self, job: BatchJob, request: web.Request) -> Json:
        """The results of an ended job: inline responses, or a results file (written once)."""
        answered = [
            (item, outcome)
            for item, outcome in job.outcomes()
            if outcome.kind in ("succeeded", "errored")
        ]
        if job.details["input_file"] is None:
            responses: list[Json] = []
            for item, outcome in answered:
                entry: Json = (
                    {"response": outcome.body}
                    if outcome.kind == "succeeded"
                    else {"error": _rpc_status(outcome)}
                )
                if "metadata" in item.extra:
                    entry["metadata"] = item.extra["metadata"]
                responses.append(entry)
            return {"inlinedResponses": {"inlinedResponses": responses}}
        name = job.details.get("responses_file")
        if name is None:
            lines = []
            for item, outcome in answered:
                line: Json = {"key": item.extra.get("key", item.custom_id)}
                if outcome.kind == "succeeded":
                    line["response"] = outcome.body
                else:
                    line["error"] = _rpc_status(outcome)
                lines.append(json.dumps(line))
            stored = self._ctx.files.add(
                StoredFile(
                    provider="gemini",
                    id=f"files/batch-{job.id.removeprefix('batches/')}",
                    filename=f"{job.id}-responses",
                    data=("\n".join(lines) + "\n").encode(),
                    created_wall=job.wall(job.ended_at or job.created_at),
                    mime_type="application/jsonl",
                    source="generated",
                )
            )
            name = job.details["responses_file"] = stored.id
        return {"responsesFile": name}

    # -- files -----------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /upload/{version}/files``: start a resumable upload, or send a chunk of one."""
        command = request.headers.get("X-Goog-Upload-Command", "").lower()
        if "start" in command:
            return await self._upload_start(request)
        upload_id = request.query.get("upload_id", "")
        pending = self._ctx.files.uploads.get(upload_id)
        if pending is None:
            return self._upload_error(request, 404, f"No upload session {upload_id!r}.")
        offset = request.headers.get("X-Goog-Upload-Offset", "")
        if offset != str(len(pending.data)):
            message = f"Upload offset {offset!r} does not match the {len(pending.data)} received."
            return self._upload_error(request, 400, message)
        pending.data.extend(await request.read())
        if "finalize" not in command:
            return self._ctx.data(
                request, "gemini", b"", "text/plain", {"X-Goog-Upload-Status": "active"}
            )
        del self._ctx.files.uploads[upload_id]
        if len(pending.data) != pending.size:
            message = f"Received {len(pending.data)} bytes, but {pending.size} were declared."
            return self._upload_error(request, 400, message)
        stored = self._ctx.files.add(
            StoredFile(
                provider="gemini",
                id=pending.name or new_id("files/", 12, lower=True),
                filename=pending.display_name,
                data=bytes(pending.data),
                created_wall=self._ctx.wall_now(),
                mime_type=pending.mime_type,
            )
        )
        body = {"file": self._file_object(stored, request)}
        return self._ok(request, body, headers={"X-Goog-Upload-Status": "final"})

    async def _upload_start(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        file = proto_field(body, "file") if body is not None else None
        file = file if isinstance(file, Mapping) else {}
        headers = request.headers
        try:
            size = int(headers.get("X-Goog-Upload-Header-Content-Length", "0"))
        except ValueError:
            return self._upload_error(request, 400, "Invalid upload content length.")
        name = proto_field(file, "name")
        if isinstance(name, str) and self._ctx.files.get("gemini", name) is not None:
            return self._upload_error(request, 409, f"File {name} already exists.")
        mime = headers.get("X-Goog-Upload-Header-Content-Type") or proto_field(file, "mimeType")
        upload_id = new_id("", 32)
        self._ctx.files.uploads[upload_id] = PendingUpload(
            display_name=str(proto_field(file, "displayName") or ""),
            mime_type=str(mime or "application/octet-stream"),
            size=size,
            name=name if isinstance(name, str) else None,
        )
        version = request.match_info["version"]
        url = f"{origin(request)}/upload/{version}/files?upload_id={upload_id}"
        return self._ok(
            request,
            {},
            headers={
                "X-Goog-Upload-URL": f"{url}&upload_protocol=resumable",
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-Chunk-Granularity": _CHUNK_GRANULARITY,
            },
        )

    def _upload_error(self, request: web.Request, status: int, message: str) -> web.Response:
        # The status header stops google-genai retrying the chunk before it raises the error.
        headers = {"X-Goog-Upload-Status": "final"}
        return self._ctx.json(request, "gemini", status, error_body(status, message), headers)

    async def file_get(self, request: web.Request) -> web.Response:
        """``GET /{version}/files/{id}``."""
        stored = self._file(request)
        if stored is None:
            return self._no_file(request)
        return self._ok(request, self._file_object(stored, request))

    async def file_delete(self, request: web.Request) -> web.Response:
        """``DELETE /{version}/files/{id}``."""
        name = f"files/{request.match_info['id']}"
        if not self._ctx.files.delete("gemini", name):
            return self._no_file(request)
        return self._ok(request, {})

    async def file_list(self, request: web.Request) -> web.Response:
        """``GET /{version}/files``, newest first (``pageSize``, ``pageToken``)."""
        files = self._ctx.files.listing("gemini")
        try:
            size = int(request.query.get("pageSize", 10)) or 10
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return self._error(request, 400, "Invalid pageSize or pageToken.")
        body: Json = {"files": [self._file_object(f, request) for f in files[start : start + size]]}
        if start + size < len(files):
            body["nextPageToken"] = str(start + size)
        return self._ok(request, body)

    async def file_download(self, request: web.Request) -> web.Response:
        """``GET /{version}/files/{id}:download?alt=media``: only generated files."""
        stored = self._file(request)
        if stored is None:
            return self._no_file(request)
        if stored.source != "generated":
            message = "Only generated files can be downloaded; uploaded files cannot."
            return self._error(request, 400, message)
        return self._ctx.data(request, "gemini", stored.data, stored.mime_type)

    def _file(self, request: web.Request) -> StoredFile | None:
        return self._ctx.files.get("gemini", f"files/{request.match_info['id']}")

    def _no_file(self, request: web.Request) -> web.Response:
        message = _NO_FILE.format(name=request.match_info["id"])
        return self._error(request, 403, message)

    def _file_object(self, stored: StoredFile, request: web.Request) -> Json:
        version = request.match_info.get("version", "v1beta")
        base = origin(request)
        digest = hashlib.sha256(stored.data).hexdigest().encode()
        body: Json = {
            "name": stored.id,
            "displayName": stored.filename,
            "mimeType": stored.mime_type,
            "sizeBytes": str(len(stored.data)),
            "createTime": rfc3339(stored.created_wall),
            "updateTime": rfc3339(stored.created_wall),
            "expirationTime": rfc3339(stored.created_wall + _FILE_LIFETIME),
            "sha256Hash": base64.b64encode(digest).decode(),
            "uri": f"{base}/{version}/{stored.id}",
            "state": "ACTIVE",
            "source": stored.source.upper(),
        }
        if stored.source == "generated":
            body["downloadUri"] = f"{base}/download/{version}/{stored.id}:download?alt=media"
        return body

    # -- responses -------------------------------------------------------------------------

    def _ok(
        self,
        request: web.Request,
        body: Json,
        *,
        model: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return self._ctx.json(request, "gemini", 200, body, headers, model=model)

    def _error(self, request: web.Request, status: int, message: str) -> web.Response:
        return self._ctx.json(request, "gemini", status, error_body(status, message))


def _inline_requests(requests: Any) -> list[tuple[str, Mapping[str, Any], Json]] | str:
    entries = proto_field(requests, "requests")
    if not isinstance(entries, list):
        return "Invalid JSON payload: 'batch.inputConfig.requests.requests' must be a list."
    parsed: list[tuple[str, Mapping[str, Any], Json]] = []
    for index, entry in enumerate(entries):
        request = proto_field(entry, "request")
        if not isinstance(request, Mapping):
            return f"batch.inputConfig.requests.requests[{index}].request is required."
        metadata = proto_field(entry, "metadata")
        extra: Json = {}
        custom_id = str(index)
        if isinstance(metadata, Mapping):
            extra["metadata"] = dict(metadata)
            if metadata.get("key") is not None:
                custom_id = str(metadata["key"])
        parsed.append((custom_id, request, extra))
    return parsed
