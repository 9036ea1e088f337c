"""Reading what aiohttp hands the handlers: bodies, API keys, which provider is calling."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from async_batch_llm.testing.simulator._anthropic import AnthropicWire
from async_batch_llm.testing.simulator._gemini import GeminiWire
from async_batch_llm.testing.simulator._openai import OpenAIWire
from async_batch_llm.testing.simulator._openai_responses import OpenAIResponsesWire
from async_batch_llm.testing.simulator._wire import Wire

__all__ = [
    "ANTHROPIC",
    "GEMINI",
    "OPENAI",
    "OPENAI_RESPONSES",
    "api_key",
    "cache_name",
    "guess_wire",
    "json_body",
]

OPENAI = OpenAIWire()
OPENAI_RESPONSES = OpenAIResponsesWire()
ANTHROPIC = AnthropicWire()
GEMINI = GeminiWire()


async def json_body(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object (``{}`` when empty), or ``None`` when it is not one."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def api_key(request: web.Request) -> str:
    """The caller's key from ``x-goog-api-key``, ``x-api-key``, a bearer token or ``?key=``."""
    headers = request.headers
    key = headers.get("x-goog-api-key") or headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.query.get("key", "")


def cache_name(name: str) -> str:
    """``name`` as a full ``cachedContents/<id>`` resource name."""
    return name if name.startswith("cachedContents/") else f"cachedContents/{name}"


def guess_wire(request: web.Request) -> Wire:
    """The provider a request to an unknown route most likely meant, from headers and path."""
    headers, path = request.headers, request.path
    if (
        "x-goog-api-key" in headers
        or "key" in request.query
        or "cachedContents" in path
        or ":" in path.rsplit("/", 1)[-1]
    ):
        return GEMINI
    if "anthropic-version" in headers or "x-api-key" in headers:
        return ANTHROPIC
    return OPENAI
