"""``ParallelBatchProcessor``: a bounded pool of workers running LLM calls with retries.

This module wires the components; their logic lives in ``async_batch_llm._internal``:
the item runner (attempts and retries), the rate-limit coordinator (shared cooldowns), the
strategy lifecycle (prepare/cleanup) and the event dispatcher (observers and middleware).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Generic, Literal

from aiolimiter import AsyncLimiter

from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm._internal.deprecation import config_from_legacy_args
from async_batch_llm._internal.event_dispatcher import EventDispatcher
from async_batch_llm._internal.item_runner import (
    ERROR_MESSAGE_DETAILED_LENGTH,
    ERROR_MESSAGE_MAX_LENGTH,
    ItemRunner,
    error_text,
)
from async_batch_llm._internal.rate_control.controller import RateController
from async_batch_llm._internal.rate_limit_coordinator import RateLimitCoordinator
from async_batch_llm._internal.strategy_lifecycle import StrategyLifecycle
from async_batch_llm.base import (
    BatchProcessor,
    LLMWorkItem,
    PostProcessorFunc,
    ProgressCallbackFunc,
    RetryState,
    TContext,
    TInput,
    TOutput,
    WorkItemResult,
)
from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.middleware.base import Middleware
from async_batch_llm.observers.base import ProcessingEvent, ProcessorObserver
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy
from async_batch_llm.strategies.errors import DefaultErrorClassifier, ErrorClassifier
from async_batch_llm.strategies.rate_limit import ExponentialBackoffStrategy, RateLimitStrategy

__all__ = ["ERROR_MESSAGE_DETAILED_LENGTH", "ERROR_MESSAGE_MAX_LENGTH", "ParallelBatchProcessor"]

logger = logging.getLogger(__name__)


class ParallelBatchProcessor(
    BatchProcessor[TInput, TOutput, TContext], Generic[TInput, TOutput, TContext]
):
    """Run many work items concurrently with retries, shared rate-limit cooldowns and events.

    Typical use::

        config = ProcessorConfig(max_workers=10, timeout_per_item=60.0)
        async with ParallelBatchProcessor(config=config) as processor:
            for item in items:
                await processor.add_work(item)
            result = await processor.process_all()

    Leaving the ``async with`` block (or calling :meth:`shutdown`) calls ``cleanup()`` on
    every strategy that was prepared.

    Args:
        max_workers: Deprecated; use ``ProcessorConfig.max_workers``.
        post_processor: Called with every final result, success or failure (sync or async);
            its errors and timeouts are logged and never change the result.
        timeout_per_item: Deprecated; use ``ProcessorConfig.timeout_per_item``.
        rate_limit_cooldown: Deprecated; use ``ProcessorConfig.rate_limit.cooldown_seconds``.
        config: Everything else; defaults to ``ProcessorConfig()``.
        error_classifier: Decides which errors are retried and which are rate limits
            (any object with ``classify(exception) -> ErrorInfo``); default
            :class:`DefaultErrorClassifier`.
        rate_limit_strategy: Chooses cooldown lengths and the slow start after a cooldown;
            default :class:`ExponentialBackoffStrategy` built from ``config.rate_limit``.
        middlewares: Hooks run around every attempt (see :class:`Middleware`).
        observers: Receive :class:`ProcessingEvent` notifications.
        progress_callback: ``callback(completed, total, current_item_id)`` every
            ``config.progress_interval`` results; never blocks the workers.

    Deprecated arguments warn and override the matching field on a copy of ``config``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        post_processor: PostProcessorFunc[TOutput, TContext] | None = None,
        timeout_per_item: float | None = None,
        rate_limit_cooldown: float | None = None,
        config: ProcessorConfig | None = None,
        error_classifier: ErrorClassifier | None = None,
        rate_limit_strategy: RateLimitStrategy | None = None,
        middlewares: list[Middleware[TInput, TOutput, TContext]] | None = None,
        observers: list[ProcessorObserver] | None = None,
        progress_callback: ProgressCallbackFunc | None = None,
    ) -> None:
        config = config_from_legacy_args(
            config,
            max_workers=max_workers,
            timeout_per_item=timeout_per_item,
            rate_limit_cooldown=rate_limit_cooldown,
        )
        config.validate()
        self.config = config
        super().__init__(
            max_workers=config.max_workers,
            post_processor=post_processor,
            max_queue_size=config.max_queue_size,
            progress_callback=progress_callback,
            progress_callback_timeout=config.progress_callback_timeout,
        )
        if rate_limit_strategy is None:
            rl = config.rate_limit
            rate_limit_strategy = ExponentialBackoffStrategy(
                initial_cooldown=rl.cooldown_seconds,
                backoff_multiplier=rl.backoff_multiplier,
                slow_start_items=rl.slow_start_items,
                slow_start_initial_delay=rl.slow_start_initial_delay,
                slow_start_final_delay=rl.slow_start_final_delay,
            )
        self._dispatcher = EventDispatcher(observers or [], middlewares or [])
        dispatcher = self._dispatcher
        self._coordinator = RateLimitCoordinator(
            rate_limit_strategy,
            emit=dispatcher.emit,
            has_listeners=lambda: bool(dispatcher.observers),
        )
        self._lifecycle = StrategyLifecycle()
        limiter: AsyncLimiter | None = (
            AsyncLimiter(max_rate=config.max_requests_per_minute, time_period=60)
            if config.max_requests_per_minute
            else None
        )
        self._runner = ItemRunner(
            config=config,
            classifier=error_classifier
            if error_classifier is not None
            else DefaultErrorClassifier(),
            dispatcher=dispatcher,
            coordinator=self._coordinator,
            lifecycle=self._lifecycle,
            limiter=limiter,
            count_rate_limit=self._count_rate_limit,
        )
        self._runner.rate_controller = _rate_controller_of(rate_limit_strategy)
        self._stats_lock = asyncio.Lock()
        self._results_lock = asyncio.Lock()

    # -- collaborators users may read or replace -------------------------------------------

    @property
    def error_classifier(self) -> ErrorClassifier:
        """Decides which errors are retried and which are rate limits."""
        return self._runner.classifier

    @error_classifier.setter
    def error_classifier(self, classifier: ErrorClassifier) -> None:
        self._runner.classifier = classifier

    @property
    def rate_limit_strategy(self) -> RateLimitStrategy:
        """Chooses cooldown lengths and the slow start after a cooldown."""
        return self._coordinator.strategy

    @rate_limit_strategy.setter
    def rate_limit_strategy(self, strategy: RateLimitStrategy) -> None:
        self._coordinator.strategy = strategy
        self._runner.rate_controller = _rate_controller_of(strategy)

    @property
    def observers(self) -> list[ProcessorObserver]:
        """The observer list; appending to it takes effect at the next event."""
        return self._dispatcher.observers

    @observers.setter
    def observers(self, observers: list[ProcessorObserver]) -> None:
        self._dispatcher.observers = observers

    @property
    def middlewares(self) -> list[Middleware[TInput, TOutput, TContext]]:
        """The middleware list; appending to it takes effect at the next attempt."""
        return self._dispatcher.middlewares

    @middlewares.setter
    def middlewares(self, middlewares: list[Middleware[TInput, TOutput, TContext]]) -> None:
        self._dispatcher.middlewares = middlewares

    @property
    def progress_interval(self) -> int:
        """``config.progress_interval``."""
        return self.config.progress_interval

    @property
    def post_processor_timeout(self) -> float:
        """``config.post_processor_timeout``."""
        return self.config.post_processor_timeout

    # -- lifecycle --------------------------------------------------------------------------

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.shutdown()
        return False

    async def shutdown(self) -> None:
        """Clean up every prepared strategy, then stop workers and callback tasks.

        ``async with`` does this on exit; call it yourself when not using ``async with``.
        """
        try:
            await self._lifecycle.cleanup_all()
        finally:
            await self.cleanup()

    async def get_stats(self) -> dict[str, Any]:
        """A consistent snapshot of the counters (see :class:`ProcessingStats`)."""
        return self._stats.copy()

    async def _on_batch_started(self) -> None:
        if self._dispatcher.observers:
            await self._dispatcher.emit(
                ProcessingEvent.BATCH_STARTED,
                {
                    "total": self._stats.total,
                    "max_workers": self.max_workers,
                    "start_time": self._stats.start_time,
                },
            )

    async def _on_batch_completed(self) -> None:
        if self._dispatcher.observers:
            stats = self._stats
            await self._dispatcher.emit(
                ProcessingEvent.BATCH_COMPLETED,
                {
                    "processed": stats.processed,
                    "succeeded": stats.succeeded,
                    "failed": stats.failed,
                    "total": stats.total,
                    "total_tokens": stats.total_tokens,
                    "cached_input_tokens": stats.cached_input_tokens,
                    "duration": time.time() - stats.start_time if stats.start_time else 0.0,
                },
            )

    def _count_rate_limit(self) -> None:
        self._stats.rate_limit_count += 1

    async def _worker(self, worker_id: int) -> None:
        dispatcher = self._dispatcher
        if dispatcher.observers:
            await dispatcher.emit(ProcessingEvent.WORKER_STARTED, {"worker_id": worker_id})
        queue = self._queue
        coordinator = self._coordinator
        runner = self._runner
        deadline = AttemptDeadline()
        try:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = await queue.get()
                if item is None:
                    queue.task_done()
                    if dispatcher.observers:
                        await dispatcher.emit(
                            ProcessingEvent.WORKER_STOPPED, {"worker_id": worker_id}
                        )
                    return
                try:
                    if not coordinator.gate_open:
                        await coordinator.wait_turn()
                    try:
                        result = await runner.run(item, worker_id, deadline)
                    except Exception as exc:
                        # Only a defect (ours or a plug-in's) gets here; the item still
                        # gets its one result.
                        logger.exception("Internal error while processing item %s", item.item_id)
                        result = WorkItemResult(
                            item_id=item.item_id,
                            success=False,
                            error=error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
                            context=item.context,
                        )
                    self._record_result(result, item.item_id)
                    if self.post_processor is not None:
                        await self._run_post_processor(result)
                finally:
                    queue.task_done()
        finally:
            deadline.close()

    async def _process_item(
        self,
        work_item: LLMWorkItem[TInput, TOutput, TContext],
        worker_id: int = 0,
        attempt_number: int = 1,
        strategy: Any = None,
        retry_state: RetryState | None = None,
    ) -> WorkItemResult[TOutput, TContext]:
        """One attempt (0.7.2 API): the result, or the error if it should be retried."""
        if strategy is None:
            strategy = work_item.strategy
        return await self._runner.attempt_with_error_handling(
            work_item, worker_id, attempt_number, strategy, retry_state
        )

    # -- 0.7.2 compatibility ---------------------------------------------------------------
    # Private members that upstream's tests and subclasses reach into. They delegate to the
    # components above; nothing in the library reads them.

    async def _process_item_with_retries(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext], worker_id: int
    ) -> WorkItemResult[TOutput, TContext]:
        return await self._runner.run(work_item, worker_id, raise_on_failure=True)

    async def _handle_rate_limit(
        self, worker_id: int, observed_generation: int | None = None
    ) -> None:
        await self._coordinator.handle_rate_limit(worker_id, observed_generation)

    async def _ensure_strategy_prepared(self, strategy: Any) -> None:
        await self._lifecycle.ensure_prepared(strategy)

    async def _cleanup_strategies(self) -> None:
        await self._lifecycle.cleanup_all()

    @property
    def _rate_limit_event(self) -> asyncio.Event:
        return self._coordinator.resume_event

    @property
    def _proactive_rate_limiter(self) -> AsyncLimiter | None:
        return self._runner.limiter

    @_proactive_rate_limiter.setter
    def _proactive_rate_limiter(self, limiter: AsyncLimiter | None) -> None:
        # Tests and subclasses swap in their own limiter; the runner must use it.
        self._runner.limiter = limiter

    @property
    def _in_cooldown(self) -> bool:
        return self._coordinator.in_cooldown

    @property
    def _cooldown_generation(self) -> int:
        return self._coordinator.generation

    @property
    def _cooldown_complete_generation(self) -> int:
        return self._coordinator.completed_generation

    @property
    def _consecutive_rate_limits(self) -> int:
        return self._coordinator.consecutive

    @property
    def _slow_start_active(self) -> bool:
        return self._coordinator.slow_start_active

    @property
    def _items_since_resume(self) -> int:
        return self._coordinator.items_since_resume

    @property
    def _strategies_cleaned_up(self) -> bool:
        return self._lifecycle.cleaned_up

    @property
    def _prepared_strategies(self) -> list[Any]:
        return self._lifecycle.prepared

    def _get_strategy(self, work_item: LLMWorkItem[TInput, TOutput, TContext]) -> Any:
        return work_item.strategy

    def _should_retry_error(self, exception: Exception) -> bool:
        return bool(self.error_classifier.classify(exception).is_retryable)

    def _extract_token_usage(self, exception: BaseException) -> dict[str, int]:
        return self._runner.token_extractor.extract_from_exception(exception)

    async def _emit_event(self, event: ProcessingEvent, data: dict[str, Any] | None = None) -> None:
        await self._dispatcher.emit(event, data)


def _rate_controller_of(strategy: RateLimitStrategy) -> RateController | None:
    """The per-scope controller of an adaptive strategy; ``None`` means shared cooldowns."""
    return strategy.controller if isinstance(strategy, AdaptiveRateLimitStrategy) else None
