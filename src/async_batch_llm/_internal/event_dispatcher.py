"""Fan-out of processor events to observers and the three middleware chains."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_batch_llm.base import LLMWorkItem, WorkItemResult
    from async_batch_llm.middleware.base import Middleware
    from async_batch_llm.observers.base import ProcessingEvent, ProcessorObserver

__all__ = ["DEFAULT_OBSERVER_TIMEOUT", "EventDispatcher"]

logger = logging.getLogger(__name__)

DEFAULT_OBSERVER_TIMEOUT = 5.0


class EventDispatcher:
    """Call observers and middleware on behalf of the processor, isolating their failures.

    ``observers`` and ``middlewares`` are the caller's own lists, read at every call, so
    hooks appended after construction take part. An ``Exception`` from an observer or a
    middleware is logged as a WARNING and never reaches the batch; ``asyncio.CancelledError``
    always propagates. With empty lists every method returns at once.

    Args:
        observers: Receive every event, one after another, in list order.
        middlewares: Wrap every attempt (see :class:`~async_batch_llm.Middleware`).
        observer_timeout: Seconds each observer may take per event before it is abandoned.
    """

    def __init__(
        self,
        observers: list[ProcessorObserver],
        middlewares: list[Middleware[Any, Any, Any]],
        *,
        observer_timeout: float = DEFAULT_OBSERVER_TIMEOUT,
    ) -> None:
        self.observers = observers
        self.middlewares = middlewares
        self.observer_timeout = observer_timeout

    async def emit(self, event: ProcessingEvent, payload: dict[str, Any] | None = None) -> None:
        """Send ``event`` with ``payload`` (or an empty dict) to every observer in turn.

        All observers receive the same dict object.
        """
        observers = self.observers
        if not observers:
            return
        data = payload if payload is not None else {}
        for observer in observers:
            # asyncio.timeout rather than wait_for: the observer runs in this task, no new one.
            deadline = asyncio.timeout(self.observer_timeout)
            try:
                async with deadline:
                    await observer.on_event(event, data)
            except TimeoutError:
                if deadline.expired():
                    logger.warning(
                        "Observer %s timed out after %ss handling event %s; skipped",
                        type(observer).__name__,
                        self.observer_timeout,
                        event.value,
                    )
                else:
                    # The observer raised TimeoutError itself: a failure like any other.
                    _log_observer_error(observer, event)
            except Exception:
                _log_observer_error(observer, event)

    async def before_process(
        self, item: LLMWorkItem[Any, Any, Any]
    ) -> LLMWorkItem[Any, Any, Any] | None:
        """Run every ``before_process`` hook in list order; ``None`` means skip the item.

        Each hook receives the previous hook's item; the first ``None`` stops the chain.
        """
        middlewares = self.middlewares
        if not middlewares:
            return item
        current = item
        for middleware in middlewares:
            try:
                returned = await middleware.before_process(current)
            except Exception:
                _log_middleware_error(middleware, "before_process")
                continue
            if returned is None:
                return None
            current = returned
        return current

    async def after_process(self, result: WorkItemResult[Any, Any]) -> WorkItemResult[Any, Any]:
        """Run every ``after_process`` hook in reverse list order, threading the result.

        A hook that raises or returns ``None`` is skipped (logged as a WARNING).
        """
        middlewares = self.middlewares
        if not middlewares:
            return result
        current = result
        # Reverse order so the first middleware wraps the others, like nested context managers.
        for middleware in reversed(middlewares):
            try:
                # Typed as optional: a hook that forgets its return statement must not
                # replace the result with None.
                returned: WorkItemResult[Any, Any] | None = await middleware.after_process(current)
            except Exception:
                _log_middleware_error(middleware, "after_process")
                continue
            if returned is None:
                logger.warning(
                    "Middleware %s.after_process returned None instead of a result; ignored",
                    type(middleware).__name__,
                )
                continue
            current = returned
        return current

    async def on_error(
        self, item: LLMWorkItem[Any, Any, Any], error: Exception
    ) -> WorkItemResult[Any, Any] | None:
        """Ask every ``on_error`` hook in list order for a replacement result.

        Returns the first non-``None`` answer, or ``None`` when no hook recovers the item.
        """
        middlewares = self.middlewares
        if not middlewares:
            return None
        for middleware in middlewares:
            try:
                recovered = await middleware.on_error(item, error)
            except Exception:
                _log_middleware_error(middleware, "on_error")
                continue
            if recovered is not None:
                return recovered
        return None


def _log_observer_error(observer: ProcessorObserver, event: ProcessingEvent) -> None:
    logger.warning(
        "Observer %s raised handling event %s; ignored",
        type(observer).__name__,
        event.value,
        exc_info=True,
    )


def _log_middleware_error(middleware: Middleware[Any, Any, Any], hook: str) -> None:
    logger.warning(
        "Middleware %s.%s raised; ignored, the chain continues with the previous value",
        type(middleware).__name__,
        hook,
        exc_info=True,
    )
