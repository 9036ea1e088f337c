"""Events to observers, off the workers' path; the three middleware chains, bounded.

Each observer has an `ObserverChannel`: events are appended to its backlog without waiting,
and a delivery task of the channel hands them to the observer one at a time, in order, each
call bounded by ``observer_timeout``. A slow or hung observer therefore delays no worker and
no other observer. `EventDispatcher.drain` waits, with a bound, until every backlog is empty;
the processor calls it before ``process_all()`` returns, so that observers have seen
everything by then.

An ``Exception`` (or a timeout) from an observer or a middleware hook is logged as a WARNING
and never reaches the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm._internal.hooks import run_step
from async_batch_llm._internal.values import WorkItemResult
from async_batch_llm.strategies.errors import HookTimeoutError

if TYPE_CHECKING:
    from async_batch_llm.base import LLMWorkItem
    from async_batch_llm.middleware.base import Middleware
    from async_batch_llm.observers.base import ProcessingEvent, ProcessorObserver

__all__ = [
    "DEFAULT_OBSERVER_TIMEOUT",
    "MAX_OBSERVER_BACKLOG",
    "EventDispatcher",
    "ObserverChannel",
    "StepRunner",
]

logger = logging.getLogger(__name__)

DEFAULT_OBSERVER_TIMEOUT: Final = 5.0
#: Events queued for one observer beyond which new ones are dropped (and counted as missed).
MAX_OBSERVER_BACKLOG: Final = 100_000

T = TypeVar("T")

#: Runs one hook call under the calling task's bound: ``await run(awaitable, what)``.
StepRunner = Callable[[Awaitable[Any], str], Awaitable[Any]]


class ObserverChannel:
    """The ordered, bounded delivery of events to one observer.

    Args:
        observer: Receives the events.
        timeout: Seconds per event; an overrun is cancelled and the event skipped.
        grace: Seconds an overrunning call gets to honour its cancellation; after that the
            delivery task is abandoned and a fresh one carries on with the next event.
    """

    def __init__(self, observer: ProcessorObserver, *, timeout: float, grace: float) -> None:
        self.observer = observer
        self.timeout = timeout
        self.grace = grace
        #: Events this observer did not get (dropped when stuck, overfull or at drain).
        self.missed = 0
        #: A KeyboardInterrupt or SystemExit the observer raised.
        self.fatal: BaseException | None = None
        self._backlog: deque[tuple[ProcessingEvent, dict[str, Any]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        # Resolved when the delivery task is abandoned while `drain` waits for it.
        self._replaced: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        """Events waiting for delivery."""
        return len(self._backlog)

    def put(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Queue `event` for the observer; never waits."""
        backlog = self._backlog
        if len(backlog) >= MAX_OBSERVER_BACKLOG:
            self.missed += 1
            return
        backlog.append((event, data))
        if self._task is None:
            self._start()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the backlog to empty; drop what is left after.

        A delivery task abandoned meanwhile (its event already counted as missed) is not
        waited for: the wait goes on with the task that replaced it.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (task := self._task) is not None:
            remaining = end - loop.time()
            if remaining > 0:
                replaced = self._replaced = loop.create_future()
                try:
                    await asyncio.wait(
                        {task, replaced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    self._replaced = None
                    replaced.cancel()
            if self._task is not task:
                continue  # abandoned and replaced, or finished
            if task.done():
                self._task = None  # cancelled before it ran
                continue
            if remaining > 0:
                continue
            # Out of time: give up on the call the observer is busy with.
            self._generation += 1
            self._task = None
            task.cancel()
            self.missed += 1  # the event it was busy with
            await asyncio.wait({task}, timeout=self.grace)
            break
        if self._backlog:
            self.missed += len(self._backlog)
            self._backlog.clear()

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the delivery and drop the backlog; return the task to wait for, if any."""
        task = self._task
        self._generation += 1
        self._task = None
        self._backlog.clear()
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    def _start(self) -> None:
        self._generation += 1
        self._task = asyncio.ensure_future(self._deliver(self._generation))

    def _abandon(self, generation: int) -> None:
        # The observer ignored the cancellation of an overrunning call: leave that task to
        # itself and deliver the rest from a new one.
        if generation != self._generation:
            return  # `drain` gave up on that task already, and counted its event
        self.missed += 1
        logger.warning(
            "Observer %s ignored the cancellation of a call that overran %ss; that call is "
            "abandoned and later events go on without it",
            type(self.observer).__name__,
            self.timeout,
        )
        self._task = None
        if self._backlog:
            self._start()
        else:
            self._generation += 1
        replaced = self._replaced
        if replaced is not None and not replaced.done():
            replaced.set_result(None)

    async def _deliver(self, generation: int) -> None:
        deadline = AttemptDeadline(on_stuck=lambda: self._abandon(generation), grace=self.grace)
        backlog = self._backlog
        observer = self.observer
        try:
            while backlog and generation == self._generation:
                event, data = backlog.popleft()
                try:
                    await run_step(
                        deadline, self.timeout, observer.on_event(event, data), "observer"
                    )
                except HookTimeoutError:
                    self.missed += 1
                    logger.warning(
                        "Observer %s timed out after %ss handling event %s; skipped",
                        type(observer).__name__,
                        self.timeout,
                        event.value,
                    )
                except Exception:
                    logger.warning(
                        "Observer %s raised handling event %s; ignored",
                        type(observer).__name__,
                        event.value,
                        exc_info=True,
                    )
        except (KeyboardInterrupt, SystemExit) as exc:
            # Raised by the observer: re-raised by ``drain`` in the batch's own task
            # rather than escaping the event loop from this one.
            self.fatal = exc
        finally:
            deadline.close()
            if generation == self._generation:
                self._task = None


class EventDispatcher:
    """Fans events out to observers and runs the middleware chains, isolating failures.

    ``observers`` and ``middlewares`` are the caller's own lists, read at every call, so
    hooks appended after construction take part. With empty lists every method returns at
    once.

    Args:
        observers: Receive every event, each from its own `ObserverChannel`.
        middlewares: Wrap every attempt (see `Middleware`).
        observer_timeout: Seconds each observer may take per event before it is skipped.
        grace: Seconds an overrunning observer call gets to honour its cancellation.
    """

    def __init__(
        self,
        observers: list[ProcessorObserver],
        middlewares: list[Middleware[Any, Any, Any]],
        *,
        observer_timeout: float = DEFAULT_OBSERVER_TIMEOUT,
        grace: float = 5.0,
    ) -> None:
        self.observers = observers
        self.middlewares = middlewares
        self.observer_timeout = observer_timeout
        self.grace = grace
        self._channels: dict[int, ObserverChannel] = {}

    def publish(self, event: ProcessingEvent, payload: dict[str, Any] | None = None) -> None:
        """Queue `event` with `payload` (or an empty dict) for every observer; never waits.

        All observers receive the same dict object.
        """
        observers = self.observers
        if not observers:
            return
        data = payload if payload is not None else {}
        channels = self._channels
        for observer in observers:
            channel = channels.get(id(observer))
            if channel is None or channel.observer is not observer:
                channel = channels[id(observer)] = ObserverChannel(
                    observer, timeout=self.observer_timeout, grace=self.grace
                )
            channel.put(event, data)

    async def emit(self, event: ProcessingEvent, payload: dict[str, Any] | None = None) -> None:
        """`publish` for callers that await (kept for the processor's 0.7.2 ``_emit_event``)."""
        self.publish(event, payload)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds in all) until every observer has its events.

        An observer still busy after that loses its remaining events; one WARNING per
        observer says how many events it missed in all.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        for channel in list(self._channels.values()):
            await channel.drain(max(0.0, end - loop.time()))
        for channel in self._channels.values():
            if channel.fatal is not None:
                fatal, channel.fatal = channel.fatal, None
                raise fatal
            if channel.missed:
                logger.warning(
                    "Observer %s missed %d event(s) of this batch: it was too slow, hung or "
                    "overfull (observer_timeout=%ss, observer_drain_timeout=%ss)",
                    type(channel.observer).__name__,
                    channel.missed,
                    channel.timeout,
                    timeout,
                )
                channel.missed = 0

    async def close(self) -> None:
        """Stop every delivery task (the batch was cancelled, or the processor closes).

        Events not delivered yet are dropped; each observer's delivery is given the grace
        period to stop.
        """
        tasks = []
        for channel in self._channels.values():
            task = channel.stop()
            if task is not None:
                tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace)

    async def before_process(
        self, item: LLMWorkItem[Any, Any, Any], run: StepRunner | None = None
    ) -> LLMWorkItem[Any, Any, Any] | None:
        """Run every ``before_process`` hook in list order; ``None`` means skip the item.

        Each hook receives the previous hook's item; the first ``None`` stops the chain. A
        hook that raises or overruns is skipped (logged as a WARNING).
        """
        run = run or _unbounded
        current = item
        for middleware in self.middlewares:
            try:
                returned = await run(
                    middleware.before_process(current), _hook_name(middleware, "before_process")
                )
            except Exception:
                _log_middleware_error(middleware, "before_process")
                continue
            if returned is None:
                return None
            current = returned
        return current

    async def after_process(
        self, result: WorkItemResult[Any, Any], run: StepRunner | None = None
    ) -> WorkItemResult[Any, Any]:
        """Run every ``after_process`` hook in reverse list order, threading the result.

        A hook that raises, overruns or returns something other than a result is skipped
        (logged as a WARNING).
        """
        run = run or _unbounded
        current = result
        # Reverse order so the first middleware wraps the others, like nested context managers.
        for middleware in reversed(self.middlewares):
            try:
                returned = await run(
                    middleware.after_process(current), _hook_name(middleware, "after_process")
                )
            except Exception:
                _log_middleware_error(middleware, "after_process")
                continue
            if not isinstance(returned, WorkItemResult):
                logger.warning(
                    "Middleware %s.after_process returned %s instead of a WorkItemResult; ignored",
                    type(middleware).__name__,
                    type(returned).__name__,
                )
                continue
            current = returned
        return current

    async def on_error(
        self,
        item: LLMWorkItem[Any, Any, Any],
        error: Exception,
        run: StepRunner | None = None,
    ) -> WorkItemResult[Any, Any] | None:
        """Ask every ``on_error`` hook in list order for a replacement result.

        Returns the first result answered, or ``None`` when no hook recovers the item.
        """
        run = run or _unbounded
        for middleware in self.middlewares:
            try:
                recovered = await run(
                    middleware.on_error(item, error), _hook_name(middleware, "on_error")
                )
            except Exception:
                _log_middleware_error(middleware, "on_error")
                continue
            if recovered is None:
                continue
            if not isinstance(recovered, WorkItemResult):
                logger.warning(
                    "Middleware %s.on_error returned %s instead of a WorkItemResult or None; "
                    "ignored",
                    type(middleware).__name__,
                    type(recovered).__name__,
                )
                continue
            return recovered
        return None


async def _unbounded(awaitable: Awaitable[Any], what: str) -> Any:
    return await awaitable


def _hook_name(middleware: Middleware[Any, Any, Any], hook: str) -> str:
    return f"middleware {type(middleware).__name__}.{hook}()"


def _log_middleware_error(middleware: Middleware[Any, Any, Any], hook: str) -> None:
    logger.warning(
        "Middleware %s.%s raised or overran; ignored, the chain continues with the previous value",
        type(middleware).__name__,
        hook,
        exc_info=True,
    )
