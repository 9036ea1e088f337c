"""Gemini ``generateContent`` and ``streamGenerateContent`` (``/{version}/models/{model}:...``).

Protobuf JSON accepts both ``camelCase`` and ``snake_case`` field names, and clients send both
(google-genai converts its own types to camelCase but passes dict tool declarations through as
``parameters_json_schema``), so every field is looked up under both spellings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from async_batch_llm.testing.simulator._formats import proto_duration
from async_batch_llm.testing.simulator._limits import LimitState
from async_batch_llm.testing.simulator._request import Provider, ProviderRequest
from async_batch_llm.testing.simulator._text import (
    count_text_chars,
    estimate_tokens,
    json_object_or_none,
    text_of_parts,
)
from async_batch_llm.testing.simulator._wire import Json, ReplyContent, Usage, pick_tool, sse

__all__ = ["GeminiWire", "error_body", "proto_field"]

_STATUSES = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_SAFETY_RATINGS = [
    {"category": category, "probability": "NEGLIGIBLE"}
    for category in (
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    )
]
_RATE_LIMIT_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"
_QUOTAS = {
    "requests": (
        "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
        "GenerateRequestsPerMinutePerProjectPerModel",
    ),
    "tokens": (
        "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
        "GenerateContentPaidTierInputTokensPerModelPerMinute",
    ),
    "daily": (
        "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
        "GenerateRequestsPerDayPerProjectPerModel",
    ),
}


def proto_field(holder: Any, camel: str) -> Any:
    """``holder[camel]``, falling back to its snake_case spelling; ``None`` when absent."""
    if not isinstance(holder, Mapping):
        return None
    value = holder.get(camel)
    if value is None:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
        value = holder.get(snake)
    return value


def error_body(status: int, message: str | None = None, details: list[Json] | None = None) -> Json:
    """Google's error envelope: ``{"error": {"code", "message", "status", "details"?}}``."""
    name, default = _STATUSES.get(status, ("INTERNAL" if status >= 500 else "UNKNOWN", "Error."))
    error: Json = {"code": status, "message": message or default, "status": name}
    if details:
        error["details"] = details
    return {"error": error}


