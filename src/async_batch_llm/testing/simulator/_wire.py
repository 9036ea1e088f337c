"""The interface each provider's wire format implements."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from async_batch_llm.testing.simulator._limits import LimitState
from async_batch_llm.testing.simulator._request import Provider, ProviderRequest

__all__ = ["Json", "ReplyContent", "Usage", "Wire", "pick_tool", "sse"]

Json: TypeAlias = dict[str, Any]
ReplyContent: TypeAlias = str | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported with a reply."""

    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0


class Wire(Protocol):
    """Parses one provider's requests and writes its replies, errors and headers."""

    provider: Provider
    request_id_header: str | None

    def parse(
        self, body: Mapping[str, Any], *, model: str, api_key: str, path: str, sequence: int
    ) -> ProviderRequest:
        """Read a generation request body (``model`` is the one in the URL, if any)."""
        ...

    def reply_body(
        self,
        request: ProviderRequest,
        content: ReplyContent,
        usage: Usage,
        *,
        truncated: bool,
        created: float,
    ) -> Json:
        """A successful generation response carrying ``content`` (text or JSON object)."""
        ...

    def stream_body(self, request: ProviderRequest, reply: Json) -> str:
        """``reply`` (a `reply_body`) as the server-sent events of a streamed response."""
        ...

    def rate_limited_body(
        self,
        request: ProviderRequest,
        dimension: Literal["requests", "tokens"],
        state: LimitState | None,
        requested: int,
        retry_after: float | None,
    ) -> Json:
        """The 429 body for a request over its requests- or tokens-per-window limit."""
        ...

    def too_large_body(self, request: ProviderRequest, limit: int, requested: int) -> Json:
        """The 429 body for a request needing more tokens than a whole window allows."""
        ...

    def quota_body(self, request: ProviderRequest, quota: int) -> tuple[int, Json]:
        """Status and body of a hard quota exhaustion that waiting does not cure."""
        ...

    def status_body(self, status: int, message: str | None = None) -> Json:
        """A generic error body for ``status`` (injected failures, 400s, 404s)."""
        ...

    def limit_headers(
        self, requests: LimitState | None, tokens: LimitState | None, wall_now: float
    ) -> dict[str, str]:
        """The provider's rate-limit headers for the current bucket states."""
        ...

    def retry_headers(self, retry_after: float) -> dict[str, str]:
        """Headers carrying a retry hint (empty when the provider puts it in the body)."""
        ...


def pick_tool(names: list[str], allowed: list[str] | None = None) -> str | None:
    """The tool a forced tool call uses: an allowed one, preferring an output tool.

    pydantic-ai names its structured-output tool ``final_result`` (or ``final_result_<Type>``);
    answering with it ends the run instead of looping through function tools.
    """
    candidates = [name for name in names if allowed is None or name in allowed] or names
    for name in candidates:
        if name.startswith("final_result"):
            return name
    return candidates[0] if candidates else None


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event carrying ``data`` as JSON (or verbatim when it is a string)."""
    payload = data if isinstance(data, str) else json.dumps(data)
    prefix = f"event: {event}\n" if event is not None else ""
    return f"{prefix}data: {payload}\n\n"
