"""One streaming run: items taken lazily from a source, results handed out as they end.

The parts, each a task or a callback of the run:

- the **intake** task takes items from the sources (sync or async iterables) while fewer
  than ``window`` items are ahead of the consumer (taken but their results not yet
  handed out): the window bounds memory, whatever the source's size;
- without a checkpoint it queues them for the workers; with one, the **store** task looks
  them up in batches, replays what it may, claims the rest (so that a rerun knows they were
  taken) and queues those, and commits the workers' outcomes in groups before anything
  about them is published;
- the **workers** (the processor's `WorkerPool`, started as items arrive, up to
  ``max_workers``) run the items;
- results are *published* in one place: counted, reported (progress, events),
  post-processed, then put in the output, in completion order or, with ``ordered``, in
  input order through a reorder buffer inside the same window;
- the **consumer** is the async generator `StreamRun.results`; leaving it, however it is
  left, shuts everything down: intake stops and sources are closed, in-flight calls are
  cancelled, finished outcomes are committed, no task is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from async_batch_llm._internal.timeline import TimelineRecorder
from async_batch_llm._internal.values import WorkItemResult
from async_batch_llm.observers.base import ProcessingEvent

if TYPE_CHECKING:
    from async_batch_llm._internal.batch_jobs import Answer, BatchJobs
    from async_batch_llm._internal.checkpointing import Admitted, CheckpointSession
    from async_batch_llm._internal.worker_pool import WorkerPool
    from async_batch_llm.parallel import ParallelBatchProcessor

__all__ = ["ReplayJob", "StreamRun", "default_window"]

logger = logging.getLogger(__name__)

#: Most items looked up and claimed in one store call.
LOOKUP_BATCH: Final = 512
#: Seconds the consumer waits for workers to stop once every result is out.
WORKER_STOP_TIMEOUT: Final = 30.0


#: Items a stream in batch mode keeps ahead of its consumer by default: the requests of
#: a few large jobs, whose results only come when a job ends.
BATCH_WINDOW: Final = 20_000


def default_window(max_workers: int, mode: str = "online") -> int:
    """Items a stream keeps ahead of its consumer by default: enough to keep every worker
    busy while results wait to be taken, and batches of store lookups large; in batch
    mode, enough for large jobs."""
    if mode != "online":
        return BATCH_WINDOW
    return max(4 * max_workers, 64)


#: A replayed result with its item and input position.
_Replay = tuple[int, Any, WorkItemResult[Any, Any]]


class ReplayJob:
    """A replayed result that still needs the post-processor: a worker runs it."""

    __slots__ = ("item", "result", "seq")

    def __init__(self, item: Any, result: WorkItemResult[Any, Any], seq: int) -> None:
        self.item = item
        self.result = result
        self.seq = seq

    @property
    def item_id(self) -> str:
        return str(self.item.item_id)

    @property
    def context(self) -> Any:
        return self.item.context


class _Window:
    """Counts the items taken from the source whose results the consumer has not taken."""

    __slots__ = ("_waiter", "ahead", "resume_at", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        # The intake resumes once a quarter of the window is free again, so that it takes
        # items in runs instead of waking up for each one.
        self.resume_at = size - max(1, size // 4)
        self.ahead = 0
        self._waiter: asyncio.Future[None] | None = None

    async def wait_for_room(self) -> None:
        while self.ahead >= self.size:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        self.ahead -= 1
        waiter = self._waiter
        if waiter is not None and self.ahead <= self.resume_at and not waiter.done():
            waiter.set_result(None)


class _Output:
    """Results ready for the consumer, in completion order or (``ordered``) input order."""

    __slots__ = ("_next", "_parked", "ordered", "ready")

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self.ready: deque[WorkItemResult[Any, Any]] = deque()
        self._parked: dict[int, WorkItemResult[Any, Any] | None] = {}
        self._next = 0

    def put(self, seq: int, result: WorkItemResult[Any, Any] | None) -> None:
        """Add the result of the item taken `seq`-th (``None``: it has none)."""
        if not self.ordered:
            if result is not None:
                self.ready.append(result)
            return
        parked = self._parked
        parked[seq] = result
        while self._next in parked:
            released = parked.pop(self._next)
            self._next += 1
            if released is not None:
                self.ready.append(released)


class _Sequence:
    """Remembers the input position of each queued item (for ordered output)."""

    __slots__ = ("_positions",)

    def __init__(self) -> None:
        # By object identity: the same item object may be queued twice.
        self._positions: dict[int, list[int]] = {}

    def add(self, item: object, seq: int) -> None:
        self._positions.setdefault(id(item), []).append(seq)

    def pop(self, item: object) -> int:
        positions = self._positions[id(item)]
        seq = positions.pop(0)
        if not positions:
            del self._positions[id(item)]
        return seq


class StreamRun:
    """One run of `ParallelBatchProcessor.stream` (or of a checkpointed ``process_all``).

    Args:
        processor: The processor whose workers, statistics, hooks and events the run uses.
        sources: Iterables or async iterables of work items, taken in order.
        ordered: Hand results out in input order.
        window: Most items taken ahead of the consumer.
        total: The number of items, when known in advance (else counted as they come).
        clean_up_strategies: Call ``cleanup()`` on the strategies when the run ends (a
            stream does; ``process_all`` leaves it to the end of the processor).
    """

    def __init__(
        self,
        processor: ParallelBatchProcessor[Any, Any, Any],
        sources: list[Any],
        *,
        ordered: bool,
        window: int,
        total: int | None,
        clean_up_strategies: bool,
    ) -> None:
        self.processor = processor
        self.sources = sources
        self.ordered = ordered
        self.window = _Window(window)
        self.total = total
        self.checkpoint: CheckpointSession | None = None
        self.clean_up_strategies = clean_up_strategies
        self.output = _Output(ordered)
        self.post_processing = processor.post_processor is not None
        self._positions = _Sequence() if ordered else None
        self._next_seq = 0
        self._outstanding = 0  # taken, no result published yet
        self._intake_done = False
        self._failure: BaseException | None = None  # stops the run at once
        self._deferred: BaseException | None = None  # raised after the items in flight
        self._consumer: asyncio.Future[None] | None = None
        self._pool: WorkerPool | None = None
        # Results in the post-processor, by worker: published once it returns.
        self._posting: dict[Any, tuple[int, WorkItemResult[Any, Any]]] = {}
        self._spawned = 0
        self._intake: asyncio.Task[None] | None = None
        self._iterators: list[Any] = []
        # Checkpoint state: items waiting for their lookup, outcomes waiting for a commit
        # (with the future of a worker waiting for it, when one does), held-back events.
        self._incoming: list[tuple[int, Any]] = []
        self._outcomes: list[tuple[Any, WorkItemResult[Any, Any] | None, Any, Any]] = []
        self._store_task: asyncio.Task[None] | None = None
        self._store_wake = asyncio.Event()
        self._draining = False
        self._held_events: dict[str, tuple[ProcessingEvent, dict[str, Any]]] = {}
        self._restore_publish: Callable[[ProcessingEvent, dict[str, Any]], None] | None = None
        self._shut_down = False
        self._closed = asyncio.Event()
        self._batch_started = False
        self._owns_processor = False
        self._generator: weakref.ref[Any] | None = None
        # Provider batch jobs (mode "batch" / "auto"): their coordinator, the answers
        # waiting for a worker (by item object), metadata writes waiting for the store.
        self.batch: BatchJobs | None = None
        self._answers: dict[int, list[Answer]] = {}
        self._meta_writes: list[tuple[dict[str, str], asyncio.Future[None]]] = []
        self._intake_paused = False
        # The timeline a checkpointed run records (`ProcessorConfig.timeline_interval`).
        self.timeline: TimelineRecorder | None = None
        self._timeline_task: asyncio.Task[None] | None = None

    # -- the consumer --------------------------------------------------------------------

    async def results(self) -> AsyncIterator[WorkItemResult[Any, Any]]:
        """The results, as they become available; see the module docstring."""
        exit_error: BaseException | None = None
        try:
            await self._start()
            output = self.output
            ready = output.ready
            window = self.window
            while True:
                if ready:
                    result = ready.popleft()
                    window.release()
                    yield result
                    continue
                if self._failure is not None:
                    raise self._failure
                if self._intake_done and self._outstanding == 0:
                    break
                waiter = self._consumer = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._consumer = None
            await self._finish()
        except BaseException as exc:
            exit_error = exc
            raise
        finally:
            await self._shut_down_run(exit_error)
        if self._deferred is not None:
            raise self._deferred

    def _wake_consumer(self) -> None:
        waiter = self._consumer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake_consumer()

    # -- start and end ---------------------------------------------------------------------

    async def _start(self) -> None:
        processor = self.processor
        previous = processor._active_run
        if previous is not None and previous.abandoned:
            # The last stream was dropped unfinished; the event loop is closing it.
            await previous.close()
        if processor._is_processing:
            msg = "This processor is already running a batch; start the next one after it"
            raise RuntimeError(msg)
        processor._is_processing = True
        processor._active_run = self
        self._owns_processor = True
        # What was queued with add_work goes first; it is taken only now, when the run
        # starts, like process_all() does.
        queued = processor._take_queued()
        if queued:
            self.sources.insert(0, queued)
        self.checkpoint = processor._new_checkpoint_session()
        await processor._begin_run(self.total or 0)
        if self.checkpoint is not None:
            await self.checkpoint.open()
            runner = processor._runner
            self._start_timeline()
            if processor._dispatcher.observers:
                self._restore_publish = runner.publish_final
                runner.publish_final = self._hold_event
        self._batch_started = True
        processor._publish_batch_started(self.total)
        self.batch = self._batch_jobs()
        replays_run_on_workers = self.checkpoint is not None and self.post_processing
        self._pool = processor._make_pool(
            record=self._record,
            post=self._post,
            on_change=self._check_pool,
            run=self._run_job if replays_run_on_workers or self.batch is not None else None,
        )
        processor._pool = self._pool
        self._intake = asyncio.ensure_future(self._take_items())
        if self.checkpoint is not None:
            self._store_task = asyncio.ensure_future(self._store_loop())
            if self.timeline is not None:
                self._timeline_task = asyncio.ensure_future(self._record_timeline())

    async def _run_job(self, item: Any, worker: Any) -> WorkItemResult[Any, Any]:
        if type(item) is ReplayJob:
            return item.result
        runner = self.processor._runner
        answers = self._answers.get(id(item)) if self._answers else None
        if answers:
            answer = answers.pop(0)
            if not answers:
                del self._answers[id(item)]
            return await runner.traced(item, runner.run_answered(item, worker, answer))
        result: WorkItemResult[Any, Any] = await runner.entry_point()(item, worker)
        return result

    # -- the timeline --------------------------------------------------------------------------

    def _start_timeline(self) -> None:
        processor = self.processor
        interval = processor.config.timeline_interval
        checkpoint = self.checkpoint
        if interval is None or checkpoint is None:
            return
        self.timeline = TimelineRecorder(
            checkpoint.session, interval=interval, scopes=processor._scope_snapshots
        )
        processor._runner.timeline = self.timeline

    async def _record_timeline(self) -> None:
        timeline = self.timeline
        assert timeline is not None
        while True:
            await asyncio.sleep(timeline.interval)
            try:
                await self._save_meta(timeline.flush())
            except Exception:
                # The store stopped (the run reports that itself) or refused the write.
                logger.debug("Recording the timeline failed", exc_info=True)
                return

    def _stop_timeline(self) -> None:
        """Stop sampling and queue the last sample for the store task's final writes."""
        task, self._timeline_task = self._timeline_task, None
        if task is not None:
            task.cancel()
        timeline = self.timeline
        if timeline is None:
            return
        self.timeline = None
        self.processor._runner.timeline = None
        store = self._store_task
        if store is None or store.done():
            return
        done = asyncio.get_running_loop().create_future()
        # Nobody waits for it: the store task either writes it before it stops or fails.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        try:
            last = timeline.flush(final=True)
        except Exception:  # a timeline never stops a run from ending
            logger.warning("Recording the end of the run's timeline failed", exc_info=True)
            return
        self._meta_writes.append((last, done))
        self._store_wake.set()

    # -- provider batch jobs ---------------------------------------------------------------

    def _batch_jobs(self) -> BatchJobs | None:
        processor = self.processor
        config = processor.config
        if config.mode == "online" or config.dry_run:
            return None
        from async_batch_llm._internal.batch_jobs import BatchJobs, read_job_records

        checkpoint = self.checkpoint
        dispatcher = processor._dispatcher

        def publish(payload: dict[str, Any]) -> None:
            if dispatcher.observers:
                dispatcher.publish(ProcessingEvent.BATCH_JOB_UPDATED, payload)

        def may_attach(item_id: str) -> bool:
            assert checkpoint is not None
            unfinished = checkpoint.unfinished_ids
            if item_id in unfinished:
                unfinished.discard(item_id)
                return True
            return False

        return BatchJobs(
            mode=config.mode,
            config=config,
            classify=processor._runner._classify,
            prepare=processor._lifecycle.ensure_prepared,
            deliver=self._deliver_answer,
            save=self._save_meta if checkpoint is not None else None,
            records=read_job_records(checkpoint.meta) if checkpoint is not None else {},
            publish=publish,
            budget=processor.budget,
            may_attach=may_attach if checkpoint is not None else None,
            stopping=processor._runner.stopping,
        )

    def _route(self, item: Any, seq: int) -> None:
        """Queue `item` for the workers, or take it into a provider batch job."""
        batch = self.batch
        if batch is not None:
            api = batch.api_for(item.strategy)
            if api is not None:
                batch.add(item, seq, api)
                return
        self._queue_live(item, seq)

    def _check_batchable(self, item: Any) -> None:
        """Ask the item's strategy for its batch API (before the item counts as taken: a
        hook that fails stops the intake); in mode "batch", refuse one without."""
        batch = self.batch
        if batch is None or batch.api_for(item.strategy) is not None or batch.mode != "batch":
            return
        msg = (
            f"mode='batch', but {type(item.strategy).__name__} (item {item.item_id!r}) has no "
            "batch API: its batch_api() returned None. Use mode='auto' to run such items "
            "online, or a strategy whose model has a batch API"
        )
        raise ValueError(msg)

    def _deliver_answer(self, item: Any, seq: int, answer: Answer) -> None:
        # A list: the same item object may be taken twice.
        self._answers.setdefault(id(item), []).append(answer)
        self._queue_live(item, seq)
        batch = self.batch
        if batch is not None and batch.outstanding == 0:
            self._close_queue_when_done()
            self._store_wake.set()

    def _update_batch_idle(self) -> None:
        """Tell the batch jobs whether more items are coming right now."""
        batch = self.batch
        if batch is None:
            return
        idle = (self._intake_done or self._intake_paused) and not self._incoming
        if idle != batch.intake_idle:
            batch.intake_idle = idle
            batch.nudge()

    def _batch_idle(self) -> bool:
        return self.batch is None or self.batch.outstanding == 0

    def _close_queue_when_done(self) -> None:
        if self.checkpoint is None and self._intake_done and self._batch_idle():
            self.processor._queue.close()

    async def _save_meta(self, meta: dict[str, str]) -> None:
        """Write metadata keys through the store task (which owns the store) durably."""
        task = self._store_task
        if task is None or task.done() or self._draining:
            msg = "The checkpoint store is closed: a batch job could not be recorded"
            raise RuntimeError(msg)
        done = asyncio.get_running_loop().create_future()
        self._meta_writes.append((meta, done))
        self._store_wake.set()
        await done

    async def _finish(self) -> None:
        """Every result is out: let the workers stop and the last commits land."""
        if self._pool is not None:
            await self._pool.finish(WORKER_STOP_TIMEOUT)
            if self._pool.fatal is not None:
                raise self._pool.fatal
        if self._store_task is not None:
            await self._stop_store()
            if self._failure is not None:
                raise self._failure

    def attach(self, stream: AsyncGenerator[WorkItemResult[Any, Any], None]) -> None:
        """Remember the generator that runs `results` (weakly, so that dropping it
        unfinished lets the event loop close it)."""
        self._generator = weakref.ref(stream)

    @property
    def abandoned(self) -> bool:
        """Whether the run's generator was dropped before it finished (its shutdown is
        scheduled by the event loop's async-generator finaliser)."""
        return self._generator is not None and self._generator() is None

    async def close(self) -> None:
        """Stop the run (as if its consumer left the loop) and wait until it has."""
        stream = self._generator() if self._generator is not None else None
        if stream is not None:
            try:
                await stream.aclose()
            except RuntimeError:
                # Iterated by another task right now: make that task's iteration stop.
                self._fail(RuntimeError("The processor was shut down while the stream ran"))
        if self._owns_processor:
            await self._closed.wait()

    async def _shut_down_run(self, exit_error: BaseException | None) -> None:
        if not self._owns_processor:
            return
        if self._shut_down:
            await self._closed.wait()
            return
        self._shut_down = True
        # In a task of its own: a cancellation of the consumer (a second one, or a stray
        # one raised by user code during the shutdown) must not skip the last commits or
        # leave the store open. Every step is bounded, so waiting for it is too.
        steps = asyncio.ensure_future(self._shut_down_steps(exit_error))
        interrupted: BaseException | None = None
        try:
            while not steps.done():
                try:
                    await asyncio.wait([steps])
                except asyncio.CancelledError as exc:
                    interrupted = exc
            steps.result()
        finally:
            self._closed.set()
            if self.processor._active_run is self:
                self.processor._active_run = None
        if interrupted is not None:
            raise interrupted

    async def _shut_down_steps(self, exit_error: BaseException | None) -> None:
        processor = self.processor
        grace = processor.config.cancellation_grace
        try:
            await self._stop_intake(grace)
            if self.batch is not None:
                await self.batch.close(cancel_jobs=self._cancels_batch_jobs(exit_error))
            if self._pool is not None:
                await self._pool.cancel()
            # Items queued but never started: a rerun finds them claimed but unfinished.
            queue = processor._queue
            while queue.take() is not None:
                pass
            if self._store_task is not None:
                await self._stop_store()
            if self.checkpoint is not None:
                await self.checkpoint.close()
                self.checkpoint.log_report()
                if self._restore_publish is not None:
                    processor._runner.publish_final = self._restore_publish
        finally:
            processor._end_batch()
            try:
                quiet = isinstance(exit_error, asyncio.CancelledError | KeyboardInterrupt)
                if self._batch_started and not quiet:
                    await processor._on_batch_completed()
            finally:
                try:
                    await processor._progress.cancel_all(grace)
                finally:
                    if self.clean_up_strategies:
                        await processor._lifecycle.cleanup_all()

    def _cancels_batch_jobs(self, exit_error: BaseException | None) -> bool:
        if self.batch is None:
            return False
        policy = self.processor.config.batch_on_cancel
        if policy == "auto":
            return self.checkpoint is None
        return policy == "cancel"

    async def _stop_intake(self, grace: float) -> None:
        task = self._intake
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=grace)
        for iterator in self._iterators:
            try:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await asyncio.wait_for(aclose(), grace)
                else:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
            except Exception:
                logger.warning("Closing the stream's source failed", exc_info=True)
        self._iterators.clear()

    # -- intake ------------------------------------------------------------------------------

    async def _take_items(self) -> None:
        window = self.window
        try:
            for source in self.sources:
                if hasattr(source, "__aiter__"):
                    iterator = source.__aiter__()
                    self._iterators.append(iterator)
                    while True:
                        if window.ahead >= window.size:
                            await self._wait_for_room()
                        try:
                            item = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        self._take(item)
                else:
                    iterator = iter(source)
                    self._iterators.append(iterator)
                    for item in iterator:
                        self._take(item)
                        if window.ahead >= window.size:
                            await self._wait_for_room()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The source (or an item it gave) is broken: what was taken still finishes.
            self._deferred = exc
        finally:
            self._intake_done = True
            if self.checkpoint is None:
                self._close_queue_when_done()
            else:
                self._store_wake.set()
            self._update_batch_idle()
            self._wake_consumer()

    async def _wait_for_room(self) -> None:
        self._intake_paused = True
        self._update_batch_idle()
        try:
            await self.window.wait_for_room()
        finally:
            self._intake_paused = False
            self._update_batch_idle()

    def _take(self, item: Any) -> None:
        processor = self.processor
        processor._check_stream_item(item)
        if self.batch is not None:
            self._check_batchable(item)
        seq = self._next_seq
        self._next_seq = seq + 1
        self.window.ahead += 1
        self._outstanding += 1
        if self.total is None:
            processor._counts.total += 1
        if self.checkpoint is not None:
            self._incoming.append((seq, item))
            self._store_wake.set()
        elif self.batch is not None:
            self._route(item, seq)
        else:
            self._queue_live(item, seq)

    def _queue_live(self, item: Any, seq: int) -> None:
        if self._positions is not None and type(item) is not ReplayJob:
            self._positions.add(item, seq)
        self.processor._queue.put_nowait(item)
        if self._spawned < self.processor.max_workers:
            self._spawned += 1
            assert self._pool is not None
            self._pool.spawn(1)

    # -- publishing ------------------------------------------------------------------------

    def _record(self, result: WorkItemResult[Any, Any], item: Any, worker: Any) -> bool:
        """The pool's record step: publish now, or hand the outcome to the store task, or
        leave it to `_post` (which post-processes it on the worker)."""
        if self.post_processing:
            return True
        checkpoint = self.checkpoint
        if checkpoint is None:
            self.processor._count_result(result, item)
            self._put(self._seq_of(item), result)
            return False
        entry = checkpoint.entry_for(item, result, worker.replayable_failure)
        if self.timeline is not None:
            self._timeline_item(result, item, worker)
        self._outcomes.append((entry, result, item, None))
        self._store_wake.set()
        return False

    def _timeline_item(self, result: WorkItemResult[Any, Any], item: Any, worker: Any) -> None:
        assert self.timeline is not None
        first_call = worker.first_call
        worker.first_call = 0.0
        seconds = time.monotonic() - first_call if first_call else 0.0
        self.timeline.item_ended(result, item, seconds)

    async def _post(self, result: WorkItemResult[Any, Any], worker: Any) -> None:
        item = worker.item
        processor = self.processor
        if type(item) is ReplayJob:
            self._count_replayed([(item.seq, item.item, result)])
            seq = item.seq
        else:
            checkpoint = self.checkpoint
            if checkpoint is not None:
                entry = checkpoint.entry_for(item, result, worker.replayable_failure)
                if self.timeline is not None:
                    self._timeline_item(result, item, worker)
                committed = asyncio.get_running_loop().create_future()
                self._outcomes.append((entry, result, item, committed))
                self._store_wake.set()
                if not await committed:
                    return  # the store failed: nothing about the item is published
                self._release_event(item.item_id)
            processor._count_result(result, item)
            seq = self._seq_of(item)
        # Published when the post-processor returns, or when its worker is given up on for
        # ignoring its cancellation there (see `_check_pool`), whichever comes first.
        posting = self._posting
        posting[worker] = (seq, result)
        try:
            await processor._run_post_processor(result, worker.deadline)
        finally:
            pending = posting.pop(worker, None)
            if pending is not None:
                self._put(*pending)

    def _count_replayed(self, replayed: list[_Replay]) -> None:
        """Count replayed results in the statistics, spans, timeline and events."""
        processor = self.processor
        count = processor._count_result
        instruments = processor._runner.instruments
        dispatcher = processor._dispatcher
        for _, item, result in replayed:
            count(result, item, False)
            if instruments is not None:
                instruments.item_replayed(item, result)
            if dispatcher.observers:
                dispatcher.publish(
                    ProcessingEvent.ITEM_REPLAYED,
                    {"item_id": item.item_id, "success": result.success},
                )
        if self.timeline is not None:
            self.timeline.item_replayed(len(replayed))

    def _publish_replays(self, replayed: list[_Replay]) -> None:
        """Count and hand out a batch of replays at once (a resume is mostly these)."""
        self._count_replayed(replayed)
        put = self.output.put
        for seq, _, result in replayed:
            put(seq, result)
        self._outstanding -= len(replayed)
        self._wake_consumer()

    def _seq_of(self, item: Any) -> int:
        """The input position of a queued item (only kept for ordered output)."""
        return self._positions.pop(item) if self._positions is not None else 0

    def _put(self, seq: int, result: WorkItemResult[Any, Any] | None) -> None:
        self._outstanding -= 1
        self.output.put(seq, result)
        if result is None:
            self.window.release()
        self._wake_consumer()

    def _hold_event(self, event: ProcessingEvent, payload: dict[str, Any]) -> None:
        # An item's final event waits for its commit: observers (a progress bar) must not
        # show an outcome that a crash could still lose.
        self._held_events[str(payload.get("item_id"))] = (event, payload)

    def _release_event(self, item_id: str) -> None:
        held = self._held_events.pop(item_id, None)
        if held is not None:
            self.processor._dispatcher.publish(*held)

    # -- the pool ----------------------------------------------------------------------------

    def _check_pool(self) -> None:
        pool = self._pool
        if pool is None:
            return
        posting = self._posting
        if posting:
            for worker in [worker for worker in posting if worker.abandoned]:
                self._put(*posting.pop(worker))
        fatal = pool.fatal
        if fatal is not None:
            self._fail(fatal)
            return
        error = pool.dead_worker_error
        if error is not None:
            self._fail(error)

    # -- the store ----------------------------------------------------------------------------

    async def _store_loop(self) -> None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        wake = self._store_wake
        queue = self.processor._queue
        workers = self.processor.max_workers
        # Half a window at a time: while one batch is handed out, the intake has taken the
        # next one and its lookup runs on the store's thread.
        lookup_batch = max(16, min(LOOKUP_BATCH, self.window.size // 2))
        queue_closed = False
        try:
            while True:
                if self._meta_writes:
                    await self._write_meta()
                    continue
                # New items are looked up first when the workers are running short of work;
                # their claims then share one commit with the outcomes waiting for it.
                admitted = None
                if (
                    self._incoming
                    and self._failure is None
                    and not self._draining
                    and (not self._outcomes or queue.qsize() < workers)
                ):
                    batch_in = self._incoming[:lookup_batch]
                    del self._incoming[:lookup_batch]
                    admitted = await checkpoint.admit(batch_in)
                outcomes, self._outcomes = self._outcomes, []
                claims = admitted.claims if admitted is not None else ()
                if outcomes or claims:
                    await checkpoint.commit([outcome[0] for outcome in outcomes], claims)
                if outcomes:
                    self._published_committed(outcomes)
                if admitted is not None:
                    self._apply(admitted)
                    self._update_batch_idle()
                if outcomes or admitted is not None:
                    continue
                if self._draining:
                    return
                if (
                    self._intake_done
                    and not self._incoming
                    and not queue_closed
                    and self._batch_idle()
                ):
                    queue_closed = True
                    queue.close()
                wake.clear()
                await wake.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)
        finally:
            for _, _, _, committed in self._outcomes:
                if committed is not None and not committed.done():
                    committed.set_result(False)
            self._outcomes.clear()
            writes, self._meta_writes = self._meta_writes, []
            for _, done in writes:
                if not done.done():
                    done.set_exception(RuntimeError("The checkpoint store stopped"))

    async def _write_meta(self) -> None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        writes, self._meta_writes = self._meta_writes, []
        merged: dict[str, str] = {}
        for meta, _ in writes:
            merged.update(meta)
        try:
            await checkpoint.save_meta(merged)
        except BaseException as exc:
            for _, done in writes:
                if not done.done():
                    done.set_exception(exc)
            raise
        for _, done in writes:
            if not done.done():
                done.set_result(None)

    def _published_committed(self, batch: list[tuple[Any, Any, Any, Any]]) -> None:
        count = self.processor._count_result
        for _, result, item, committed in batch:
            if committed is not None:
                if not committed.done():
                    committed.set_result(True)
                continue
            self._release_event(item.item_id)
            count(result, item)
            self._put(self._seq_of(item), result)

    def _apply(self, admitted: Admitted) -> None:
        """Queue the items to run (claimed now), publish the replays, stop at a duplicate."""
        replayed: list[_Replay] = []
        for seq, item, replay in admitted.decisions:
            if replay is None:
                self._route(item, seq)
            elif self.post_processing:
                self._queue_live(ReplayJob(item, replay, seq), seq)
            else:
                replayed.append((seq, item, replay))
        if replayed:
            self._publish_replays(replayed)
        if admitted.stop is not None:
            self._deferred = admitted.stop
            for seq, _ in admitted.dropped:
                self._put(seq, None)
            for seq, _ in self._incoming:
                self._put(seq, None)
            self._incoming.clear()
            if self._intake is not None:
                self._intake.cancel()
            self._intake_done = True
            self._wake_consumer()

    async def _stop_store(self) -> None:
        task = self._store_task
        if task is None:
            return
        self._stop_timeline()
        self._draining = True
        self._store_wake.set()
        if not task.done():
            await asyncio.wait([task])
        self._store_task = None
