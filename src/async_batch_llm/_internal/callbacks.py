"""The user's progress callback and post-processor, bounded so they cannot hurt the batch.

The progress callback never blocks a worker: an async one runs as a tracked task, a sync
one on a daemon thread (`SyncCallRunner`), each under ``progress_callback_timeout``. The
post-processor is awaited by the worker (so ``process_all()`` returns only after every
result was post-processed) under ``post_processor_timeout``; a sync one also runs on a
daemon thread, so a hung one blocks neither the event loop nor interpreter exit. Errors and
overruns of either are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.hooks import SyncCallRunner, run_step

if TYPE_CHECKING:
    from async_batch_llm._internal.deadline import AttemptDeadline

__all__ = ["PostProcessorRunner", "ProgressNotifier", "is_async_callable"]

logger = logging.getLogger(__name__)


def is_async_callable(func: object) -> bool:
    """True for coroutine functions and objects whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


class ProgressNotifier:
    """Runs progress callbacks in the background, as owned tasks.

    Args:
        tasks: The set that holds the running callback tasks (the processor's
            ``_progress_tasks``); tasks remove themselves when done.
        grace: Seconds an overrunning async callback gets to honour its cancellation.
    """

    def __init__(self, tasks: set[asyncio.Task[Any]], *, grace: float = 5.0) -> None:
        self.tasks = tasks
        self.grace = grace
        #: Takes a ``KeyboardInterrupt`` / ``SystemExit`` a callback raised and returns
        #: whether it will be raised where the caller can catch it (from the running
        #: batch); otherwise it is re-raised from the callback's task.
        self.on_fatal: Callable[[BaseException], bool] = _not_handled
        self._threads = SyncCallRunner("async-batch-llm-progress")

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
            runner = self._run_async(callback, timeout, completed, total, current_item)
        else:
            runner = self._run_sync(callback, timeout, completed, total, current_item)
        task: asyncio.Task[Any] = asyncio.ensure_future(runner)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_async(
        self, callback: Callable[..., Any], timeout: float | None, *args: Any
    ) -> None:
        # The callback runs in this task (no child task), so it starts as soon as the
        # notification does; a callback that ignores its cancellation keeps only this task
        # busy, and leaving the processor cancels it again.
        try:
            async with asyncio.timeout(timeout):
                await callback(*args)
        except TimeoutError:
            logger.warning("Progress callback exceeded %.2fs; cancelled", timeout)
        except Exception as exc:
            logger.warning("Progress callback raised %r; ignored", exc)
        except (KeyboardInterrupt, SystemExit) as exc:
            if not self.on_fatal(exc):
                raise

    async def _run_sync(
        self, callback: Callable[..., Any], timeout: float | None, *args: Any
    ) -> None:
        try:
            await self._threads.call(callback, *args, timeout=timeout)
        except TimeoutError:
            logger.warning("Progress callback exceeded %.2fs; no longer waited for", timeout)
        except Exception as exc:
            logger.warning("Progress callback raised %r; ignored", exc)
        except (KeyboardInterrupt, SystemExit) as exc:
            if not self.on_fatal(exc):
                raise

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every running callback task and wait up to `timeout` seconds for them."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                logger.warning("%d progress callback task(s) did not stop in time", len(pending))
        self.tasks.clear()

    def close(self) -> None:
        """Let the callback thread exit."""
        self._threads.close()


def _not_handled(exc: BaseException) -> bool:
    return False


class PostProcessorRunner:
    """Calls the post-processor for one result, bounded, never raising.

    Args:
        post_processor: Called with every final result (sync or async).
        timeout: Seconds allowed per call (``post_processor_timeout``).
        inner_timeout: A second, fixed bound on an async post-processor (0.7.2's 75 s).
    """

    def __init__(
        self, post_processor: Callable[[Any], Any], *, timeout: float, inner_timeout: float
    ) -> None:
        self.post_processor = post_processor
        self.timeout = timeout
        self.inner_timeout = inner_timeout
        self.is_async = is_async_callable(post_processor)
        self._threads = SyncCallRunner("async-batch-llm-post-processor")

    async def run(self, result: Any, deadline: AttemptDeadline) -> None:
        """Post-process `result`; errors and overruns are logged (ERROR) and swallowed."""
        item_id = getattr(result, "item_id", "?")
        try:
            if self.is_async:
                await run_step(
                    deadline,
                    min(self.timeout, self.inner_timeout),
                    self.post_processor(result),
                    "post-processor",
                )
                return
            returned = await self._threads.call(self.post_processor, result, timeout=self.timeout)
            if inspect.isawaitable(returned):
                # A sync callable that hands back an awaitable: await it here, on the loop.
                await run_step(
                    deadline, min(self.timeout, self.inner_timeout), returned, "post-processor"
                )
        except TimeoutError:
            logger.error("Post-processor timed out for item %s", item_id)
        except Exception as exc:
            logger.error("Post-processor failed for item %s: %r", item_id, exc)

    def close(self) -> None:
        """Let the post-processor thread exit."""
        self._threads.close()