class GeminiWire:
    """Reads ``generateContent`` requests and writes Gemini-shaped replies and errors."""

    provider: Provider = "gemini"
    request_id_header: str | None = None

    def parse(
        self, body: Mapping[str, Any], *, model: str, api_key: str, path: str, sequence: int
    ) -> ProviderRequest:
        """Read contents, generation config, forced function and cached content of a request."""
        contents = proto_field(body, "contents")
        contents = contents if isinstance(contents, list) else []
        tools = proto_field(body, "tools")
        tools = tools if isinstance(tools, list) else []
        config = proto_field(body, "generationConfig")
        max_tokens = proto_field(config, "maxOutputTokens")
        tool_name, tool_schema = _forced_function(tools, proto_field(body, "toolConfig"))
        schema = proto_field(config, "responseJsonSchema") or proto_field(config, "responseSchema")
        json_mime = proto_field(config, "responseMimeType") == "application/json"
        cached = proto_field(body, "cachedContent")
        return ProviderRequest(
            provider="gemini",
            model=model,
            api_key=api_key,
            path=path,
            body=body,
            prompt=_last_user_text(contents),
            prompt_tokens=estimate_tokens(
                count_text_chars(contents, proto_field(body, "systemInstruction"), tools)
            ),
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            output_schema=tool_schema if tool_name else _mapping_or_none(schema),
            tool_name=tool_name,
            json_output=tool_name is not None or json_mime or schema is not None,
            cached_content=cached if isinstance(cached, str) else None,
            stream=path.endswith(":streamGenerateContent"),
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
        """One candidate with a text part, or a ``functionCall`` part when a function is forced.

        A forced function whose reply is not a JSON object is answered with text instead.
        """
        args = content if isinstance(content, Mapping) else None
        if request.tool_name is not None and isinstance(content, str):
            args = json_object_or_none(content)
        part: Json
        if request.tool_name is not None and args is not None:
            part = {"functionCall": {"name": request.tool_name, "args": dict(args)}}
        else:
            part = {"text": content if isinstance(content, str) else json.dumps(content)}
        metadata: Json = {
            "promptTokenCount": usage.prompt_tokens,
            "candidatesTokenCount": usage.output_tokens,
            "totalTokenCount": usage.prompt_tokens + usage.output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt_tokens}],
        }
        if usage.cached_tokens:
            metadata["cachedContentTokenCount"] = usage.cached_tokens
            metadata["cacheTokensDetails"] = [
                {"modality": "TEXT", "tokenCount": usage.cached_tokens}
            ]
        return {
            "candidates": [
                {
                    "content": {"parts": [part], "role": "model"},
                    "finishReason": "MAX_TOKENS" if truncated else "STOP",
                    "index": 0,
                    "safetyRatings": _SAFETY_RATINGS,
                }
            ],
            "usageMetadata": metadata,
            "modelVersion": request.model,
            "responseId": f"sim{request.sequence:08d}",
        }

    def stream_body(self, request: ProviderRequest, reply: Json) -> str:
        """The whole response as one ``data:`` event (``alt=sse``)."""
        return sse(reply)

    def rate_limited_body(
        self,
        request: ProviderRequest,
        dimension: Literal["requests", "tokens"],
        state: LimitState | None,
        requested: int,
        retry_after: float | None,
    ) -> Json:
        """429 ``RESOURCE_EXHAUSTED`` with ``QuotaFailure``, ``Help`` and ``RetryInfo`` details."""
        return _quota_error(request, dimension, state, retry_after)

    def too_large_body(self, request: ProviderRequest, limit: int, requested: int) -> Json:
        """429 ``RESOURCE_EXHAUSTED`` without a retry hint: the request never fits a window."""
        state = LimitState(limit=limit, remaining=0, reset_seconds=0.0)
        return _quota_error(request, "tokens", state, None)

    def quota_body(self, request: ProviderRequest, quota: int) -> tuple[int, Json]:
        """429 ``RESOURCE_EXHAUSTED`` whose ``QuotaFailure`` names a per-day quota id."""
        state = LimitState(limit=quota, remaining=0, reset_seconds=0.0)
        return 429, _quota_error(request, "daily", state, None)

    def status_body(self, status: int, message: str | None = None) -> Json:
        """Google's error envelope for ``status``."""
        return error_body(status, message)

    def limit_headers(
        self, requests: LimitState | None, tokens: LimitState | None, wall_now: float
    ) -> dict[str, str]:
        """None: the Gemini API sends no rate-limit headers."""
        return {}

    def retry_headers(self, retry_after: float) -> dict[str, str]:
        """None: Gemini carries its retry hint in the error body's ``RetryInfo``."""
        return {}


def _quota_error(
    request: ProviderRequest,
    quota: Literal["requests", "tokens", "daily"],
    state: LimitState | None,
    retry_after: float | None,
) -> Json:
    metric, quota_id = _QUOTAS[quota]
    limit = state.limit if state is not None else 0
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        f"information on this error, head to: {_RATE_LIMIT_DOCS}.\n"
        f"* Quota exceeded for metric: {metric}, limit: {limit}, model: {request.model}"
    )
    if retry_after is not None:
        message += f"\nPlease retry in {retry_after:.3f}s."
    details: list[Json] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": request.model},
                    "quotaValue": str(limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMIT_DOCS}
            ],
        },
    ]
    if retry_after is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": proto_duration(retry_after),
            }
        )
    return error_body(429, message, details)


def _mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _last_user_text(contents: list[Any]) -> str:
    for content in reversed(contents):
        if isinstance(content, Mapping) and content.get("role", "user") == "user":
            parts = content.get("parts")
            text = text_of_parts(parts) if isinstance(parts, list) else ""
            if text:
                return text
    return ""


def _forced_function(
    tools: list[Any], tool_config: Any
) -> tuple[str | None, Mapping[str, Any] | None]:
    calling = proto_field(tool_config, "functionCallingConfig")
    if proto_field(calling, "mode") != "ANY":
        return None, None
    schemas: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        declarations = proto_field(tool, "functionDeclarations")
        for declaration in declarations if isinstance(declarations, list) else []:
            name = proto_field(declaration, "name")
            if isinstance(name, str):
                schema = proto_field(declaration, "parametersJsonSchema") or proto_field(
                    declaration, "parameters"
                )
                schemas[name] = schema if isinstance(schema, Mapping) else {}
    allowed = proto_field(calling, "allowedFunctionNames")
    name = pick_tool(list(schemas), allowed if isinstance(allowed, list) else None)
    if name is None:
        return None, None
    return name, schemas[name]
