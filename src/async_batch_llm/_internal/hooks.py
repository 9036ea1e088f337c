"""Calling user code so that it can neither stall, nor crash, nor outlive the batch.

Three ways, by how often the hook runs and where:

* `run_step`: inside a task that runs many short steps one after another (a worker, an
  observer's delivery task), under that task's reusable `AttemptDeadline`. Cheap enough for
  every attempt. A step that ignores its cancellation makes the deadline report the task
  as stuck, and the task's owner replaces the task.
* `run_in_task`: rare hooks (``prepare``, ``cleanup``, ``on_rate_limit``) run as a child
  task the caller waits for with a bound; a child that ignores its cancellation is left
  behind in ``orphans`` and the caller goes on.
* `SyncCallRunner`: sync callbacks (progress callback, post-processor) run on a daemon
  thread, so a hung one blocks neither the event loop, nor interpreter exit, nor the
  default executor that SDKs use (for DNS lookups, for instance).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm.strategies.errors import CallInterruptedError, HookTimeoutError

__all__ = ["SyncCallRunner", "interruption_error", "run_in_task", "run_step"]

logger = logging.getLogger("async_batch_llm.hooks")

T = TypeVar("T")


def interruption_error(exc: BaseException, what: str) -> CallInterruptedError:
    """The error that stands for a `BaseException` ending `what` that is not an error."""
    if isinstance(exc, asyncio.CancelledError):
        detail = "raised CancelledError although nothing cancelled the batch"
    else:
        detail = f"raised {type(exc).__name__}, a BaseException that is not an Exception"
    error = CallInterruptedError(f"{what} {detail}", interruption=exc)
    error.__cause__ = exc
    return error


def is_propagating(exc: BaseException, task: asyncio.Task[Any]) -> bool:
    """Whether `exc`, which ended a step of `task`, must stop the task rather than the step.

    ``KeyboardInterrupt``/``SystemExit`` always do (and ``GeneratorExit``: the coroutine is
    being closed); so does a ``CancelledError`` while someone is cancelling the task (the
    batch's own cancellation).
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        return True
    return isinstance(exc, asyncio.CancelledError) and task.cancelling() > 0


async def run_step(
    deadline: AttemptDeadline, seconds: float, awaitable: Awaitable[T], what: str
) -> T:
    """Await `awaitable` within `seconds`, in the current task.

    Raises:
        HookTimeoutError: The step overran and was cancelled.
        CallInterruptedError: The step raised a `BaseException` that is not the task's
            own cancellation, ``KeyboardInterrupt`` or ``SystemExit``.
        Exception: Whatever the step raised.
    """
    deadline.arm(seconds, what)
    try:
        result = await awaitable
    except Exception as exc:
        if deadline.disarm():
            raise _timeout(what, seconds) from exc
        raise
    except BaseException as exc:
        if deadline.disarm():
            raise _timeout(what, seconds) from exc
        if is_propagating(exc, deadline.task):
            raise
        raise interruption_error(exc, what) from exc
    # A step that swallowed its cancellation and returned is simply late: keep its result.
    deadline.disarm()
    return result


async def run_in_task(
    factory: Callable[[], Coroutine[Any, Any, T]],
    *,
    timeout: float | None,
    grace: float,
    what: str,
    orphans: set[asyncio.Task[Any]],
) -> T:
    """Run ``factory()`` as a child task and wait for it at most `timeout` seconds.

    An overrunning child is cancelled and given `grace` seconds to stop; one that does not
    stop is added to `orphans` (for the owner to cancel again later) and abandoned.
    Whatever the child raises is re-raised here, in the caller's task, ``KeyboardInterrupt``
    and ``SystemExit`` included (from a task of its own they would escape the event loop).

    Raises:
        HookTimeoutError: The child overran (``abandoned`` tells whether it still runs).
        CallInterruptedError: The child ended with a stray ``CancelledError`` or another
            `BaseException` that is not an error.
        Exception: Whatever the child raised.
    """
    cancelled_by_us = False
    child = asyncio.ensure_future(_outcome_of(factory))
    try:
        done, _ = await asyncio.wait({child}, timeout=timeout)
    except BaseException:
        child.cancel()
        raise
    if not done:
        cancelled_by_us = True
        child.cancel()
        finished, _ = await asyncio.wait({child}, timeout=grace)
        if not finished:
            orphans.add(child)
            child.add_done_callback(orphans.discard)
            msg = (
                f"{what} did not finish within {timeout}s and ignored its cancellation for "
                f"{grace}s more; it was abandoned and may still be running"
            )
            raise HookTimeoutError(msg, hook=what, timeout=timeout, abandoned=True)
    if child.cancelled():
        # Cancelled before it started: only we cancel it.
        raise _timeout(what, timeout)
    ok, value = child.result()
    if ok:
        return value  # type: ignore[no-any-return]
    error: BaseException = value
    if cancelled_by_us:
        raise _timeout(what, timeout) from error
    if isinstance(error, Exception | KeyboardInterrupt | SystemExit):
        raise error
    raise interruption_error(error, what) from error


async def _outcome_of(factory: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, the BaseException)``: the child task never raises."""
    try:
        return True, await factory()
    except BaseException as exc:
        return False, exc


def _loop_future_of(future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
    """An asyncio future that follows `future`, safe to outlive the event loop.

    ``asyncio.wrap_future`` would make an abandoned thread that finishes after the loop
    closed log an error from inside ``concurrent.futures``.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def copy_outcome(done: concurrent.futures.Future[T]) -> None:
        if waiter.done():
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def on_done(done: concurrent.futures.Future[T]) -> None:
        # A RuntimeError means the loop has closed: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(copy_outcome, done)

    future.add_done_callback(on_done)
    return waiter


def _timeout(what: str, seconds: float | None) -> HookTimeoutError:
    return HookTimeoutError(
        f"{what} did not finish within {seconds}s; it was cancelled", hook=what, timeout=seconds
    )


class SyncCallRunner:
    """Runs sync callbacks one at a time on a daemon thread, each under a time bound.

    A call that overruns is given up on: its thread is left to finish on its own (being a
    daemon, it never holds up interpreter exit) and later calls go to a fresh thread, so one
    hung callback delays nothing else by more than its bound.

    Args:
        name: Names the threads, for debugging.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, func: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``func(*args)``; the future tells how it ended."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, func, args))
        with self._lock:
            if self._thread is None:
                self._start_thread()
        return future

    async def call(self, func: Callable[..., T], *args: Any, timeout: float | None) -> T:
        """Run ``func(*args)`` on the thread and wait at most `timeout` seconds for it.

        Raises:
            TimeoutError: It overran; the thread it runs on is abandoned.
            Exception: Whatever the callback raised.
        """
        future = self.submit(func, *args)
        waiter = _loop_future_of(future)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except BaseException:
            waiter.cancel()
            raise
        if not done:
            waiter.cancel()
            self.abandon_thread()
            raise TimeoutError
        return waiter.result()

    def abandon_thread(self) -> None:
        """Stop feeding the current thread (it may be stuck); later calls get a new one."""
        with self._lock:
            self._generation += 1
            self._thread = None
            if not self._calls.empty():
                self._start_thread()

    def close(self) -> None:
        """Let the current thread exit once the calls already queued have run."""
        with self._lock:
            if self._thread is not None:
                self._calls.put(None)
                self._thread = None

    def _start_thread(self) -> None:
        generation = self._generation
        thread = threading.Thread(
            target=self._serve, args=(generation,), name=f"{self._name}-{generation}", daemon=True
        )
        self._thread = thread
        thread.start()

    def _serve(self, generation: int) -> None:
        while generation == self._generation:
            entry = self._calls.get()
            if entry is None:
                return
            future, func, args = entry
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = func(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
