"""The worker tasks of a batch: started up to a size, replaced when stuck.

Each worker takes items from the queue, has the processor run each to its result (``run``),
records it (``record``) and post-processes it (``post``), until the queue is empty and
closed: no sentinels, no per-item ``task_done``. A worker runs one bounded step at a time
under its `AttemptDeadline`; when a step ignores its cancellation past the grace period,
the deadline reports the worker stuck and the pool *abandons* it: the stuck item gets a
failed result (``abandoned_result``) from a replacement worker, which then carries on with
the queue. The abandoned task is cancelled again when the batch ends and, should it ever
come back, stops without recording anything (`WorkerAbandoned`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from async_batch_llm._internal.item_runner import WorkerAbandoned, WorkerContext
from async_batch_llm._internal.work_queue import WorkQueue

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)

#: Seconds the pool waits for workers it cancelled.
CANCELLATION_TIMEOUT: Final = 5.0

Run = Callable[[Any, WorkerContext], Awaitable[Any]]
Record = Callable[[Any, Any, WorkerContext], bool]
Post = Callable[[Any, WorkerContext], Awaitable[None]]


class WorkerPool:
    """Runs workers over `queue` (items, or ``None`` to stop one worker).

    Args:
        queue: The items; the pool puts the ``None`` sentinels itself.
        run: Runs an item to its one result.
        on_defect: The result of an item whose `run` raised (a defect, not a failure).
        record: Records a result (given its item and worker); returns whether `post`
            should run.
        post: Post-processes a recorded result.
        abandoned_result: The result of an item whose worker got stuck on ``step``.
        on_started: Called with a worker's id when it starts.
        on_stopped: Called with a worker's id when it stops at a sentinel.
        hook_timeout: Seconds allowed per user hook call inside a worker.
        grace: Seconds a cancelled step gets before its worker is abandoned.
        on_change: Called when a worker ends or is abandoned, or the batch must stop
            (`fatal`), for an owner that does not wait in `run`.
    """

    def __init__(
        self,
        queue: WorkQueue[Any],
        *,
        run: Run,
        on_defect: Callable[[Any, Exception], Any],
        record: Record,
        post: Post,
        abandoned_result: Callable[[Any, str], Any],
        on_started: Callable[[int], None],
        on_stopped: Callable[[int], None],
        hook_timeout: float,
        grace: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self._run = run
        self._on_defect = on_defect
        self._record = record
        self._post = post
        self._abandoned_result = abandoned_result
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._hook_timeout = hook_timeout
        self._grace = grace
        self._next_id = 0
        #: Worker tasks that run until the queue is empty.
        self.live: dict[asyncio.Task[None], WorkerContext | None] = {}
        #: Every worker task started, in order.
        self.started: list[asyncio.Task[None]] = []
        #: Worker tasks given up on; cancelled again when the batch ends.
        self.abandoned: set[asyncio.Task[None]] = set()
        # Resolved when the set of live workers changes while the pool waits for the queue.
        self._changed: asyncio.Future[None] | None = None
        # Live workers not finished yet, and the first that died of an exception: kept by
        # each task's done callback, so waiting for the workers costs nothing per worker
        # (re-waiting on every live task each time one ends is quadratic in the workers).
        self._unfinished = 0
        self._died: asyncio.Task[None] | None = None
        # Set by `cancel`: a worker started after it (a late spawn, a stuck worker's
        # replacement) would outlive the cancellation, waiting on the queue forever.
        self._cancelled = False
        # A KeyboardInterrupt or SystemExit a worker caught, to raise from ``run``.
        self._fatal: BaseException | None = None
        self._on_change = on_change

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task the pool started that has not finished."""
        return [task for task in (*self.live, *self.abandoned) if not task.done()]

    def stop_with(self, exc: BaseException) -> None:
        """Stop the batch: `run` (or the stream watching `fatal`) raises `exc`."""
        if self._fatal is None:
            self._fatal = exc
        self._wake()

    @property
    def fatal(self) -> BaseException | None:
        """The ``KeyboardInterrupt`` / ``SystemExit`` that stops the batch, if any."""
        return self._fatal

    def spawn(self, count: int = 1) -> None:
        """Start `count` more workers."""
        for _ in range(count):
            self._start(None)

    async def run(self, count: int) -> None:
        """Close the queue, start `count` workers and wait until they have emptied it.

        A cancellation (or a worker dying of a defect) cancels every worker, then
        propagates.
        """
        self.queue.close()
        self.spawn(count)
        try:
            await self._wait_for_workers()
        except BaseException:
            await self.cancel()
            raise
        await self._cancel_abandoned()

    async def cancel(self) -> None:
        """Cancel every worker, live or abandoned, and wait (bounded) for them; start no
        worker from then on."""
        self._cancelled = True
        await _cancel(self.tasks, CANCELLATION_TIMEOUT)

    async def work(self, worker_id: int) -> None:
        """Run one worker in the current task, 0.7.2 style: items from ``queue.get()``, each
        marked done, until a ``None`` sentinel."""
        worker = WorkerContext(worker_id, self._hook_timeout, grace=self._grace)
        queue = self.queue
        self._on_started(worker_id)
        try:
            while True:
                item = await queue.get()
                try:
                    if item is None:
                        self._on_stopped(worker_id)
                        return
                    await self._process(worker, item)
                finally:
                    queue.task_done()
        finally:
            worker.deadline.close()

    async def _process(self, worker: WorkerContext, item: Any) -> None:
        worker.item = item
        worker.recorded = False
        worker.replayable_failure = False
        try:
            result = await self._run(item, worker)
        except Exception as exc:
            result = self._on_defect(item, exc)
        worker.recorded = True
        if self._record(result, item, worker):
            await self._post(result, worker)

    def _start(self, handover: tuple[Any, Any] | None) -> None:
        if self._cancelled:
            return
        worker_id = self._next_id
        self._next_id += 1
        task = asyncio.ensure_future(self._work(worker_id, handover))
        task.set_name(f"async-batch-llm-worker-{worker_id}")
        self.live[task] = None
        self._unfinished += 1
        self.started.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self.live:  # not abandoned
            self._unfinished -= 1
            if self._died is None and not task.cancelled() and task.exception() is not None:
                self._died = task
        self._wake()

    @property
    def dead_worker_error(self) -> BaseException | None:
        """What killed a live worker (a defect), if one died of an exception."""
        return None if self._died is None else self._died.exception()

    async def finish(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) for the live workers to empty the closed queue,
        then cancel the abandoned ones; workers still running after that are cancelled."""
        live = [task for task in self.live if not task.done()]
        if live:
            _, pending = await asyncio.wait(live, timeout=timeout)
            if pending:
                logger.error(
                    "%d worker(s) did not stop within %.0fs; cancelling them", len(pending), timeout
                )
                await _cancel(pending, CANCELLATION_TIMEOUT)
        await self._cancel_abandoned()

    async def _work(self, worker_id: int, handover: tuple[Any, Any] | None) -> None:
        task = asyncio.current_task()
        worker = WorkerContext(
            worker_id,
            self._hook_timeout,
            on_stuck=lambda stuck: self._abandon(task, stuck),
            grace=self._grace,
        )
        if task is not None:
            self.live[task] = worker
        queue = self.queue
        take, run, record = queue.take, self._run, self._record
        self._on_started(worker_id)
        try:
            if handover is not None:
                await self._take_over(worker, *handover)
                if worker.abandoned:
                    return  # stuck in the post-processor of the item it took over
            while True:
                item = take()
                if item is None:
                    if not await queue.wait_item():
                        self._on_stopped(worker_id)
                        return
                    continue
                # `_process`, inline: this runs for every item.
                worker.item = item
                worker.recorded = False
                worker.replayable_failure = False
                try:
                    result = await run(item, worker)
                except Exception as exc:
                    result = self._on_defect(item, exc)
                worker.recorded = True
                if record(result, item, worker):
                    await self._post(result, worker)
                if worker.abandoned:
                    return
        except WorkerAbandoned:
            return
        except (KeyboardInterrupt, SystemExit) as exc:
            # Raised by user code inside the worker: stop the batch from the task that runs
            # it, where the caller can catch it, instead of letting it escape the event loop.
            self.stop_with(exc)
        finally:
            worker.deadline.close()

    async def _take_over(self, worker: WorkerContext, item: Any, result: Any) -> None:
        if result is not None:
            worker.item = item
            worker.recorded = True
            worker.replayable_failure = False
            if self._record(result, item, worker):
                await self._post(result, worker)

    def _abandon(self, task: asyncio.Task[None] | None, worker: WorkerContext) -> None:
        """Called by a worker's deadline when its step ignored cancellation past the grace."""
        if worker.abandoned or task is None or task.done():
            return
        worker.abandoned = True
        if task in self.live:
            del self.live[task]
            self._unfinished -= 1
        self.abandoned.add(task)
        step = worker.deadline.step or "execute()"
        logger.error(
            "Worker %d is stuck in %s: it ignored its cancellation for %ss; giving up on it "
            "and starting a new worker",
            worker.worker_id,
            step,
            self._grace,
        )
        item = worker.item
        result = None if worker.recorded else self._abandoned_result(item, step)
        self._start((item, result))
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        if self._on_change is not None:
            self._on_change()

    async def _wait_for_workers(self) -> None:
        """Wait until every live worker has stopped; re-raise what killed one."""
        loop = asyncio.get_running_loop()
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._died is not None:
                self._died.result()  # re-raise what killed it
            if not self._unfinished:
                return
            changed = self._changed = loop.create_future()
            await changed

    async def _cancel_abandoned(self) -> None:
        stuck = [task for task in self.abandoned if not task.done()]
        if stuck:
            await _cancel(stuck, self._grace)
            still = [task for task in stuck if not task.done()]
            if still:
                logger.warning(
                    "%d abandoned worker(s) still run user code that ignores cancellation",
                    len(still),
                )


async def _cancel(tasks: Any, timeout: float) -> None:
    unfinished = [task for task in tasks if not task.done()]
    for task in unfinished:
        task.cancel()
    if unfinished:
        _, pending = await asyncio.wait(unfinished, timeout=timeout)
        if pending:
            logger.warning("%d task(s) did not stop after cancellation", len(pending))
