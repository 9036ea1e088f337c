"""What the simulator hands to reply hooks, and what hooks may answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = ["Provider", "ProviderRequest", "RawReply", "Reply", "ReplyHook"]

Provider: TypeAlias = Literal["openai", "anthropic", "gemini"]
"""The wire formats the simulator speaks."""


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One generation request as the simulator understood it.

    Attributes:
        provider: The wire format it arrived in.
        model: The model it names.
        api_key: The key it authenticated with (``""`` when it sent none).
        path: The URL path it was sent to.
        body: The request's JSON body, unmodified.
        prompt: Text of the last user message.
        prompt_tokens: Estimated input tokens (about four characters each), including the
            tokens of a Gemini cached content it refers to.
        max_output_tokens: The output limit it asked for, if any.
        output_schema: JSON Schema the reply must follow: the response format's schema or the
            parameters of the tool the request forces, if any.
        tool_name: The tool the request forces the model to call, if any.
        json_output: Whether the reply must be JSON (a JSON response format or a forced tool).
        cached_content: The Gemini cached content it refers to, if any.
        stream: Whether it asked for a server-sent-events stream.
        sequence: 1-based number of this generation request since the simulator started.
        batch_id: The batch job it belongs to, or ``None`` for an online request.
    """

    provider: Provider
    model: str
    api_key: str
    path: str
    body: Mapping[str, Any] = field(repr=False)
    prompt: str
    prompt_tokens: int
    max_output_tokens: int | None = None
    output_schema: Mapping[str, Any] | None = field(default=None, repr=False)
    tool_name: str | None = None
    json_output: bool = False
    cached_content: str | None = None
    stream: bool = False
    sequence: int = 0
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class RawReply:
    """A response sent exactly as given, bypassing the wire format's reply builder.

    Use it for shapes the default replies never produce, e.g. a Gemini candidate blocked for
    safety or an empty ``candidates`` list.
    """

    body: Mapping[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Reply: TypeAlias = str | Mapping[str, Any] | RawReply
"""What a scripted reply or hook answers: text (or raw tool arguments), a JSON object, or a
`RawReply`."""

ReplyHook: TypeAlias = Callable[[ProviderRequest], Reply | None]
"""Called for each admitted generation request; ``None`` means "use the default reply"."""
