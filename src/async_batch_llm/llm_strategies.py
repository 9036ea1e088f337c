"""Strategies: how one work item becomes one LLM call.

Subclass :class:`LLMCallStrategy` and implement :meth:`~LLMCallStrategy.execute`; the
processor calls the other hooks at the points described on each method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from async_batch_llm.base import RetryState, TokenUsage

try:
    from pydantic_ai import Agent
except ImportError:  # pydantic-ai is an optional extra
    Agent = Any  # type: ignore[assignment,misc,unused-ignore]

TOutput = TypeVar("TOutput")

__all__ = ["Agent", "LLMCallStrategy", "TOutput"]


class LLMCallStrategy(ABC, Generic[TOutput]):
    """How to call a model for one work item.

    The processor calls :meth:`prepare` once per strategy instance before its first attempt,
    :meth:`execute` once per attempt, :meth:`on_error` after every failed attempt,
    :meth:`dry_run` instead of :meth:`execute` when ``ProcessorConfig.dry_run`` is set, and
    :meth:`cleanup` once per prepared instance when the processor shuts down.
    """

    async def prepare(self) -> None:
        """Set up shared resources (a client, a provider cache). Called once per instance."""

    @abstractmethod
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Make one call and return ``(output, token_usage)``.

        Args:
            prompt: The work item's prompt.
            attempt: 1 for the first call of the item, then 2, 3, ... (rate-limited calls count).
            timeout: The per-attempt deadline the processor enforces, in seconds.
            state: The item's :class:`RetryState`, shared by all of its attempts.

        To have the tokens of a failed call counted, store its usage dict on the exception as
        ``exc.__dict__["_failed_token_usage"]`` (or raise
        :class:`~async_batch_llm.TokenTrackingError` from it).
        """

    async def cleanup(self) -> None:
        """Release what :meth:`prepare` set up. Called once per prepared instance."""

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        """Observe a failed attempt before it is classified and retried (or not)."""

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """Return placeholder output without calling a model (``ProcessorConfig.dry_run``)."""
        output: Any = f"[DRY-RUN] Mock output for prompt: {prompt[:50]}..."
        return output, {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
