"""Data types of a batch and the abstract `BatchProcessor` (queue and worker-pool lifecycle)."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypedDict, TypeVar

from async_batch_llm._internal.callbacks import (
    ProgressNotifier,
    is_async_callable,
    run_post_processor,
)

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

#: Seconds ``cleanup()`` waits for cancelled workers (x2.5 when ``process_all`` is cancelled).
WORKER_CANCELLATION_TIMEOUT = 2.0
#: Seconds ``process_all()`` waits for workers to stop once the queue has drained.
WORKER_SHUTDOWN_TIMEOUT = 30.0
#: Inner limit in seconds on an async post-processor.
POST_PROCESSOR_EXECUTION_TIMEOUT = 75.0
#: Seconds ``cleanup()`` waits for cancelled progress-callback tasks.
PROGRESS_TASK_CANCELLATION_TIMEOUT = 2.0

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TContext = TypeVar("TContext")


class TokenUsage(TypedDict, total=False):
    """Token counts of one call or one item; every key is optional (read with ``.get(k, 0)``)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int


TOKEN_KEYS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
)


def _zero_usage() -> TokenUsage:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


@dataclass
class RetryState:
    """Scratchpad shared by every attempt of one work item (and by ``on_error``).

    A strategy can remember what went wrong on earlier attempts, e.g. to switch to a
    stronger model after two validation failures.
    """

    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under ``key``, or ``default``."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.data[key] = value

    def delete(self, key: str, raise_if_missing: bool = False) -> None:
        """Remove ``key``; a missing key is ignored unless ``raise_if_missing`` is true."""
        if raise_if_missing:
            del self.data[key]
        else:
            self.data.pop(key, None)

    def clear(self) -> None:
        """Remove every key."""
        self.data.clear()

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __repr__(self) -> str:
        return f"RetryState({self.data!r})"


@dataclass
class LLMResponse:
    """A provider-neutral model response: text, token counts, metadata and the raw object."""

    text: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int = 0
    metadata: dict[str, Any] | None = None
    raw: Any = None

    @property
    def token_usage(self) -> TokenUsage:
        """The counts as a :class:`TokenUsage` dict (``cached_input_tokens`` only when non-zero)."""
        usage: TokenUsage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_input_tokens:
            usage["cached_input_tokens"] = self.cached_input_tokens
        return usage


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
class WorkItemResult(Generic[TOutput, TContext]):
    """The final outcome of one work item: exactly one per accepted item."""

    item_id: str
    success: bool
    output: TOutput | None = None
    error: str | None = None
    context: TContext | None = None
    token_usage: TokenUsage = field(default_factory=_zero_usage)
    gemini_safety_ratings: dict[str, str] | None = None


