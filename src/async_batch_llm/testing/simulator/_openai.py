"""OpenAI chat completions (``POST /v1/chat/completions``), plain or streamed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from async_batch_llm.testing.simulator._formats import go_duration, retry_after_headers
from async_batch_llm.testing.simulator._limits import LimitState
from async_batch_llm.testing.simulator._request import Provider, ProviderRequest
from async_batch_llm.testing.simulator._text import count_text_chars, estimate_tokens, text_of_parts
from async_batch_llm.testing.simulator._wire import Json, ReplyContent, Usage, pick_tool, sse

__all__ = ["OpenAIWire"]

_ERROR_TYPES = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class OpenAIWire:
    """Reads chat-completion requests and writes OpenAI-shaped replies and errors."""

    provider: Provider = "openai"
    request_id_header: str | None = "x-request-id"

    def parse(
        self, body: Mapping[str, Any], *, model: str, api_key: str, path: str, sequence: int
    ) -> ProviderRequest:
        """Read the messages, output limit, response format and forced tool of a request."""
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        tools = body.get("tools")
        tools = tools if isinstance(tools, list) else []
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        schema, json_output = _response_format(body.get("response_format"))
        tool_name, tool_schema = _forced_tool(tools, body.get("tool_choice"))
        return ProviderRequest(
            provider="openai",
            model=str(body.get("model") or model),
            api_key=api_key,
            path=path,
            body=body,
            prompt=_last_user_text(messages),
            prompt_tokens=estimate_tokens(count_text_chars(messages, tools)),
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            output_schema=tool_schema if tool_name else schema,
            tool_name=tool_name,
            json_output=json_output or tool_name is not None,
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
        """A ``chat.completion`` with text content, or a tool call when one is forced."""
        text = content if isinstance(content, str) else json.dumps(content)
        message: Json
        if request.tool_name is not None:
            message = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": f"call_sim{request.sequence:08d}",
                        "type": "function",
                        "function": {"name": request.tool_name, "arguments": text},
                    }
                ],
            }
            finish_reason = "tool_calls"
        else:
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            finish_reason = "length" if truncated else "stop"
        return {
            "id": f"chatcmpl-sim{request.sequence:08d}",
            "object": "chat.completion",
            "created": int(created),
            "model": request.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.prompt_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_simulator",
        }

    def stream_body(self, request: ProviderRequest, reply: Json) -> str:
        """``chat.completion.chunk`` events: role, content or tool call, finish, usage, DONE.

        The usage chunk is sent only when ``stream_options.include_usage`` asks for it.
        """
        choice = reply["choices"][0]
        message = choice["message"]
        base = {key: reply[key] for key in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        deltas: list[Json] = [{"role": "assistant", "content": ""}]
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            deltas.append({"tool_calls": [{"index": 0, **call}]})
        else:
            deltas.append({"content": message["content"]})
        events = [
            sse({**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]})
            for d in deltas
        ]
        finish = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        events.append(sse({**base, "choices": [finish]}))
        options = request.body.get("stream_options")
        if isinstance(options, Mapping) and options.get("include_usage"):
            events.append(sse({**base, "choices": [], "usage": reply["usage"]}))
        events.append(sse("[DONE]"))
        return "".join(events)

    def rate_limited_body(
        self,
        request: ProviderRequest,
        dimension: Literal["requests", "tokens"],
        state: LimitState | None,
        requested: int,
        retry_after: float | None,
    ) -> Json:
        """OpenAI's 429: ``type`` names the dimension, ``code`` is ``rate_limit_exceeded``."""
        unit = "requests per min (RPM)" if dimension == "requests" else "tokens per min (TPM)"
        message = f"Rate limit reached for {request.model} in organization org-simulator on {unit}"
        if state is not None:
            used = state.limit - state.remaining
            message += f": Limit {state.limit}, Used {used}, Requested {requested}."
        else:
            message += "."
        if retry_after is not None:
            message += f" Please try again in {go_duration(retry_after)}."
        message += " Visit https://platform.openai.com/account/rate-limits to learn more."
        return _error(message, dimension, "rate_limit_exceeded")

    def too_large_body(self, request: ProviderRequest, limit: int, requested: int) -> Json:
        """OpenAI's 429 for a request above the whole TPM limit."""
        message = (
            f"Request too large for {request.model} in organization org-simulator on tokens per "
            f"min (TPM): Limit {limit}, Requested {requested}. The input or output "
            f"tokens must be reduced in order to run successfully."
        )
        return _error(message, "tokens", "rate_limit_exceeded")

    def quota_body(self, request: ProviderRequest, quota: int) -> tuple[int, Json]:
        """OpenAI's hard quota exhaustion: 429 with code ``insufficient_quota``."""
        message = (
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return 429, _error(message, "insufficient_quota", "insufficient_quota")

    def status_body(self, status: int, message: str | None = None) -> Json:
        """OpenAI's error envelope for ``status``."""
        if status == 429:
            return _error(message or "Rate limit reached.", "requests", "rate_limit_exceeded")
        error_type, code, default = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        return _error(message or default, error_type, code)

    def limit_headers(
        self, requests: LimitState | None, tokens: LimitState | None, wall_now: float
    ) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets in Go duration form."""
        headers: dict[str, str] = {}
        for suffix, state in (("requests", requests), ("tokens", tokens)):
            if state is not None:
                headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{suffix}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{suffix}"] = go_duration(state.reset_seconds)
        return headers

    def retry_headers(self, retry_after: float) -> dict[str, str]:
        """``retry-after`` and ``retry-after-ms``."""
        return retry_after_headers(retry_after)


def _error(message: str, error_type: str, code: str | None) -> Json:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


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


def _response_format(value: Any) -> tuple[Mapping[str, Any] | None, bool]:
    if not isinstance(value, Mapping):
        return None, False
    kind = value.get("type")
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return (schema if isinstance(schema, Mapping) else None), True
    return None, kind == "json_object"


def _forced_tool(tools: list[Any], choice: Any) -> tuple[str | None, Mapping[str, Any] | None]:
    functions: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            functions[function["name"]] = parameters if isinstance(parameters, Mapping) else {}
    if not functions:
        return None, None
    name: str | None = None
    if choice == "required":
        name = pick_tool(list(functions))
    elif isinstance(choice, Mapping):
        named = choice.get("function")
        if isinstance(named, Mapping) and named.get("name") in functions:
            name = str(named["name"])
        elif choice.get("type") == "allowed_tools":
            allowed = choice.get("allowed_tools")
            if isinstance(allowed, Mapping) and allowed.get("mode") == "required":
                name = pick_tool(list(functions), _function_names(allowed.get("tools")) or None)
    if name is None:
        return None, None
    return name, functions[name]


def _function_names(tools: Any) -> list[str]:
    names: list[str] = []
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names
