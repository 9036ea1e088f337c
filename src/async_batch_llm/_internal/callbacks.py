"""Running the user's progress callback and post-processor without letting them hurt the batch.

The progress callback never blocks a worker: it runs as a tracked background task (a sync
callback in a thread) with an optional time limit. The post-processor is awaited by the
worker (so ``process_all()`` returns only after every result was post-processed) under a
time limit. Errors from either are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressNotifier", "is_async_callable", "run_post_processor"]

logger = logging.getLogger(__name__)


def is_async_callable(func: object) -> bool:
    """True for coroutine functions and objects whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


class ProgressNotifier:
    """Schedules progress callbacks as owned tasks that are cancelled at cleanup.

    Args:
        tasks: The set that holds the running callback tasks (the processor's
            ``_progress_tasks``); tasks remove themselves when done.
    """

    def __init__(self, tasks: set[asyncio.Task[Any]]) -> None:
        self.tasks = tasks

    def notify(
        self,
        callback: Callable[[int, int, str], Any],
        is_async: bool,
        timeout: float | None,
        completed: int,
        total: int,
        current_item: str,
    ) -> None:
        """Start ``callback(completed, total, current_item)`` in the background."""
        if is_async:
            task: asyncio.Task[Any] = asyncio.ensure_future(
                self._run_async(callback, completed, total, current_item)
            )
        else:
            task = asyncio.ensure_future(self._run_sync(callback, completed, total, current_item))
        self._track(task)
        if timeout is not None:
            self._track(asyncio.ensure_future(self._limit(task, timeout)))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _run_async(callback: Callable[..., Any], *args: Any) -> None:
        try:
            await callback(*args)
        except Exception as exc:
            logger.warning("Progress callback raised %r; ignored", exc)

    @staticmethod
    async def _run_sync(callback: Callable[..., Any], *args: Any) -> None:
        try:
            await asyncio.to_thread(callback, *args)
        except Exception as exc:
            logger.warning("Progress callback raised %r; ignored", exc)

    @staticmethod
    async def _limit(task: asyncio.Task[Any], timeout: float) -> None:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.warning("Progress callback exceeded %.2fs; cancelled", timeout)
            task.cancel()

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every running callback task and wait up to ``timeout`` seconds for them."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                logger.warning("%d progress callback task(s) did not stop in time", len(pending))
        self.tasks.clear()


async def run_post_processor(
    post_processor: Callable[[Any], Any],
    result: Any,
    *,
    timeout: float,
    inner_timeout: float,
) -> None:
    """Call ``post_processor(result)``; await it if it returns an awaitable.

    A sync post-processor runs inline. An async one is limited to ``min(timeout,
    inner_timeout)`` seconds. Errors and timeouts are logged (ERROR) and swallowed.
    """
    try:
        async with asyncio.timeout(timeout):
            returned = post_processor(result)
            if inspect.isawaitable(returned):
                async with asyncio.timeout(inner_timeout):
                    await returned
    except TimeoutError:
        logger.error("Post-processor timed out for item %s", getattr(result, "item_id", "?"))
    except Exception as exc:
        logger.error("Post-processor failed for item %s: %r", getattr(result, "item_id", "?"), exc)
