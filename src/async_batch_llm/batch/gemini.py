"""Gemini Batch Mode through google-genai's ``client.aio.batches``, for `GeminiStrategy`.

Requests are sent inline (``src=[...]``), each the ``generateContent`` request an online
call of `GeminiModel` would make, tagged with its custom id in ``metadata``; results come
back inline in the job (``dest.inlined_responses``), matched by that tag (by position when
a response carries none). Inline jobs are limited to 20 MB, which `max_bytes` enforces.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from async_batch_llm._internal.values import LLMResponse, TokenUsage
from async_batch_llm.batch.base import (
    BatchAPI,
    BatchJob,
    BatchRequestNotRun,
    EncodedRequest,
    JobState,
    RequestResult,
)

__all__ = ["GeminiBatchAPI"]

#: The most bytes of inline requests the Gemini API accepts in one job.
INLINE_MAX_BYTES: Final = 20_000_000
#: Requests per job: the API caps a job by bytes, not by count.
MAX_REQUESTS: Final = 100_000
_ENDED: Final = {
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
_UNRUN: Final = {"cancelled": "canceled", "expired": "expired"}


class GeminiBatchAPI(BatchAPI[Any]):
    """The Gemini API's batch mode for the calls of one `GeminiStrategy`.

    Args:
        client: The ``google.genai.Client`` (Gemini Developer API).
        model: The model name.
        request_config: The ``generateContent`` config of every request.
        parse: Turns a request's `LLMResponse` into the item's output.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        request_config: dict[str, Any],
        parse: Callable[[LLMResponse], Any],
    ) -> None:
        self._client = client
        self._config = request_config
        self._parse = parse
        self.provider = "gemini"
        self.model = model.removeprefix("models/")
        # Requests of different accounts never share a job: the key's hash, not the key.
        api_key = getattr(getattr(client, "_api_client", None), "api_key", None)
        account = hashlib.sha256(str(api_key).encode()).hexdigest()[:16]
        self.group = f"gemini:{self.model}:{account}"
        self.max_requests = MAX_REQUESTS
        self.max_bytes = INLINE_MAX_BYTES

    async def encode(self, custom_id: str, prompt: str) -> EncodedRequest:
        body = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "config": self._config,
            "metadata": {"key": custom_id},
        }
        size = len(json.dumps(body, default=str).encode())
        return EncodedRequest(custom_id, size, body)

    async def submit(self, requests: Sequence[EncodedRequest]) -> BatchJob:
        job = await self._client.aio.batches.create(
            model=self.model,
            src=[request.body for request in requests],
            config={"display_name": "async-batch-llm"},
        )
        keys = [request.custom_id for request in requests]
        return self._job(job, time.time(), keys)

    async def refresh(self, job: BatchJob) -> BatchJob:
        found = await self._client.aio.batches.get(name=job.id)
        return self._job(found, job.submitted_at, job.handle.get("keys", []))

    async def results(self, job: BatchJob) -> list[RequestResult]:
        found = await self._client.aio.batches.get(name=job.id)
        keys: list[str] = job.handle.get("keys", [])
        status = _ENDED.get(_state_name(found), "failed")
        responses = getattr(getattr(found, "dest", None), "inlined_responses", None) or []
        results = []
        for position, response in enumerate(responses):
            metadata = getattr(response, "metadata", None) or {}
            key = metadata.get("key") or (keys[position] if position < len(keys) else None)
            if key is None:
                continue
            outcome = "errored" if getattr(response, "error", None) is not None else "succeeded"
            results.append(RequestResult(key, outcome, response))  # type: ignore[arg-type]
        unrun = _UNRUN.get(status)
        if unrun is not None:
            answered = {result.custom_id for result in results}
            results.extend(
                RequestResult(key, unrun, None)  # type: ignore[arg-type]
                for key in keys
                if key not in answered
            )
        return results

    async def cancel(self, job: BatchJob) -> BatchJob:
        await self._client.aio.batches.cancel(name=job.id)
        return await self.refresh(job)

    def decode(self, result: RequestResult, prompt: str) -> tuple[Any, TokenUsage]:
        from async_batch_llm.llm_strategies import _record_failed_usage
        from async_batch_llm.models import response_of

        if result.status in ("expired", "canceled"):
            raise BatchRequestNotRun(
                f"The Gemini batch job ended the request unrun ({result.status})",
                status=result.status,
            )
        inlined = result.body
        error = getattr(inlined, "error", None)
        if error is not None:
            raise _api_error(error)
        response = response_of(self.model, inlined.response)
        usage: TokenUsage = response.token_usage
        try:
            output = self._parse(response)
        except Exception as exc:
            # As online: the parser's error carries the tokens the request was billed.
            _record_failed_usage(exc, usage)
            raise
        return output, usage

    def _job(self, found: Any, submitted_at: float, keys: list[str]) -> BatchJob:
        name = _state_name(found)
        state: JobState = "ended" if name in _ENDED else "in_progress"
        if name == "JOB_STATE_CANCELLING":
            state = "canceling"
        return BatchJob(
            id=str(found.name),
            provider=self.provider,
            model=self.model,
            group=self.group,
            state=state,
            request_count=len(keys),
            submitted_at=submitted_at,
            handle={"keys": keys},
            provider_status=name,
        )


def _state_name(job: Any) -> str:
    state = getattr(job, "state", None)
    return str(getattr(state, "name", state) or "JOB_STATE_UNSPECIFIED")


def _api_error(error: Any) -> Exception:
    """google-genai's error for a request's ``JobError`` (its ``code`` is the HTTP status)."""
    from google.genai import errors

    code = getattr(error, "code", None)
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    body = {"error": {"code": status, "message": str(getattr(error, "message", "") or "")}}
    if status >= 500:
        return errors.ServerError(status, body)
    return errors.ClientError(status, body)
