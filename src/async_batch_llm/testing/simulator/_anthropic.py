"""Anthropic messages (``POST /v1/messages``), plain or streamed as server-sent events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from async_batch_llm.testing.simulator._formats import retry_after_headers, rfc3339
from async_batch_llm.testing.simulator._limits import LimitState
from async_batch_llm.testing.simulator._request import Provider, ProviderRequest
from async_batch_llm.testing.simulator._text import (
    count_text_chars,
    estimate_tokens,
    json_object_or_none,
    text_of_parts,
)
from async_batch_llm.testing.simulator._wire import Json, ReplyContent, Usage, pick_tool, sse

__all__ = ["AnthropicWire"]

_ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


class AnthropicWire:
    """Reads Messages API requests and writes Anthropic-shaped replies and errors."""

    provider: Provider = "anthropic"
    request_id_header: str | None = "request-id"

    def parse(
        self, body: Mapping[str, Any], *, model: str, api_key: str, path: str, sequence: int
    ) -> ProviderRequest:
        """Read the messages, ``max_tokens``, output format and forced tool of a request."""
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        tools = body.get("tools")
        tools = tools if isinstance(tools, list) else []
        max_tokens = body.get("max_tokens")
        tool_name, tool_schema = _forced_tool(tools, body.get("tool_choice"))
        schema = _output_schema(body)
        return ProviderRequest(
            provider="anthropic",
            model=str(body.get("model") or model),
            api_key=api_key,
            path=path,
            body=body,
            prompt=_last_user_text(messages),
            prompt_tokens=estimate_tokens(count_text_chars(body.get("system"), messages, tools)),
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            output_schema=tool_schema if tool_name else schema,
            tool_name=tool_name,
            json_output=tool_name is not None or schema is not None,
            stream=body.get("stream") is True,
            sequence=sequence,
        )

    def reply_body(
        self,
        request: ProviderRequest,
        content: ReplyContent,
        usage: Usage,
        *,
        truncated: bool,
        created: float,
    ) -> Json:
        """A ``message`` with a text block, or a ``tool_use`` block when a tool is forced.

        A forced tool whose reply is not a JSON object is answered with text instead, the way
        a model that ignores the tool would answer.
        """
        tool_input = content if isinstance(content, Mapping) else None
        if request.tool_name is not None and isinstance(content, str):
            tool_input = json_object_or_none(content)
        block: Json
        if request.tool_name is not None and tool_input is not None:
            block = {
                "type": "tool_use",
                "id": f"toolu_sim{request.sequence:08d}",
                "name": request.tool_name,
                "input": dict(tool_input),
            }
            stop_reason = "tool_use"
        else:
            text = content if isinstance(content, str) else json.dumps(content)
            block = {"type": "text", "text": text}
            stop_reason = "max_tokens" if truncated else "end_turn"
        return {
            "id": f"msg_sim{request.sequence:08d}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": usage.cached_tokens,
                "service_tier": "standard",
            },
        }

    def stream_body(self, request: ProviderRequest, reply: Json) -> str:
        """``message_start``, one content block (start, delta, stop), ``message_delta``, stop."""
        block = reply["content"][0]
        usage = reply["usage"]
        start_usage = {**usage, "output_tokens": 1}
        message = {**reply, "content": [], "stop_reason": None, "usage": start_usage}
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            opening = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": opening},
            ),
            ("ping", {"type": "ping"}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return "".join(sse(data, event) for event, data in events)

    def rate_limited_body(
        self,
        request: ProviderRequest,
        dimension: Literal["requests", "tokens"],
        state: LimitState | None,
        requested: int,
        retry_after: float | None,
    ) -> Json:
        """Anthropic's 429 ``rate_limit_error``."""
        unit = "requests per minute" if dimension == "requests" else "input tokens per minute"
        limit = f"of {state.limit} {unit}" if state is not None else f"for {unit}"
        message = (
            f"This request would exceed the rate limit for your organization {limit}. For "
            f"details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
            f"response headers for current usage. Please reduce the prompt length or the maximum "
            f"tokens requested, or try again later."
        )
        return _error("rate_limit_error", message)

    def too_large_body(self, request: ProviderRequest, limit: int, requested: int) -> Json:
        """Anthropic's 429 for a request above the whole tokens-per-minute limit."""
        message = (
            f"This request would exceed your organization's rate limit of {limit} tokens per "
            f"minute (it needs {requested}). Please reduce the prompt length or the maximum "
            f"tokens requested."
        )
        return _error("rate_limit_error", message)

    def quota_body(self, request: ProviderRequest, quota: int) -> tuple[int, Json]:
        """Anthropic's spend-limit exhaustion: 429 with ``enforced_spend_limit_reached``.

        The anthropic SDK raises it as ``EnforcedSpendLimitReachedError`` (a
        ``RateLimitError`` whose ``error_code`` names the cause).
        """
        body = _error(
            "rate_limit_error",
            "You have reached your specified API usage limits. You will regain access at the "
            "start of the next usage period.",
        )
        body["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
        return 429, body

    def status_body(self, status: int, message: str | None = None) -> Json:
        """Anthropic's error envelope for ``status``."""
        error_type, default = _ERROR_TYPES.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        return _error(error_type, message or default)

    def limit_headers(
        self, requests: LimitState | None, tokens: LimitState | None, wall_now: float
    ) -> dict[str, str]:
        """``anthropic-ratelimit-*`` with RFC 3339 reset times.

        The simulator has one token bucket; the input- and output-token headers mirror it.
        """
        headers: dict[str, str] = {}
        groups = (
            ("requests", requests),
            ("tokens", tokens),
            ("input-tokens", tokens),
            ("output-tokens", tokens),
        )
        for name, state in groups:
            if state is not None:
                headers[f"anthropic-ratelimit-{name}-limit"] = str(state.limit)
                headers[f"anthropic-ratelimit-{name}-remaining"] = str(state.remaining)
                headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(
                    wall_now + state.reset_seconds
                )
        return headers

    def retry_headers(self, retry_after: float) -> dict[str, str]:
        """``retry-after`` and ``retry-after-ms``."""
        return retry_after_headers(retry_after)


def _error(error_type: str, message: str) -> Json:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return text_of_parts(content)
            return ""
    return ""


def _output_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("output_config", "output_format"):
        holder = body.get(key)
        if not isinstance(holder, Mapping):
            continue
        fmt = holder.get("format", holder) if key == "output_config" else holder
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            if isinstance(schema, Mapping):
                return schema
    return None


def _forced_tool(tools: list[Any], choice: Any) -> tuple[str | None, Mapping[str, Any] | None]:
    schemas: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            schema = tool.get("input_schema")
            schemas[tool["name"]] = schema if isinstance(schema, Mapping) else {}
    if not schemas or not isinstance(choice, Mapping):
        return None, None
    name: str | None = None
    if choice.get("type") == "any":
        name = pick_tool(list(schemas))
    elif choice.get("type") == "tool" and choice.get("name") in schemas:
        name = str(choice["name"])
    if name is None:
        return None, None
    return name, schemas[name]
