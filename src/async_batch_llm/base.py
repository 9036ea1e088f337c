"""Data types of a batch and the abstract `BatchProcessor` (queue and worker-pool lifecycle)."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Self

from async_batch_llm._internal.callbacks import (
    PostProcessorRunner,
    ProgressNotifier,
    is_async_callable,
)
from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm._internal.usage import UsageNormalizer
from async_batch_llm._internal.validation import check_callable, check_strategy
from async_batch_llm._internal.values import (
    LLMResponse,
    RetryState,
    TContext,
    TInput,
    TokenUsage,
    TOutput,
    WorkItemResult,
)
from async_batch_llm._internal.work_queue import WorkQueue

if TYPE_CHECKING:
    from async_batch_llm.llm_strategies import LLMCallStrategy

__all__ = [
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "BatchProcessor",
    "BatchResult",
    "LLMResponse",
    "LLMWorkItem",
    "PostProcessorFunc",
    "ProcessingStats",
    "ProgressCallbackFunc",
    "RetryState",
    "TContext",
    "TInput",
    "TOutput",
    "TokenUsage",
    "WorkItemResult",
]

logger = logging.getLogger(__name__)

WORKER_CANCELLATION_TIMEOUT: Final = 2.0
"""Seconds ``cleanup()`` waits for cancelled workers (x2.5 when ``process_all`` is cancelled)."""
WORKER_SHUTDOWN_TIMEOUT: Final = 30.0
"""Seconds ``process_all()`` waits for workers to stop once the queue has drained."""
POST_PROCESSOR_EXECUTION_TIMEOUT: Final = 75.0
"""Inner limit in seconds on an async post-processor."""
PROGRESS_TASK_CANCELLATION_TIMEOUT: Final = 2.0
"""Seconds ``cleanup()`` waits for cancelled progress-callback tasks."""


@dataclass
class LLMWorkItem(Generic[TInput, TOutput, TContext]):
    """One unit of work: an id, the strategy that runs it, the prompt and a caller context.

    Raises:
        ValueError: ``item_id`` is not a non-blank string, or ``strategy`` is ``None``.
        TypeError: ``prompt`` is not a string.
    """

    item_id: str
    strategy: LLMCallStrategy[TOutput]
    prompt: str = ""
    context: TContext | None = None

    def __post_init__(self) -> None:
        # Fields are checked as plain objects: callers without a type checker pass anything.
        item_id: object = self.item_id
        if not item_id or not isinstance(item_id, str):
            msg = f"item_id must be a non-empty string, got {item_id!r}"
            raise ValueError(msg)
        if not item_id.strip():
            msg = f"item_id must not be blank (whitespace only), got {item_id!r}"
            raise ValueError(msg)
        strategy: object = self.strategy
        if strategy is None:
            msg = (
                f"strategy must not be None for item {self.item_id!r}: "
                "pass an LLMCallStrategy instance"
            )
            raise ValueError(msg)
        prompt: object = self.prompt
        if not isinstance(prompt, str):
            msg = f"prompt must be a str for item {item_id!r}, got {type(prompt).__name__}"
            raise TypeError(msg)


@dataclass
class BatchResult(Generic[TOutput, TContext]):
    """All results of a batch with summary counts, always recomputed from ``results``.

    The token totals are what this run spent: results replayed from a checkpoint keep the
    usage of the run that made them in ``token_usage`` but are not added again.
    """

    results: list[WorkItemResult[TOutput, TContext]]
    total_items: int = 0
    succeeded: int = 0
    failed: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cached_tokens: int = 0

    def __post_init__(self) -> None:
        succeeded, failed, input_tokens, output_tokens, _, cached_tokens = tally_results(
            self.results, _CLEANER
        )
        self.total_items = len(self.results)
        self.succeeded = succeeded
        self.failed = failed
        self.total_input_tokens = input_tokens
        self.total_output_tokens = output_tokens
        self.total_cached_tokens = cached_tokens

    def cache_hit_rate(self) -> float:
        """Percentage of input tokens served from a provider cache (0.0 when there were none)."""
        if self.total_input_tokens == 0:
            return 0.0
        return self.total_cached_tokens / self.total_input_tokens * 100.0

    def effective_input_tokens(self) -> int:
        """Input tokens with cached ones counted at a 90% discount."""
        return self.total_input_tokens - int(self.total_cached_tokens * 0.9)


def tally_results(
    results: Iterable[WorkItemResult[Any, Any]],
    cleaner: UsageNormalizer,
    error_counts: dict[str, int] | None = None,
    *,
    spent: bool = True,
    clean_in_place: bool = False,
) -> tuple[int, int, int, int, int, int]:
    """Count `results`: the one place that sums outcomes and tokens (`BatchResult`, the
    processor's statistics).

    Returns ``(succeeded, failed, input, output, total, cached input tokens)``. Tokens of a
    replayed result are left out (this run did not spend them), and all tokens when not
    `spent`. Usage that is not a dict of non-negative ints is read through `cleaner` (one
    WARNING); with `clean_in_place` the cleaned usage replaces the result's. With
    `error_counts`, each failure with an error text adds one to its error type's count.
    """
    succeeded = failed = input_tokens = output_tokens = total_tokens = cached = 0
    for result in results:
        if result.success:
            succeeded += 1
        else:
            failed += 1
            if error_counts is not None and result.error:
                key = str(result.error).split(":")[0]
                error_counts[key] = error_counts.get(key, 0) + 1
        if not spent or result.replayed:
            continue
        usage: Any = result.token_usage
        if type(usage) is dict:
            get = usage.get
            result_input = get("input_tokens", 0)
            result_output = get("output_tokens", 0)
            result_total = get("total_tokens", 0)
            result_cached = get("cached_input_tokens", 0)
            if (
                type(result_input) is int
                and type(result_output) is int
                and type(result_total) is int
                and type(result_cached) is int
                and (result_input | result_output | result_total | result_cached) >= 0
            ):
                input_tokens += result_input
                output_tokens += result_output
                total_tokens += result_total
                cached += result_cached
                continue
        # The item runner hands over clean usage; a result built elsewhere (a subclass, by
        # hand, a middleware, changed after the batch) may carry anything.
        usage = (
            cleaner.normalize(usage, cleaner, f"The result of item {result.item_id!r}")
            if usage
            else {}
        )
        if clean_in_place:
            result.token_usage = usage
        input_tokens += usage.get("input_tokens", 0)
        output_tokens += usage.get("output_tokens", 0)
        total_tokens += usage.get("total_tokens", 0)
        cached += usage.get("cached_input_tokens", 0)
    return succeeded, failed, input_tokens, output_tokens, total_tokens, cached


def counted_batch_result(
    results: list[WorkItemResult[TOutput, TContext]], stats: ProcessingStats
) -> BatchResult[TOutput, TContext]:
    """The `BatchResult` of `results`, with the counts `stats` holds of exactly them.

    Equal to ``BatchResult(results=results)`` without its recount, a second pass over
    every result of the batch.
    """
    batch: BatchResult[TOutput, TContext] = BatchResult.__new__(BatchResult)
    batch.results = results
    batch.total_items = len(results)
    batch.succeeded = stats.succeeded
    batch.failed = stats.failed
    batch.total_input_tokens = stats.total_input_tokens
    batch.total_output_tokens = stats.total_output_tokens
    batch.total_cached_tokens = stats.cached_input_tokens
    return batch


@dataclass
class ProcessingStats:
    """Running counters of a batch; ``get_stats()`` returns a copy as a plain dict."""

    total: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    start_time: float | None = None
    error_counts: dict[str, int] = field(default_factory=dict)
    rate_limit_count: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    total_cached_tokens: int = 0

    def copy(self) -> dict[str, Any]:
        """Return the counters as a new dict (``error_counts`` copied shallowly)."""
        return {
            "total": self.total,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "start_time": self.start_time,
            "error_counts": dict(self.error_counts),
            "rate_limit_count": self.rate_limit_count,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "total_cached_tokens": self.total_cached_tokens,
        }


PostProcessorFunc = Callable[[WorkItemResult[TOutput, TContext]], Awaitable[None] | None]
ProgressCallbackFunc = Callable[[int, int, str], Awaitable[None] | None]


class BatchProcessor(ABC, Generic[TInput, TOutput, TContext]):
    """A queue of work items drained by a pool of worker tasks.

    Add items with `add_work`, then run them all with `process_all`. Use the processor as
    an ``async with`` block (or call ``cleanup()``) so no task outlives it. Subclasses
    implement `_worker` and `_process_item`; `ParallelBatchProcessor` is the one to use.

    Args:
        max_workers: Number of worker tasks.
        post_processor: Called with every final result, success or failure (sync or async).
        max_queue_size: Most items that may be queued; ``0`` means no limit.
        progress_callback: ``callback(completed, total, current_item_id)`` (sync or async),
            called every `progress_interval` results without blocking the workers.
        progress_callback_timeout: Seconds after which a running progress callback is
            given up on; ``None`` for no limit.

    Raises:
        TypeError: `post_processor` or `progress_callback` is not callable.
    """

    @property
    def progress_interval(self) -> int:
        """Results between progress callbacks and INFO progress lines."""
        return 10

    @property
    def post_processor_timeout(self) -> float:
        """Outer limit in seconds on one post-processor call."""
        return 90.0

    def __init__(
        self,
        max_workers: int = 5,
        post_processor: PostProcessorFunc[TOutput, TContext] | None = None,
        max_queue_size: int = 0,
        progress_callback: ProgressCallbackFunc | None = None,
        progress_callback_timeout: float | None = None,
    ) -> None:
        check_callable("post_processor", post_processor)
        check_callable("progress_callback", progress_callback)
        self.max_workers = max_workers
        self.post_processor = post_processor
        self.max_queue_size = max_queue_size
        self.progress_callback = progress_callback
        self.progress_callback_timeout = progress_callback_timeout
        self._queue: WorkQueue[LLMWorkItem[TInput, TOutput, TContext] | None] = WorkQueue(
            maxsize=max_queue_size
        )
        # The results of the batch (in completion order) and its counters, which count
        # the first `_counted` of them: the rest are counted when the counters are read
        # (`_stats`), so that recording a result costs an append.
        self._results: list[WorkItemResult[TOutput, TContext]] = []
        self._counts = ProcessingStats()
        self._counted = 0
        self._workers: list[asyncio.Task[None]] = []
        self._is_processing = False
        self._progress_tasks: set[asyncio.Task[Any]] = set()
        self._processing_started = False
        self._progress_callback_is_async = is_async_callable(progress_callback)
        self._progress = ProgressNotifier(self._progress_tasks)
        self._progress_every = self.progress_interval
        self._post_processing: PostProcessorRunner | None = None
        self._usage_cleaner = UsageNormalizer()
        # Ids queued for the next batch, to warn about duplicates.
        self._queued_ids: set[str] = set()
        # Strategies that passed the up-front checks (held, so that an id is not reused).
        self._checked_strategies: dict[int, object] = {}
        self._last_checked: object = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        await self.cleanup()
        return False

    async def add_work(self, work_item: LLMWorkItem[TInput, TOutput, TContext]) -> None:
        """Queue one item. Only allowed before `process_all` has started.

        Raises:
            RuntimeError: ``process_all()`` has started, or a bounded queue is full.
            TypeError: `work_item` is not a work item, or its strategy cannot run (no
                ``async def execute``).
        """
        if self._processing_started:
            msg = (
                "Cannot add work after process_all() has started (or stream()): queue "
                "every item first, pass the rest to stream(), or use a new processor"
            )
            raise RuntimeError(msg)
        if work_item.__class__ is not LLMWorkItem or work_item.strategy is not self._last_checked:
            self._check_item(work_item, "add_work()")
        try:
            self._queue.put_nowait(work_item)
        except asyncio.QueueFull:
            # No worker runs before process_all(), so waiting for space would never end.
            msg = (
                f"The work queue is full (max_queue_size={self.max_queue_size}) and nothing "
                "consumes it before process_all() starts: raise max_queue_size, or set it "
                "to 0 for an unbounded queue"
            )
            raise RuntimeError(msg) from None
        queued_ids = self._queued_ids
        count = len(queued_ids)
        queued_ids.add(work_item.item_id)
        if len(queued_ids) == count:
            logger.warning(
                "Item id %r was added more than once; its results cannot be told apart by id",
                work_item.item_id,
            )
        self._counts.total += 1

    def _check_item(self, work_item: object, where: str = "stream()") -> None:
        """Raise TypeError unless `work_item` is a work item whose strategy can run."""
        if not isinstance(work_item, LLMWorkItem) and not (
            hasattr(work_item, "item_id") and hasattr(work_item, "strategy")
        ):
            msg = f"{where} expects an LLMWorkItem, got {type(work_item).__name__}"
            raise TypeError(msg)
        strategy = work_item.strategy
        if strategy is not self._last_checked and (
            self._checked_strategies.get(id(strategy)) is not strategy
        ):
            check_strategy(strategy, work_item.item_id)
            self._checked_strategies[id(strategy)] = strategy
        self._last_checked = strategy

    async def process_all(self) -> BatchResult[TOutput, TContext]:
        """Run every queued item and return all results (in completion order)."""
        self._processing_started = True
        self._queued_ids = set()
        await self._prepare_batch()
        self._results = []
        self._stats = ProcessingStats(total=self._queue.qsize(), start_time=time.time())
        # Read once per batch: the property may go through the config on every access.
        self._progress_every = self.progress_interval
        self._is_processing = True
        try:
            await self._on_batch_started()
            await self._run_workers()
        finally:
            self._end_batch()
        await self._on_batch_completed()
        return counted_batch_result(list(self._results), self._stats)

    @property
    def _stats(self) -> ProcessingStats:
        """The batch's counters, every recorded result counted."""
        if self._counted != len(self._results):
            results = self._results
            start, self._counted = self._counted, len(results)
            self._count_results(results[start:] if start else results, spent=True)
        return self._counts

    @_stats.setter
    def _stats(self, stats: ProcessingStats) -> None:
        self._counts = stats
        self._counted = len(self._results)

    def _end_batch(self) -> None:
        """Called when a batch stops running, however it ended."""
        self._is_processing = False

    async def _prepare_batch(self) -> None:
        """Called by `process_all` before anything runs (subclasses re-check settings)."""

    async def _run_workers(self) -> None:
        """Run `_worker` tasks until the queue is drained, then stop them with sentinels."""
        workers = [
            asyncio.create_task(self._worker(worker_id), name=f"async-batch-llm-worker-{worker_id}")
            for worker_id in range(self.max_workers)
        ]
        self._workers = workers
        try:
            await self._wait_until_drained(workers)
            for _ in workers:
                await self._queue.put(None)
            _, pending = await asyncio.wait(workers, timeout=WORKER_SHUTDOWN_TIMEOUT)
            if pending:
                logger.error(
                    "%d worker(s) did not stop within %.0fs; cancelling them",
                    len(pending),
                    WORKER_SHUTDOWN_TIMEOUT,
                )
                await self._cancel_tasks(pending, WORKER_CANCELLATION_TIMEOUT * 2.5)
        except BaseException:
            await self._cancel_tasks(workers, WORKER_CANCELLATION_TIMEOUT * 2.5)
            await self._progress.cancel_all(PROGRESS_TASK_CANCELLATION_TIMEOUT)
            raise

    async def _wait_until_drained(self, workers: list[asyncio.Task[None]]) -> None:
        # Also watch the workers: one that dies (a bug, KeyboardInterrupt) would otherwise
        # leave queue.join() waiting forever.
        joined = asyncio.ensure_future(self._queue.join())
        try:
            done, _ = await asyncio.wait([joined, *workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not joined.done():
                joined.cancel()
        for task in workers:
            if task in done:
                task.result()  # re-raise what killed it
                msg = "a worker stopped before the queue was drained"
                raise RuntimeError(msg)

    @staticmethod
    async def _cancel_tasks(tasks: Any, timeout: float) -> None:
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            _, pending = await asyncio.wait(unfinished, timeout=timeout)
            if pending:
                logger.warning("%d task(s) did not stop after cancellation", len(pending))

    async def cleanup(self) -> None:
        """Cancel remaining workers, drop queued items and stop progress-callback tasks.

        Items still queued were never processed: a WARNING says how many.
        """
        await self._cancel_tasks(self._workers, WORKER_CANCELLATION_TIMEOUT)
        queue = self._queue
        dropped = 0
        while not queue.empty():
            if queue.get_nowait() is not None:
                dropped += 1
            queue.task_done()
        if dropped:
            logger.warning(
                "%d queued item(s) were never processed: call process_all() before leaving "
                "the processor (or shutdown()), or do not queue them",
                dropped,
            )
        await self._progress.cancel_all(PROGRESS_TASK_CANCELLATION_TIMEOUT)
        self._progress.close()
        if self._post_processing is not None:
            self._post_processing.close()

    def _record_result(
        self, result: WorkItemResult[TOutput, TContext], item: Any, worker: Any = None
    ) -> bool:
        """Add one final result of `item` to the results (no await: atomic); `worker` is the
        worker context that ran it. The statistics count it when they are next read.

        Returns whether a post-processor is set (so the caller knows to run it).
        """
        results = self._results
        results.append(result)
        if not len(results) % self._progress_every:
            self._report_progress(len(results), item)
        return self.post_processor is not None

    def _count_result(
        self, result: WorkItemResult[TOutput, TContext], item: Any, spent: bool = True
    ) -> bool:
        """Count one final result of `item` in the statistics at once (a result a stream
        hands out, which `_results` does not keep).

        `spent` is false for a result replayed from a checkpoint: an outcome of the batch,
        but its tokens were not spent by this run. Returns whether a post-processor is set.
        """
        self._count_results((result,), spent)
        processed = self._counts.processed
        if not processed % self._progress_every:
            self._report_progress(processed, item)
        return self.post_processor is not None

    def _count_results(
        self, results: Iterable[WorkItemResult[TOutput, TContext]], spent: bool
    ) -> None:
        """Add `results` to the counters: outcomes, error kinds and (when `spent`) tokens.

        Tokens of a replayed result are never added (this run did not spend them), as in
        `BatchResult`.
        """
        stats = self._counts
        succeeded, failed, input_tokens, output_tokens, total_tokens, cached = tally_results(
            results, self._usage_cleaner, stats.error_counts, spent=spent, clean_in_place=True
        )
        stats.processed += succeeded + failed
        stats.succeeded += succeeded
        stats.failed += failed
        stats.total_input_tokens += input_tokens
        stats.total_output_tokens += output_tokens
        stats.total_tokens += total_tokens
        if cached:
            stats.cached_input_tokens += cached
            stats.total_cached_tokens = stats.cached_input_tokens

    def _report_progress(self, processed: int, item: Any) -> None:
        """The INFO progress line and the progress callback, at `processed` results."""
        if logger.isEnabledFor(logging.INFO):
            stats = self._stats
            logger.info(
                "Progress: %d/%d done (%d succeeded, %d failed)",
                processed,
                stats.total,
                stats.succeeded,
                stats.failed,
            )
        self._run_progress_callback(processed, self._counts.total, item.item_id)

    def _run_progress_callback(self, completed: int, total: int, current_item: str) -> None:
        callback = self.progress_callback
        if callback is None:
            return
        self._progress.notify(
            callback,
            is_async_callable(callback),
            self.progress_callback_timeout,
            completed,
            total,
            current_item,
        )

    async def _run_post_processor(
        self,
        result: WorkItemResult[TOutput, TContext],
        deadline: AttemptDeadline | None = None,
    ) -> None:
        post_processor = self.post_processor
        if post_processor is None:
            return
        runner = self._post_processing
        if runner is None or runner.post_processor is not post_processor:
            runner = self._post_processing = PostProcessorRunner(
                post_processor,
                timeout=self.post_processor_timeout,
                inner_timeout=POST_PROCESSOR_EXECUTION_TIMEOUT,
            )
        await runner.run(result, deadline if deadline is not None else AttemptDeadline())

    @abstractmethod
    async def _worker(self, worker_id: int) -> None:
        """Take items from the queue until the ``None`` sentinel arrives."""

    @abstractmethod
    async def _process_item(self, work_item: LLMWorkItem[TInput, TOutput, TContext]) -> Any:
        """Process one item."""

    async def _on_batch_started(self) -> None:
        """Called by `process_all` after the statistics are reset."""

    async def _on_batch_completed(self) -> None:
        """Called by `process_all` after every worker has stopped."""


_CLEANER: Final = UsageNormalizer()