@dataclass
class BatchResult(Generic[TOutput, TContext]):
    """All results of a batch with summary counts, always recomputed from ``results``."""

    results: list[WorkItemResult[TOutput, TContext]]
    total_items: int = 0
    succeeded: int = 0
    failed: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cached_tokens: int = 0

    def __post_init__(self) -> None:
        succeeded = input_tokens = output_tokens = cached_tokens = 0
        for result in self.results:
            if result.success:
                succeeded += 1
            usage = result.token_usage
            if usage:
                input_tokens += usage.get("input_tokens", 0)
                output_tokens += usage.get("output_tokens", 0)
                cached_tokens += usage.get("cached_input_tokens", 0)
        self.total_items = len(self.results)
        self.succeeded = succeeded
        self.failed = self.total_items - succeeded
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

    Add items with :meth:`add_work`, then run them all with :meth:`process_all`. Use the
    processor as an ``async with`` block (or call ``cleanup()``) so no task outlives it.
    Subclasses implement :meth:`_worker` and :meth:`_process_item`;
    :class:`~async_batch_llm.ParallelBatchProcessor` is the one to use.

    Args:
        max_workers: Number of worker tasks.
        post_processor: Called with every final result, success or failure (sync or async).
        max_queue_size: Most items that may be queued; ``0`` means no limit.
        progress_callback: ``callback(completed, total, current_item_id)`` (sync or async),
            called every ``progress_interval`` results without blocking the workers.
        progress_callback_timeout: Seconds after which a running progress callback is
            cancelled; ``None`` for no limit.
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
        self.max_workers = max_workers
        self.post_processor = post_processor
        self.max_queue_size = max_queue_size
        self.progress_callback = progress_callback
        self.progress_callback_timeout = progress_callback_timeout
        self._queue: asyncio.Queue[LLMWorkItem[TInput, TOutput, TContext] | None] = asyncio.Queue(
            maxsize=max_queue_size
        )
        self._results: list[WorkItemResult[TOutput, TContext]] = []
        self._stats = ProcessingStats()
        self._workers: list[asyncio.Task[None]] = []
        self._is_processing = False
        self._progress_tasks: set[asyncio.Task[Any]] = set()
        self._processing_started = False
        self._progress_callback_is_async = is_async_callable(progress_callback)
        self._progress = ProgressNotifier(self._progress_tasks)
        self._progress_every = self.progress_interval

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
        """Queue one item. Only allowed before :meth:`process_all` has started.

        Raises:
            RuntimeError: ``process_all()`` has started, or a bounded queue is full.
            TypeError: ``work_item`` is not a work item.
        """
        if self._processing_started:
            msg = (
                "Cannot add work after process_all() has started: queue every item first, "
                "or use a new processor for the next batch"
            )
            raise RuntimeError(msg)
        candidate: object = work_item
        if not isinstance(candidate, LLMWorkItem) and not (
            hasattr(candidate, "item_id") and hasattr(candidate, "strategy")
        ):
            msg = f"add_work() expects an LLMWorkItem, got {type(work_item).__name__}"
            raise TypeError(msg)
        queue = self._queue
        if queue.full():
            # No worker runs before process_all(), so waiting for space would never end.
            msg = (
                f"The work queue is full (max_queue_size={self.max_queue_size}) and nothing "
                "consumes it before process_all() starts: raise max_queue_size, or set it "
                "to 0 for an unbounded queue"
            )
            raise RuntimeError(msg)
        queue.put_nowait(work_item)
        self._stats.total += 1

    async def process_all(self) -> BatchResult[TOutput, TContext]:
        """Run every queued item and return all results (in completion order)."""
        self._processing_started = True
        self._results = []
        self._stats = ProcessingStats(total=self._queue.qsize(), start_time=time.time())
        # Read once per batch: the property may go through the config on every access.
        self._progress_every = self.progress_interval
        self._is_processing = True
        try:
            await self._on_batch_started()
            await self._run_workers()
        finally:
            self._is_processing = False
        await self._on_batch_completed()
        return BatchResult(results=list(self._results))

    async def _run_workers(self) -> None:
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
        """Cancel remaining workers, drop queued items and stop progress-callback tasks."""
        await self._cancel_tasks(self._workers, WORKER_CANCELLATION_TIMEOUT)
        queue = self._queue
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()
        await self._progress.cancel_all(PROGRESS_TASK_CANCELLATION_TIMEOUT)

    def _record_result(self, result: WorkItemResult[TOutput, TContext], item_id: str) -> None:
        """Add one final result to the results and the statistics (no await: atomic)."""
        self._results.append(result)
        stats = self._stats
        stats.processed += 1
        if result.success:
            stats.succeeded += 1
        else:
            stats.failed += 1
            if result.error:
                key = result.error.split(":")[0]
                stats.error_counts[key] = stats.error_counts.get(key, 0) + 1
        usage: dict[str, Any] = result.token_usage  # type: ignore[assignment]
        if usage:
            try:
                get = usage.get
                stats.total_input_tokens += get("input_tokens", 0) or 0
                stats.total_output_tokens += get("output_tokens", 0) or 0
                stats.total_tokens += get("total_tokens", 0) or 0
                cached = get("cached_input_tokens", 0) or 0
                if cached:
                    stats.cached_input_tokens += cached
                    stats.total_cached_tokens = stats.cached_input_tokens
            except (AttributeError, TypeError) as exc:
                logger.warning("Ignoring malformed token_usage of item %s: %r", item_id, exc)
        processed = stats.processed
        if processed % self._progress_every == 0:
            logger.info(
                "Progress: %d/%d done (%d succeeded, %d failed)",
                processed,
                stats.total,
                stats.succeeded,
                stats.failed,
            )
            self._run_progress_callback(processed, stats.total, item_id)

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

    async def _run_post_processor(self, result: WorkItemResult[TOutput, TContext]) -> None:
        post_processor = self.post_processor
        if post_processor is None:
            return
        await run_post_processor(
            post_processor,
            result,
            timeout=self.post_processor_timeout,
            inner_timeout=POST_PROCESSOR_EXECUTION_TIMEOUT,
        )

    @abstractmethod
    async def _worker(self, worker_id: int) -> None:
        """Take items from the queue until the ``None`` sentinel arrives."""

    @abstractmethod
    async def _process_item(self, work_item: LLMWorkItem[TInput, TOutput, TContext]) -> Any:
        """Process one item."""

    async def _on_batch_started(self) -> None:
        """Called by :meth:`process_all` after the statistics are reset."""

    async def _on_batch_completed(self) -> None:
        """Called by :meth:`process_all` after every worker has stopped."""
