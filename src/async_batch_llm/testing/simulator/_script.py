"""Replies and failures: the default reply, and those tests queue ahead of requests."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from async_batch_llm.testing.simulator._request import Provider, ProviderRequest, Reply
from async_batch_llm.testing.simulator._schema import example_for_schema
from async_batch_llm.testing.simulator._text import CHARS_PER_TOKEN, estimate_tokens
from async_batch_llm.testing.simulator._wire import ReplyContent

__all__ = ["Fault", "FaultQueue", "ReplyQueue", "default_reply"]


@dataclass(slots=True)
class Fault:
    """An error to answer instead of a reply: ``status``, optionally with a retry hint."""

    status: int
    provider: Provider | None = None
    retry_after: float | None = None
    remaining: int = 1


class FaultQueue:
    """Failures for the next matching generation requests, in the order they were queued."""

    __slots__ = ("_faults",)

    def __init__(self) -> None:
        self._faults: deque[Fault] = deque()

    def __len__(self) -> int:
        return sum(fault.remaining for fault in self._faults)

    def add(self, fault: Fault) -> None:
        """Queue ``fault`` for its next ``remaining`` matching requests."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Drop every queued failure."""
        self._faults.clear()

    def take(self, provider: Provider) -> Fault | None:
        """The first failure meant for ``provider`` (or for any), used up one request at a time."""
        if not self._faults:
            return None
        for fault in self._faults:
            if fault.provider is None or fault.provider == provider:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None


class ReplyQueue:
    """Scripted replies for the next admitted generation requests, in order."""

    __slots__ = ("_replies",)

    def __init__(self) -> None:
        self._replies: deque[tuple[Reply, Provider | None]] = deque()

    def __len__(self) -> int:
        return len(self._replies)

    def add(self, reply: Reply, provider: Provider | None) -> None:
        """Queue ``reply`` for the next request to ``provider`` (or to any)."""
        self._replies.append((reply, provider))

    def clear(self) -> None:
        """Drop every queued reply."""
        self._replies.clear()

    def take(self, provider: Provider) -> Reply | None:
        """The first reply meant for ``provider`` (or for any), removed from the queue."""
        if not self._replies:
            return None
        for index, (reply, wanted) in enumerate(self._replies):
            if wanted is None or wanted == provider:
                del self._replies[index]
                return reply
        return None


def default_reply(call: ProviderRequest) -> tuple[ReplyContent, bool]:
    """The reply when nothing is scripted, and whether it was cut at ``max_output_tokens``.

    JSON valid for the requested schema or forced tool when there is one, a JSON object when
    JSON is asked for without a schema, else ``"Echo: <last user text>"``.
    """
    if call.output_schema is not None:
        value = example_for_schema(call.output_schema)
        if isinstance(value, Mapping):
            return value, False
        # Tool arguments are always an object; a text reply may be any JSON value.
        return ({} if call.tool_name is not None else json.dumps(value)), False
    if call.json_output:
        return {"response": f"Echo: {call.prompt}"}, False
    text = f"Echo: {call.prompt}"
    limit = call.max_output_tokens
    if limit is not None and estimate_tokens(len(text)) > limit:
        return text[: max(limit, 1) * CHARS_PER_TOKEN], True
    return text, False
