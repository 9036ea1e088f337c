"""Middleware: hooks that wrap every attempt of a work item.

The processor runs ``before_process`` hooks in list order before each attempt,
``after_process`` hooks in reverse list order after each successful attempt, and
``on_error`` hooks in list order when an item fails for good.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic

from async_batch_llm.base import LLMWorkItem, TContext, TInput, TOutput, WorkItemResult

__all__ = ["BaseMiddleware", "Middleware"]


class Middleware(ABC, Generic[TInput, TOutput, TContext]):
    """Interface of a middleware; subclass `BaseMiddleware` to override only some hooks.

    An exception raised by a hook is logged and ignored, so a broken middleware never loses
    an item; ``asyncio.CancelledError`` is not caught.
    """

    @abstractmethod
    async def before_process(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        """Return the item to run (possibly a modified copy), or ``None`` to skip it.

        A skipped item ends with a failed result whose error is ``"Skipped by middleware"``.
        Called before every attempt, retries included.
        """

    @abstractmethod
    async def after_process(
        self, result: WorkItemResult[TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext]:
        """Return the result to keep (possibly modified) after a successful attempt."""

    @abstractmethod
    async def on_error(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext], error: Exception
    ) -> WorkItemResult[TOutput, TContext] | None:
        """Return a result that replaces the item's failure, or ``None`` to let it fail.

        Called only when the item will not be retried; the first non-``None`` answer wins.
        """


class BaseMiddleware(Middleware[TInput, TOutput, TContext]):
    """A middleware that changes nothing: pass items and results through, never recover."""

    async def before_process(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        """Return ``work_item`` unchanged."""
        return work_item

    async def after_process(
        self, result: WorkItemResult[TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext]:
        """Return ``result`` unchanged."""
        return result

    async def on_error(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext], error: Exception
    ) -> WorkItemResult[TOutput, TContext] | None:
        """Return ``None``: the failure stands."""
        return None
