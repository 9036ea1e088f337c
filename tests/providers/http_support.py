"""Helpers shared by the provider tests over HTTP (the fixtures live in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic_ai.models import Model

from async_batch_llm import BaseObserver, ProcessingEvent
from async_batch_llm.testing.simulator import Provider, ProviderSimulator

GEMINI_MODEL = "gemini-2.5-flash"
OPENAI_MODEL = "gpt-4o"
ANTHROPIC_MODEL = "claude-sonnet-5"

PydanticAIProvider = Literal["openai", "anthropic", "google"]
LaunchSimulator = Callable[..., Awaitable[ProviderSimulator]]
GeminiClientFactory = Callable[..., Any]
PydanticAIModelFactory = Callable[..., Model]

#: The simulator's wire format behind each pydantic-ai provider (for ``sim.script``).
WIRE: dict[str, Provider] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gemini",
}

#: SDK retry waits short enough for tests (google-genai defaults to seconds).
FAST_GENAI_RETRIES = {"attempts": 3, "initial_delay": 0.001, "max_delay": 0.001, "jitter": 0.0}


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class EventLog(BaseObserver):
    """Records every event's payload, by event."""

    def __init__(self) -> None:
        self.events: dict[ProcessingEvent, list[dict[str, Any]]] = {}

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.events.setdefault(event, []).append(dict(data))

    def count(self, event: ProcessingEvent) -> int:
        return len(self.events.get(event, []))
