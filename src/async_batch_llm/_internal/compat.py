"""The private members of ``ParallelBatchProcessor`` that 0.7.2 code reaches into.

Upstream's tests and subclasses in the wild call these (API.md 10.1). Each is a thin
delegate to the real components; nothing in the library reads them. Calls made outside
``process_all()`` deliver their events to the observers before they return, as 0.7.2's
inline dispatch did.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.admission import Outcome
from async_batch_llm._internal.item_runner import Failed, WorkerContext

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from async_batch_llm._internal.event_dispatcher import EventDispatcher
    from async_batch_llm._internal.item_runner import ItemRunner
    from async_batch_llm._internal.rate_limit_coordinator import RateLimitCoordinator
    from async_batch_llm._internal.strategy_lifecycle import StrategyLifecycle
    from async_batch_llm._internal.worker_pool import WorkerPool
    from async_batch_llm.base import LLMWorkItem, RetryState, WorkItemResult
    from async_batch_llm.core.config import ProcessorConfig
    from async_batch_llm.observers.base import ProcessingEvent
    from async_batch_llm.strategies.rate_limit import RateLimitStrategy

__all__ = ["ProcessorCompat"]


class ProcessorCompat:
    """Mixed into `ParallelBatchProcessor`; see the module docstring."""

    # Provided by the processor.
    config: ProcessorConfig
    _runner: ItemRunner
    _dispatcher: EventDispatcher
    _coordinator: RateLimitCoordinator
    _lifecycle: StrategyLifecycle
    _limiter: AsyncLimiter | None
    _limiter_rpm: float | None
    _pool: WorkerPool | None

    def _admission_for(self, strategy: RateLimitStrategy) -> Any:
        raise NotImplementedError

    def _make_pool(self) -> WorkerPool:
        raise NotImplementedError

    def _compat_worker(self, worker_id: int) -> WorkerContext:
        return WorkerContext(worker_id, self.config.hook_timeout)

    async def _deliver_events(self) -> None:
        await self._dispatcher.drain(self.config.observer_drain_timeout)

    async def _worker(self, worker_id: int) -> None:
        """One worker over the queue until a ``None`` sentinel (0.7.2's worker loop)."""
        pool = self._pool
        if pool is None:
            pool = self._pool = self._make_pool()
        await pool.work(worker_id)

    async def _process_item_with_retries(
        self, work_item: LLMWorkItem[Any, Any, Any], worker_id: int
    ) -> WorkItemResult[Any, Any]:
        """All attempts of one item; raises the last error when it fails for good.

        Permanent errors still return a failed result (0.7.2 4.4).
        """
        worker = self._compat_worker(worker_id)
        try:
            return await self._runner.run_instrumented(work_item, worker, raise_on_failure=True)
        finally:
            worker.deadline.close()
            await self._deliver_events()

    async def _process_item(
        self,
        work_item: LLMWorkItem[Any, Any, Any],
        worker_id: int = 0,
        attempt_number: int = 1,
        strategy: Any = None,
        retry_state: RetryState | None = None,
    ) -> WorkItemResult[Any, Any]:
        """One attempt: the result, a permanent failure's result, or the retryable error.

        A rate limit is waited out (the cooldown, or the scope's pause) before it is raised.
        """
        runner = self._runner
        if strategy is None:
            strategy = work_item.strategy
        worker = self._compat_worker(worker_id)
        try:
            admission = runner.admission
            permit = await admission.admit(strategy, work_item.prompt, worker_id, None, None)
            outcome = await runner.attempt(
                work_item, worker, attempt_number, strategy, retry_state, permit
            )
            if not isinstance(outcome, Failed):
                return outcome
            exc, info = outcome.error, outcome.info
            await runner._strategy_on_error(strategy, exc, attempt_number, retry_state, worker)
            if info.is_rate_limit:
                runner.rate_limited(work_item, worker, permit)
                waited = await admission.admit(strategy, work_item.prompt, worker_id, permit, exc)
                waited.settle(Outcome.RELEASED)
                raise exc
            if info.is_retryable:
                raise exc
            usage = runner.token_extractor.extract_from_exception(exc)
            return await runner.fail(work_item, exc, usage, worker, detailed=True)
        finally:
            worker.deadline.close()
            await self._deliver_events()

    async def _handle_rate_limit(
        self, worker_id: int, observed_generation: int | None = None
    ) -> None:
        """Lead or join the shared cooldown (0.7.2 7.3)."""
        try:
            await self._coordinator.handle_rate_limit(worker_id, observed_generation)
        finally:
            await self._deliver_events()

    async def _ensure_strategy_prepared(self, strategy: Any) -> None:
        await self._lifecycle.ensure_prepared(strategy)

    async def _cleanup_strategies(self) -> None:
        await self._lifecycle.cleanup_all()

    async def _emit_event(self, event: ProcessingEvent, data: dict[str, Any] | None = None) -> None:
        self._dispatcher.publish(event, data)
        await self._deliver_events()

    @property
    def _rate_limit_event(self) -> asyncio.Event:
        return self._coordinator.resume_event

    @property
    def _proactive_rate_limiter(self) -> AsyncLimiter | None:
        return self._limiter

    @_proactive_rate_limiter.setter
    def _proactive_rate_limiter(self, limiter: AsyncLimiter | None) -> None:
        # Tests and subclasses swap in their own limiter; the next attempts must use it.
        self._limiter = limiter
        self._limiter_rpm = self.config.max_requests_per_minute  # the caller's limiter stays
        self._runner.admission = self._admission_for(self._coordinator.strategy)

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

    def _get_strategy(self, work_item: LLMWorkItem[Any, Any, Any]) -> Any:
        return work_item.strategy

    def _should_retry_error(self, exception: Exception) -> bool:
        return bool(self._runner.classifier.classify(exception).is_retryable)

    def _extract_token_usage(self, exception: BaseException) -> dict[str, int]:
        return self._runner.token_extractor.extract_from_exception(exception)
