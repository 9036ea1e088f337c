"""`ParallelBatchProcessor`: a bounded pool of workers running LLM calls with retries.

This module wires the components; their logic lives in ``async_batch_llm._internal``: the
worker pool (tasks, replacement of stuck workers), the item runner (attempts and retries),
admission (cooldown gate, adaptive rate control, request budget), the strategy lifecycle
(prepare/cleanup) and the event dispatcher (observers and middleware). The private members
0.7.2 code reaches into live in ``_internal/compat.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sized
from typing import Any, Generic, Literal

from aiolimiter import AsyncLimiter

from async_batch_llm._internal.admission import (
    Admission,
    ControllerAdmission,
    CooldownAdmission,
    LimiterAdmission,
)
from async_batch_llm._internal.budget_gate import BudgetAdmission
from async_batch_llm._internal.checkpointing import (
    CheckpointSession,
    check_resume_options,
    checkpoint_factory,
)
from async_batch_llm._internal.compat import ProcessorCompat
from async_batch_llm._internal.deprecation import config_from_legacy_args
from async_batch_llm._internal.event_dispatcher import EventDispatcher
from async_batch_llm._internal.hooks import run_in_task
from async_batch_llm._internal.item_runner import (
    ERROR_MESSAGE_DETAILED_LENGTH,
    ERROR_MESSAGE_MAX_LENGTH,
    ItemRunner,
    WorkerContext,
    error_text,
)
from async_batch_llm._internal.rate_limit_coordinator import RateLimitCoordinator
from async_batch_llm._internal.strategy_lifecycle import StrategyLifecycle
from async_batch_llm._internal.stream_run import StreamRun, default_window
from async_batch_llm._internal.validation import (
    check_classifier,
    check_middlewares,
    check_observers,
    check_rate_limit_strategy,
)
from async_batch_llm._internal.worker_pool import WorkerPool
from async_batch_llm.base import (
    BatchProcessor,
    BatchResult,
    LLMWorkItem,
    PostProcessorFunc,
    ProcessingStats,
    ProgressCallbackFunc,
    TContext,
    TInput,
    TOutput,
    WorkItemResult,
)
from async_batch_llm.budget import Budget
from async_batch_llm.checkpoint.base import CheckpointReport, CheckpointStore, ResumePolicy
from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.middleware.base import Middleware
from async_batch_llm.observers.base import ProcessingEvent, ProcessorObserver
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, ScopeSnapshot
from async_batch_llm.strategies.errors import (
    DefaultErrorClassifier,
    ErrorClassifier,
    FrameworkTimeoutError,
    HookTimeoutError,
)
from async_batch_llm.strategies.rate_limit import ExponentialBackoffStrategy, RateLimitStrategy
from async_batch_llm.telemetry import OpenTelemetry

__all__ = ["ERROR_MESSAGE_DETAILED_LENGTH", "ERROR_MESSAGE_MAX_LENGTH", "ParallelBatchProcessor"]

logger = logging.getLogger(__name__)


class ParallelBatchProcessor(
    ProcessorCompat, BatchProcessor[TInput, TOutput, TContext], Generic[TInput, TOutput, TContext]
):
    """Run many work items concurrently with retries, rate control and events.

    Typical use:

    ```python
    config = ProcessorConfig(max_workers=10, timeout_per_item=60.0)
    async with ParallelBatchProcessor(config=config) as processor:
        for item in items:
            await processor.add_work(item)
        result = await processor.process_all()
    ```

    Every accepted item ends in exactly one `WorkItemResult`, whatever a strategy, hook,
    observer or callback does; only cancelling `process_all` (and ``KeyboardInterrupt`` /
    ``SystemExit``) propagates. Leaving the ``async with`` block (or calling `shutdown`)
    calls ``cleanup()`` on every strategy that was prepared.

    Rate limits: with nothing configured about them, each provider scope (provider, API key,
    model) is paced to the limit its rate-limit headers report or that is learned from its
    429s (`AdaptiveRateLimitStrategy`). Passing a `rate_limit_strategy`, a
    `rate_limit_cooldown` or a `RateLimitConfig` with other values selects the 0.7.2
    shared cooldown instead.

    Args:
        max_workers: Deprecated; use `ProcessorConfig.max_workers`.
        post_processor: Called with every final result, success or failure (sync or async);
            its errors and timeouts are logged and never change the result.
        timeout_per_item: Deprecated; use `ProcessorConfig.timeout_per_item`.
        rate_limit_cooldown: Deprecated; use `RateLimitConfig.cooldown_seconds`.
        config: Everything else; defaults to ``ProcessorConfig()``.
        error_classifier: Decides which errors are retried and which are rate limits
            (any object with ``classify(exception) -> ErrorInfo``); default
            `DefaultErrorClassifier`.
        rate_limit_strategy: How to handle rate limits: `AdaptiveRateLimitStrategy`, or a
            cooldown strategy such as `ExponentialBackoffStrategy`. Default: see above.
        middlewares: Hooks run around every attempt (see `Middleware`).
        observers: Receive `ProcessingEvent` notifications, in order, off the workers' path.
        progress_callback: ``callback(completed, total, current_item_id)`` every
            ``config.progress_interval`` results; never blocks the workers.
        checkpoint: A path (an SQLite store) or a `CheckpointStore`: results are
            committed there before they are published, and a rerun replays them instead
            of calling the provider again (see the streaming and checkpoints guide).
        resume: Which stored results a rerun replays (`ResumePolicy`).
        checkpoint_version: Your own version of the run (e.g. of the prompt template);
            a store written under another version is refused.
        budget: A spending limit (`Budget`): attempts are admitted only while their
            estimated cost and tokens fit; once it is spent the remaining items fail with
            `BudgetExhaustedError`.
        telemetry: `OpenTelemetry()` to emit a span per item and per attempt and the
            batch's metrics (see `async_batch_llm.telemetry`); ``None`` (the default)
            emits nothing and costs nothing.

    Raises:
        TypeError: An argument has the wrong type (the message names it).
        ValueError: A setting is out of range.

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
        *,
        checkpoint: str | os.PathLike[str] | CheckpointStore | None = None,
        resume: ResumePolicy = ResumePolicy.REUSE_SUCCESSES,
        checkpoint_version: str | None = None,
        budget: Budget | None = None,
        telemetry: OpenTelemetry | None = None,
    ) -> None:
        given: object = config
        if given is not None and not isinstance(given, ProcessorConfig):
            msg = f"config must be a ProcessorConfig, got {type(given).__name__}"
            raise TypeError(msg)
        given_budget: object = budget
        if given_budget is not None and not isinstance(given_budget, Budget):
            msg = f"budget must be a Budget, got {type(given_budget).__name__}"
            raise TypeError(msg)
        given_telemetry: object = telemetry
        if given_telemetry is not None and not isinstance(given_telemetry, OpenTelemetry):
            msg = (
                "telemetry must be an async_batch_llm.telemetry.OpenTelemetry, got "
                f"{type(given_telemetry).__name__}"
            )
            raise TypeError(msg)
        #: The spending limit every attempt is admitted through (``None``: no limit).
        self.budget = budget
        self._checkpoint = checkpoint_factory(checkpoint)
        check_resume_options(resume, checkpoint_version)
        self.resume = resume
        self.checkpoint_version = checkpoint_version
        check_classifier(error_classifier)
        check_rate_limit_strategy(rate_limit_strategy)
        check_observers(observers)
        check_middlewares(middlewares)
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
        # Chosen from the config (and again at each batch, should the config change) unless
        # the caller passed one.
        self._strategy_from_config = rate_limit_strategy is None
        self._forced_cooldown = rate_limit_cooldown is not None
        if rate_limit_strategy is None:
            rate_limit_strategy = self._strategy_for(config, None)
        self._dispatcher = EventDispatcher(
            observers or [],
            middlewares or [],
            observer_timeout=config.observer_timeout,
            grace=config.cancellation_grace,
        )
        dispatcher = self._dispatcher
        self._lifecycle = StrategyLifecycle(
            prepare_timeout=config.prepare_timeout,
            cleanup_timeout=config.cleanup_timeout,
            grace=config.cancellation_grace,
        )
        self._coordinator = RateLimitCoordinator(
            rate_limit_strategy,
            publish=dispatcher.publish,
            has_listeners=lambda: bool(dispatcher.observers),
            run_hook=self._run_rare_hook,
        )
        self._limiter = _limiter_for(config.max_requests_per_minute)
        self._limiter_rpm = config.max_requests_per_minute
        self._runner = ItemRunner(
            config=config,
            classifier=error_classifier
            if error_classifier is not None
            else DefaultErrorClassifier(),
            dispatcher=dispatcher,
            admission=self._admission_for(rate_limit_strategy),
            lifecycle=self._lifecycle,
            count_rate_limit=self._count_rate_limit,
        )
        if telemetry is not None:
            # OpenTelemetry's spans and metrics; without it nothing is imported or emitted.
            from async_batch_llm._internal.otel import OTelInstruments

            self._runner.instruments = OTelInstruments(
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
                scopes=self._scope_snapshots,
            )
        self._pool: WorkerPool | None = None
        # The stream (or checkpointed process_all) running now; `shutdown` stops it.
        self._active_run: StreamRun | None = None
        self._checkpoint_session: CheckpointSession | None = None
        self._progress.on_fatal = self._stop_batch_with
        # A KeyboardInterrupt / SystemExit a progress callback raised after its batch ended.
        self._late_fatal: BaseException | None = None

    # -- collaborators users may read or replace -------------------------------------------

    @property
    def error_classifier(self) -> ErrorClassifier:
        """Decides which errors are retried and which are rate limits."""
        return self._runner.classifier

    @error_classifier.setter
    def error_classifier(self, classifier: ErrorClassifier) -> None:
        check_classifier(classifier)
        self._runner.classifier = classifier

    @property
    def rate_limit_strategy(self) -> RateLimitStrategy:
        """How rate limits are handled (adaptive control, or the 0.7.2 shared cooldown)."""
        return self._coordinator.strategy

    @rate_limit_strategy.setter
    def rate_limit_strategy(self, strategy: RateLimitStrategy) -> None:
        check_rate_limit_strategy(strategy)
        self._strategy_from_config = False  # the caller's choice from now on
        self._coordinator.strategy = strategy
        self._runner.admission = self._admission_for(strategy)

    @property
    def observers(self) -> list[ProcessorObserver]:
        """The observer list; appending to it takes effect at the next event."""
        return self._dispatcher.observers

    @observers.setter
    def observers(self, observers: list[ProcessorObserver]) -> None:
        check_observers(observers)
        self._dispatcher.observers = observers

    @property
    def middlewares(self) -> list[Middleware[TInput, TOutput, TContext]]:
        """The middleware list; appending to it takes effect at the next attempt."""
        return self._dispatcher.middlewares

    @middlewares.setter
    def middlewares(self, middlewares: list[Middleware[TInput, TOutput, TContext]]) -> None:
        check_middlewares(middlewares)
        self._dispatcher.middlewares = middlewares

    @property
    def progress_interval(self) -> int:
        """``config.progress_interval``."""
        return self.config.progress_interval

    @property
    def post_processor_timeout(self) -> float:
        """``config.post_processor_timeout``."""
        return self.config.post_processor_timeout

    @property
    def checkpoint_report(self) -> CheckpointReport | None:
        """What the current (or last) run with a checkpoint replayed and ran; ``None``
        before one started or without a checkpoint."""
        session = self._checkpoint_session
        return None if session is None else session.report

    # -- streaming ---------------------------------------------------------------------------

    def stream(
        self,
        items: Iterable[LLMWorkItem[TInput, TOutput, TContext]]
        | AsyncIterable[LLMWorkItem[TInput, TOutput, TContext]]
        | None = None,
        *,
        ordered: bool = False,
        window: int | None = None,
    ) -> AsyncGenerator[WorkItemResult[TOutput, TContext], None]:
        """Run `items` (after anything queued with `add_work`) and yield each result as it
        is ready.

        Items are taken from `items` lazily: at most `window` (default: four per worker,
        at least 64) are ahead of the results you have taken, so memory stays bounded
        however long the source is. Results come in completion order, or with `ordered`
        in input order (an item that takes long then holds back the ones after it, and
        intake pauses when the window is full). With a checkpoint, every result is
        committed before it is yielded, and stored results are replayed.

        Leaving the loop early (``break``, ``aclose()``, cancelling the consumer) stops
        intake, closes the source when it is a generator, cancels the calls in flight,
        commits what finished and cleans up the strategies; no task is left running.
        Cleaning up also happens when the stream ends normally.

        Raises (from the iteration):
            TypeError: An item is not an `LLMWorkItem`, or its strategy cannot run (after
                the items taken before it have finished).
            DuplicateItemError: With a checkpoint, an item id was seen twice.
            CheckpointError: The checkpoint store failed or holds another run's results.
            RuntimeError: The processor is already running a batch.
        """
        sources: list[Any] = []
        given: object = items
        if given is not None:
            if not hasattr(given, "__aiter__") and not hasattr(given, "__iter__"):
                msg = (
                    "stream() expects an iterable or async iterable of LLMWorkItem, got "
                    f"{type(items).__name__}"
                )
                raise TypeError(msg)
            sources.append(given)
        flag: object = ordered
        if not isinstance(flag, bool):
            msg = f"ordered must be a bool, got {type(flag).__name__}"
            raise TypeError(msg)
        size: object = window
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            msg = f"window must be a positive int (items ahead of the consumer), got {window!r}"
            raise ValueError(msg)
        total: int | None = None
        if items is None or isinstance(items, Sized):
            total = self._queue.qsize() + (len(items) if isinstance(items, Sized) else 0)
        run = StreamRun(
            self,
            sources,
            ordered=ordered,
            window=window or default_window(self.config.max_workers, self.config.mode),
            total=total,
            clean_up_strategies=True,
        )
        stream = run.results()
        run.attach(stream)  # type: ignore[arg-type]
        return stream  # type: ignore[return-value]

    async def process_all(self) -> BatchResult[TOutput, TContext]:
        """Run every queued item and return all results (in completion order).

        With a checkpoint, stored results are replayed (``replayed=True``) and every new
        outcome is committed before it counts.
        """
        if not self._uses_checkpoint() and (self.config.mode == "online" or self.config.dry_run):
            return await super().process_all()
        run = StreamRun(
            self,
            [],
            ordered=False,
            window=max(self._queue.qsize(), 1),
            total=self._queue.qsize(),
            clean_up_strategies=False,
        )
        results: list[WorkItemResult[TOutput, TContext]] = []
        async for result in run.results():
            results.append(result)
        return BatchResult(results=list(results))

    def _take_queued(self) -> list[LLMWorkItem[TInput, TOutput, TContext]]:
        """Everything queued with `add_work`, in order (the queue is empty after)."""
        self._processing_started = True
        self._queued_ids = set()
        queue = self._queue
        queued = []
        while (item := queue.take()) is not None:
            queued.append(item)
        queue.reopen()
        return queued

    def _uses_checkpoint(self) -> bool:
        """Whether this run reads and writes the checkpoint (a dry run does not)."""
        if self._checkpoint is None:
            return False
        if self.config.dry_run:
            logger.warning("dry_run is set: the checkpoint is neither read nor written")
            return False
        return True

    def _new_checkpoint_session(self) -> CheckpointSession | None:
        if self._checkpoint is None or not self._uses_checkpoint():
            return None
        make_store, label = self._checkpoint
        check_resume_options(self.resume, self.checkpoint_version)
        session = CheckpointSession(
            make_store(), label=label, policy=self.resume, version=self.checkpoint_version
        )
        self._checkpoint_session = session
        return session

    async def _begin_run(self, total: int) -> None:
        """Start a stream's batch: settings re-read, statistics reset."""
        await self._prepare_batch()
        self._results = []
        self._stats = ProcessingStats(total=total, start_time=time.time())
        self._progress_every = self.progress_interval
        self._is_processing = True

    def _publish_batch_started(self, total: int | None) -> None:
        if self._dispatcher.observers:
            self._dispatcher.publish(
                ProcessingEvent.BATCH_STARTED,
                {
                    "total": total,
                    "max_workers": self.max_workers,
                    "start_time": self._stats.start_time,
                },
            )

    def _check_stream_item(self, item: object) -> None:
        """Raise TypeError for a streamed item that `add_work` would refuse."""
        self._check_item(item)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aexit__(self, *exc_info: object) -> Literal[False]:
        await self.shutdown()
        return False

    def drain(self) -> None:
        """Let the calls in flight finish and make no other: a graceful stop.

        Every item whose next attempt has not been admitted yet (queued, waiting for a
        rate-limit slot or the budget, or backing off before a retry) ends at once with a
        failed result, ``error_category == "interrupted"``, which a checkpoint stores as
        unfinished (the next run makes those calls). A stream keeps yielding until the
        items it took have their results; stop feeding it new ones to end it.

        It applies to the batch running now (or, called between batches, to the next one)
        and is cleared when that batch ends.
        """
        self._runner.drain()
        run = self._active_run
        if run is not None and run.batch is not None:
            run.batch.nudge()  # requests not submitted yet end now

    def _end_batch(self) -> None:
        super()._end_batch()
        self._runner.draining = False

    async def shutdown(self) -> None:
        """Clean up every prepared strategy, then stop workers and callback tasks.

        ``async with`` does this on exit; call it yourself when not using ``async with``.
        """
        try:
            if self._active_run is not None:
                await self._active_run.close()
            await self._lifecycle.cleanup_all()
            strategy = self._coordinator.strategy
            if isinstance(strategy, AdaptiveRateLimitStrategy):
                # Outcomes still on their way to a shared budget (bounded by its timeout).
                await strategy.aclose()
        finally:
            try:
                await self._dispatcher.close()
            finally:
                await self.cleanup()
        late, self._late_fatal = self._late_fatal, None
        if late is not None:
            raise late

    async def get_stats(self) -> dict[str, Any]:
        """A consistent snapshot of the counters (see `ProcessingStats`)."""
        return self._stats.copy()

    async def _prepare_batch(self) -> None:
        # The config (or the hook lists) may have been edited since construction.
        config = self.config
        config.validate()
        check_observers(self._dispatcher.observers)
        check_middlewares(self._dispatcher.middlewares)
        self.max_workers = config.max_workers
        self.progress_callback_timeout = config.progress_callback_timeout
        self._runner.reconfigure(config)
        if self._strategy_from_config:
            self._coordinator.strategy = self._strategy_for(config, self._coordinator.strategy)
        if config.max_requests_per_minute != self._limiter_rpm:
            self._limiter = _limiter_for(config.max_requests_per_minute)
            self._limiter_rpm = config.max_requests_per_minute
        self._runner.admission = self._admission_for(self._coordinator.strategy)
        self._dispatcher.observer_timeout = config.observer_timeout
        self._dispatcher.grace = config.cancellation_grace
        lifecycle = self._lifecycle
        lifecycle.prepare_timeout = config.prepare_timeout
        lifecycle.cleanup_timeout = config.cleanup_timeout
        lifecycle.grace = config.cancellation_grace

    async def _on_batch_started(self) -> None:
        if self._dispatcher.observers:
            self._dispatcher.publish(
                ProcessingEvent.BATCH_STARTED,
                {
                    "total": self._stats.total,
                    "max_workers": self.max_workers,
                    "start_time": self._stats.start_time,
                },
            )

    async def _on_batch_completed(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher.observers:
            stats = self._stats
            dispatcher.publish(
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
        # Progress callbacks may still run: like 0.7.2, they are not waited for, and leaving
        # the processor cancels them.
        await dispatcher.drain(self.config.observer_drain_timeout)

    async def _run_workers(self) -> None:
        pool = self._pool = self._make_pool()
        count = max(1, min(self.max_workers, self._queue.qsize()))
        try:
            await pool.run(count)
        except BaseException:
            await self._progress.cancel_all(self.config.cancellation_grace)
            raise
        finally:
            self._workers = pool.started

    def _make_pool(
        self,
        *,
        record: Any = None,
        post: Any = None,
        on_change: Any = None,
        run: Any = None,
    ) -> WorkerPool:
        dispatcher = self._dispatcher
        config = self.config

        def started(worker_id: int) -> None:
            if dispatcher.observers:
                dispatcher.publish(ProcessingEvent.WORKER_STARTED, {"worker_id": worker_id})

        def stopped(worker_id: int) -> None:
            if dispatcher.observers:
                dispatcher.publish(ProcessingEvent.WORKER_STOPPED, {"worker_id": worker_id})

        return WorkerPool(
            self._queue,
            run=run or self._runner.entry_point(),
            on_defect=self._defect_result,
            record=record or self._record_result,
            post=post or self._post_process,
            abandoned_result=self._abandoned_result,
            on_started=started,
            on_stopped=stopped,
            hook_timeout=config.hook_timeout,
            grace=config.cancellation_grace,
            on_change=on_change,
        )

    def _stop_batch_with(self, exc: BaseException) -> bool:
        """Raise `exc` (a callback's ``KeyboardInterrupt``) from the running batch, or, when
        it came after the batch, from `shutdown` (the end of the ``async with`` block)."""
        pool = self._pool
        if pool is not None and self._is_processing:
            pool.stop_with(exc)
        elif self._late_fatal is None:
            self._late_fatal = exc
        return True

    def _defect_result(
        self, item: LLMWorkItem[TInput, TOutput, TContext], exc: Exception
    ) -> WorkItemResult[TOutput, TContext]:
        # Only a defect (ours or a plug-in's) gets here; the item still gets its result.
        logger.error("Internal error while processing item %s", item.item_id, exc_info=exc)
        return WorkItemResult(
            item_id=item.item_id,
            success=False,
            error=error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
            context=item.context,
            token_usage={},
            error_category="internal_error",
        )

    async def _post_process(
        self, result: WorkItemResult[TOutput, TContext], worker: WorkerContext
    ) -> None:
        await self._run_post_processor(result, worker.deadline)

    def _abandoned_result(
        self, item: LLMWorkItem[TInput, TOutput, TContext], step: str
    ) -> WorkItemResult[TOutput, TContext]:
        """The failed result of an item whose worker was stuck in `step` and given up on."""
        config = self.config
        grace = config.cancellation_grace
        error: Exception
        if step == "execute()" or step == "":
            error = FrameworkTimeoutError(
                f"Attempt for item {item.item_id!r} exceeded timeout_per_item "
                f"({config.timeout_per_item}s) and ignored its cancellation for {grace}s; "
                "the call was abandoned",
                item_id=item.item_id,
                timeout_limit=config.timeout_per_item,
            )
        else:
            error = HookTimeoutError(
                f"{step} for item {item.item_id!r} overran its time bound and ignored its "
                f"cancellation for {grace}s; it was abandoned",
                hook=step,
                abandoned=True,
            )
        if self._dispatcher.observers:
            self._runner.publish_final(
                ProcessingEvent.ITEM_FAILED,
                {"item_id": item.item_id, "error_type": type(error).__name__},
            )
        return WorkItemResult(
            item_id=item.item_id,
            success=False,
            error=error_text(error, ERROR_MESSAGE_MAX_LENGTH),
            context=item.context,
            token_usage={},
            error_category="timeout"
            if isinstance(error, FrameworkTimeoutError)
            else "hook_timeout",
        )

    def _strategy_for(
        self, config: ProcessorConfig, current: RateLimitStrategy | None
    ) -> RateLimitStrategy:
        """The rate-limit strategy `config` asks for; `current` is kept when it still fits
        (an adaptive controller keeps what it learned)."""
        if self._forced_cooldown or config.rate_limit.configures_cooldown():
            return ExponentialBackoffStrategy.from_config(config.rate_limit)
        if isinstance(current, AdaptiveRateLimitStrategy):
            return current
        return AdaptiveRateLimitStrategy()

    def _on_shared_budget(self, event: str, payload: dict[str, Any]) -> None:
        kind = (
            ProcessingEvent.SHARED_BUDGET_DEGRADED
            if event == "degraded"
            else ProcessingEvent.SHARED_BUDGET_RESTORED
        )
        if self._dispatcher.observers:
            self._dispatcher.publish(kind, dict(payload))

    def _scope_snapshots(self) -> list[ScopeSnapshot]:
        """The state of each rate-limit scope (adaptive rate control only), for telemetry."""
        strategy = self._coordinator.strategy
        if isinstance(strategy, AdaptiveRateLimitStrategy):
            return strategy.controller.snapshot()
        return []

    def _count_rate_limit(self) -> None:
        self._counts.rate_limit_count += 1

    def _admission_for(self, strategy: RateLimitStrategy) -> Admission:
        limit = self.config.rate_limit.max_rate_limit_retries
        admission: Admission
        if isinstance(strategy, AdaptiveRateLimitStrategy):
            admission = ControllerAdmission(strategy.controller, limit)
            if strategy.budget is not None:
                strategy.budget.add_listener(self._on_shared_budget)
        else:
            admission = CooldownAdmission(self._coordinator, limit)
        if self._limiter is not None:
            admission = LimiterAdmission(admission, lambda: self._limiter)
        if self.budget is not None:
            admission = BudgetAdmission(admission, self.budget)
        return admission

    async def _run_rare_hook(self, factory: Any, what: str) -> Any:
        config = self.config
        return await run_in_task(
            factory,
            timeout=config.hook_timeout,
            grace=config.cancellation_grace,
            what=what,
            orphans=self._lifecycle.orphans,
        )


def _limiter_for(requests_per_minute: float | None) -> AsyncLimiter | None:
    """The proactive limiter for ``max_requests_per_minute`` (``None`` when unset).

    aiolimiter cannot acquire more than its capacity, so a budget below one request per
    minute becomes one request per ``60 / rpm`` seconds.
    """
    if not requests_per_minute:
        return None
    if requests_per_minute < 1:
        return AsyncLimiter(max_rate=1, time_period=60.0 / requests_per_minute)
    return AsyncLimiter(max_rate=requests_per_minute, time_period=60)
