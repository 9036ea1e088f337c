"""Run one work item to its final result: attempts, retries, rate limits, tokens, events.

The retry policy:

* success ends the item;
* a rate-limit error waits for the shared cooldown and is retried without using one of
  ``retry.max_attempts`` (bounded by ``rate_limit.max_rate_limit_retries``);
* another retryable error is retried after a backoff (none for validation errors) until
  ``retry.max_attempts`` attempts have failed;
* a permanent error fails the item at once (middleware ``on_error`` may supply a result).

Tokens of every failed attempt are summed into the failed result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm._internal.quota import is_quota_exhausted
from async_batch_llm._internal.rate_control.controller import (
    RateController,
    Ticket,
    current_ticket,
)
from async_batch_llm._internal.rate_control.scope import RateScope, scope_payload
from async_batch_llm._internal.retry_hints import retry_after_seconds
from async_batch_llm._internal.retry_policy import RetryPolicy
from async_batch_llm.base import RetryState, TokenUsage, WorkItemResult
from async_batch_llm.observers.base import ProcessingEvent
from async_batch_llm.strategies.errors import DefaultErrorClassifier, FrameworkTimeoutError
from async_batch_llm.token_extractor import TokenExtractor

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from async_batch_llm._internal.event_dispatcher import EventDispatcher
    from async_batch_llm._internal.rate_limit_coordinator import RateLimitCoordinator
    from async_batch_llm._internal.strategy_lifecycle import StrategyLifecycle
    from async_batch_llm.base import LLMWorkItem
    from async_batch_llm.core.config import ProcessorConfig
    from async_batch_llm.strategies.errors import ErrorClassifier, ErrorInfo

__all__ = [
    "ERROR_MESSAGE_DETAILED_LENGTH",
    "ERROR_MESSAGE_MAX_LENGTH",
    "ItemRunner",
    "SKIPPED_ERROR",
    "error_text",
]

logger = logging.getLogger(__name__)

#: Error text length in results of items that failed after retries (or before any attempt).
ERROR_MESSAGE_MAX_LENGTH = 200
#: Error text length in results of items that failed with a permanent error.
ERROR_MESSAGE_DETAILED_LENGTH = 500
#: The error text of an item whose ``before_process`` middleware returned ``None``.
SKIPPED_ERROR = "Skipped by middleware"

_FAILED_USAGE_ATTR = "_failed_token_usage"
_FALLBACK_CLASSIFIER = DefaultErrorClassifier()


def error_text(exc: BaseException, limit: int) -> str:
    """``"<ExceptionClass>: <message>"`` with the message cut to ``limit`` characters."""
    return f"{type(exc).__name__}: {str(exc)[:limit]}"


def _zero_usage() -> dict[str, int]:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_input_tokens": 0}


def _with_earlier_usage(usage: TokenUsage, earlier: dict[str, int]) -> TokenUsage:
    """A new usage dict: ``usage`` plus the counts of earlier failed attempts."""
    merged: dict[str, Any] = dict(usage) if usage else {}
    for key, count in earlier.items():
        if count:
            merged[key] = (merged.get(key) or 0) + count
    return cast("TokenUsage", merged)


def _estimate_tokens(strategy: Any, prompt: str) -> int:
    """Tokens to book for a call before it is made (the strategy's estimate if it has one)."""
    estimate = getattr(strategy, "estimate_tokens", None)
    if callable(estimate):
        value = estimate(prompt)
        if isinstance(value, int) and value >= 0:
            return value
    return len(prompt) // 4 + 1


def attach_failed_usage(exc: BaseException, usage: dict[str, int]) -> None:
    """Record the item's summed tokens on the exception it fails with.

    The ``_failed_token_usage`` attribute is the convention of the 0.7.2 API: strategies set
    it for their own failed calls and callers of ``_process_item_with_retries`` read it.
    """
    if hasattr(exc, "__dict__"):
        exc.__dict__[_FAILED_USAGE_ATTR] = usage


def failed_usage_of(exc: BaseException) -> TokenUsage:
    """The usage recorded on ``exc`` by :func:`attach_failed_usage` or a strategy, else ``{}``."""
    usage = getattr(exc, "__dict__", {}).get(_FAILED_USAGE_ATTR)
    return usage if isinstance(usage, dict) else {}  # type: ignore[return-value]


class ItemRunner:
    """Turns one :class:`LLMWorkItem` into exactly one :class:`WorkItemResult`.

    The collaborators are public attributes so the processor can swap them (e.g. when a user
    assigns ``processor.error_classifier``).
    """

    def __init__(
        self,
        *,
        config: ProcessorConfig,
        classifier: ErrorClassifier,
        dispatcher: EventDispatcher,
        coordinator: RateLimitCoordinator,
        lifecycle: StrategyLifecycle,
        limiter: AsyncLimiter | None,
        count_rate_limit: Callable[[], None],
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.dispatcher = dispatcher
        self.coordinator = coordinator
        self.lifecycle = lifecycle
        self.limiter = limiter
        self.retry_policy = RetryPolicy(config.retry)
        self.token_extractor = TokenExtractor()
        #: Per-scope admission (set when the rate-limit strategy is adaptive), else None.
        self.rate_controller: RateController | None = None
        self._scopes: dict[int, tuple[Any, RateScope]] = {}
        self._count_rate_limit = count_rate_limit

    async def run(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker_id: int,
        deadline: AttemptDeadline | None = None,
        *,
        raise_on_failure: bool = False,
    ) -> WorkItemResult[Any, Any]:
        """Attempt ``item`` until it succeeds, is skipped, or fails; return its one result.

        Errors become a failed result. With ``raise_on_failure`` (the 0.7.2
        ``_process_item_with_retries`` contract) the last error is raised instead when
        retries are exhausted, the rate-limit retry bound is passed or ``prepare()`` fails;
        it then carries the item's summed tokens (see :func:`attach_failed_usage`).
        Cancellation always propagates. Without a ``deadline`` (a call outside a worker)
        one is made for this call in the current task.
        """
        strategy = item.strategy
        owns_deadline = deadline is None
        if deadline is None:
            deadline = AttemptDeadline()
        try:
            if id(strategy) not in self.lifecycle.prepared_ids:
                await self._prepare(item, strategy)
            state = RetryState()
            generation = self.coordinator.generation
            try:
                # The first attempt runs here rather than in the loop below: most items
                # succeed at once, and this keeps them one call frame shorter.
                return await self.attempt(item, worker_id, 1, strategy, state, deadline)
            except Exception as exc:
                return await self._retry(
                    item, worker_id, strategy, state, deadline, exc, generation
                )
        except Exception as exc:
            if raise_on_failure:
                raise
            return await self.fail(item, exc)
        finally:
            if owns_deadline:
                deadline.close()

    async def fail(
        self, item: LLMWorkItem[Any, Any, Any], exc: Exception
    ) -> WorkItemResult[Any, Any]:
        """The result of an item whose attempts ended in ``exc`` (retries exhausted, etc.)."""
        logger.error("Item %s failed: %s", item.item_id, error_text(exc, ERROR_MESSAGE_MAX_LENGTH))
        result: WorkItemResult[Any, Any] | None = None
        if self.dispatcher.middlewares:
            result = await self.dispatcher.on_error(item, exc)
        if result is None:
            result = WorkItemResult(
                item_id=item.item_id,
                success=False,
                error=error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
                context=item.context,
                token_usage=failed_usage_of(exc),
            )
        await self._emit_outcome(result, exc)
        return result

    async def _prepare(self, item: LLMWorkItem[Any, Any, Any], strategy: Any) -> None:
        try:
            await self.lifecycle.ensure_prepared(strategy)
        except Exception as exc:
            logger.error(
                "prepare() of strategy %s failed for item %s: %s",
                type(strategy).__name__,
                item.item_id,
                exc,
            )
            raise

    async def _retry(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker_id: int,
        strategy: Any,
        state: RetryState,
        deadline: AttemptDeadline,
        exc: Exception,
        generation: int,
    ) -> WorkItemResult[Any, Any]:
        """Handle the failure ``exc`` of attempt 1 and run further attempts as the policy says."""
        coordinator = self.coordinator
        cumulative = _zero_usage()
        attempt = 1
        failures = 0
        rate_limit_retries = 0
        while True:
            TokenExtractor.accumulate(cumulative, self.token_extractor.extract_from_exception(exc))
            await self._call_on_error(strategy, exc, attempt, state)
            info = self._classify(exc)
            if info.is_rate_limit:
                await self._wait_out_rate_limit(item, worker_id, generation, exc)
                if rate_limit_retries >= self.config.rate_limit.max_rate_limit_retries:
                    logger.error(
                        "Item %s still rate limited after %d retries; giving up",
                        item.item_id,
                        rate_limit_retries,
                    )
                    attach_failed_usage(exc, cumulative)
                    raise exc
                rate_limit_retries += 1
            elif info.is_retryable:
                failures += 1
                if failures >= self.config.retry.max_attempts:
                    attach_failed_usage(exc, cumulative)
                    raise exc
                await self._back_off(item, exc, info, failures)
            else:
                return await self._permanent_failure(item, exc, cumulative)
            attempt += 1
            generation = coordinator.generation
            try:
                result = await self.attempt(item, worker_id, attempt, strategy, state, deadline)
            except Exception as next_exc:
                exc = next_exc
                continue
            if result.success and any(cumulative.values()):
                # The failed attempts were paid for too: the item's usage covers all of them.
                result.token_usage = _with_earlier_usage(result.token_usage, cumulative)
            return result

    async def attempt(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker_id: int,
        attempt_number: int,
        strategy: Any,
        state: RetryState | None,
        deadline: AttemptDeadline,
    ) -> WorkItemResult[Any, Any]:
        """One call of the strategy: middleware, limiter, deadline, success events.

        Returns the success (or middleware-skip) result; raises the attempt's error.
        """
        dispatcher = self.dispatcher
        observed = bool(dispatcher.observers)
        start = time.monotonic()
        if observed:
            await dispatcher.emit(
                ProcessingEvent.ITEM_STARTED, {"item_id": item.item_id, "worker_id": worker_id}
            )
        work_item = item
        if dispatcher.middlewares:
            prepared_item = await dispatcher.before_process(item)
            if prepared_item is None:
                await self._emit_failed(item.item_id, "Skipped")
                return WorkItemResult(
                    item_id=item.item_id, success=False, error=SKIPPED_ERROR, context=item.context
                )
            work_item = prepared_item

        config = self.config
        if self.limiter is not None:
            await self.limiter.acquire()
        controller = self.rate_controller
        ticket: Ticket | None = None
        if controller is not None:
            ticket = await controller.admit(
                self._scope_of(strategy), _estimate_tokens(strategy, work_item.prompt)
            )
            context = current_ticket.set(ticket)  # lets the HTTP response hook find the ticket
        try:
            if config.dry_run:
                returned = await strategy.dry_run(work_item.prompt)
            else:
                timeout = config.timeout_per_item
                deadline.arm(timeout)
                try:
                    returned = await strategy.execute(
                        work_item.prompt, attempt_number, timeout, state
                    )
                except asyncio.CancelledError as exc:
                    if deadline.disarm():
                        raise self._timeout_error(work_item, start, exc) from exc
                    raise
                deadline.disarm()
        except BaseException as exc:
            if ticket is not None:
                self._settle_failed(ticket, exc)
            raise
        finally:
            if ticket is not None:
                current_ticket.reset(context)
        if type(returned) is tuple and len(returned) == 2:
            output, usage = returned
        else:
            if ticket is not None:
                ticket.controller.failed(ticket)
            msg = (
                f"{type(strategy).__name__}.{'dry_run' if config.dry_run else 'execute'}() "
                f"must return a tuple (output, token_usage), got {type(returned).__name__}"
            )
            raise TypeError(msg)
        if ticket is not None:
            ticket.controller.complete(ticket, usage)

        # Positional arguments: this runs once per item and keywords cost twice as much.
        result: WorkItemResult[Any, Any] = WorkItemResult(
            work_item.item_id, True, output, None, work_item.context, usage
        )
        if dispatcher.middlewares:
            result = await dispatcher.after_process(result)
        if observed:
            payload: dict[str, Any] = {
                "item_id": work_item.item_id,
                "duration": time.monotonic() - start,
                "tokens": usage.get("total_tokens", 0) if usage else 0,
            }
            if ticket is not None:
                payload.update(scope_payload(ticket.controller.snapshot_of(ticket.scope)))
            await dispatcher.emit(ProcessingEvent.ITEM_COMPLETED, payload)
        if self.coordinator.consecutive:
            self.coordinator.record_success()
        return result

    def _scope_of(self, strategy: Any) -> RateScope:
        """The rate-limit scope of ``strategy`` (its ``rate_limit_scope()``, else a default)."""
        cached = self._scopes.get(id(strategy))
        if cached is not None and cached[0] is strategy:
            return cached[1]
        scope_of = getattr(strategy, "rate_limit_scope", None)
        scope = scope_of() if callable(scope_of) else None
        if not isinstance(scope, RateScope):
            scope = RateScope("default", "", type(strategy).__name__)
        self._scopes[id(strategy)] = (strategy, scope)
        return scope

    def _settle_failed(self, ticket: Ticket, exc: BaseException) -> None:
        """Tell the rate controller how the admitted call ended, so it learns the right thing."""
        controller = ticket.controller
        if not isinstance(exc, Exception):
            controller.release(ticket)
        elif is_quota_exhausted(exc):
            controller.quota_exhausted(ticket, str(exc)[:200])
        elif self._classify(exc).is_rate_limit:
            controller.rate_limited(ticket, retry_after_seconds(exc))
        else:
            controller.failed(ticket, self.token_extractor.extract_from_exception(exc))

    async def attempt_with_error_handling(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker_id: int,
        attempt_number: int,
        strategy: Any,
        state: RetryState | None,
    ) -> WorkItemResult[Any, Any]:
        """One attempt whose error is handled as in a retry loop, minus the retry.

        A permanent error becomes a failed result; a rate limit waits for the cooldown and
        is re-raised; another retryable error is re-raised.
        """
        generation = self.coordinator.generation
        deadline = AttemptDeadline()
        try:
            return await self.attempt(item, worker_id, attempt_number, strategy, state, deadline)
        except Exception as exc:
            await self._call_on_error(strategy, exc, attempt_number, state)
            info = self._classify(exc)
            if info.is_rate_limit:
                await self._wait_out_rate_limit(item, worker_id, generation, exc)
                raise
            if info.is_retryable:
                raise
            usage = self.token_extractor.extract_from_exception(exc)
            return await self._permanent_failure(item, exc, usage)
        finally:
            deadline.close()

    def _classify(self, exc: Exception) -> ErrorInfo:
        try:
            return self.classifier.classify(exc)
        except Exception:
            # A broken classifier must not replace the real error in the item's result.
            logger.warning(
                "Error classifier %s raised; classifying %s with the default rules",
                type(self.classifier).__name__,
                type(exc).__name__,
                exc_info=True,
            )
            return _FALLBACK_CLASSIFIER.classify(exc)

    @staticmethod
    async def _call_on_error(
        strategy: Any, exc: Exception, attempt: int, state: RetryState | None
    ) -> None:
        try:
            await strategy.on_error(exc, attempt, state)
        except Exception as hook_exc:
            logger.warning(
                "on_error() of strategy %s raised %r; ignored", type(strategy).__name__, hook_exc
            )

    def _timeout_error(
        self, item: LLMWorkItem[Any, Any, Any], start: float, cause: BaseException
    ) -> FrameworkTimeoutError:
        elapsed = time.monotonic() - start
        limit = self.config.timeout_per_item
        error = FrameworkTimeoutError(
            f"Attempt for item {item.item_id!r} exceeded timeout_per_item "
            f"({elapsed:.1f}s elapsed, limit {limit}s)",
            item_id=item.item_id,
            elapsed=elapsed,
            timeout_limit=limit,
        )
        # A strategy that spent tokens before the deadline records them on the
        # CancelledError it saw; the timeout error must carry them on.
        usage = getattr(cause, "__dict__", {}).get(_FAILED_USAGE_ATTR)
        if usage is not None:
            error.__dict__[_FAILED_USAGE_ATTR] = usage
        return error

    async def _wait_out_rate_limit(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker_id: int,
        generation: int,
        exc: Exception,
    ) -> None:
        self._count_rate_limit()
        controller = self.rate_controller
        if self.dispatcher.observers:
            payload: dict[str, Any] = {"item_id": item.item_id, "worker_id": worker_id}
            if controller is not None:
                payload.update(scope_payload(controller.snapshot_of(self._scope_of(item.strategy))))
            await self.dispatcher.emit(ProcessingEvent.RATE_LIMIT_HIT, payload)
        if controller is None:
            await self.coordinator.handle_rate_limit(
                worker_id, observed_generation=generation, retry_after=retry_after_seconds(exc)
            )
        # With a rate controller only the scope pauses; the next admission waits it out.

    async def _back_off(
        self, item: LLMWorkItem[Any, Any, Any], exc: Exception, info: ErrorInfo, failures: int
    ) -> None:
        wait = self.retry_policy.wait_for(exc, info, failures)
        logger.warning(
            "Item %s attempt %d/%d failed (%s); retrying in %.2fs",
            item.item_id,
            failures,
            self.config.retry.max_attempts,
            error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
            wait,
        )
        if wait > 0:
            await asyncio.sleep(wait)

    async def _permanent_failure(
        self, item: LLMWorkItem[Any, Any, Any], exc: Exception, cumulative: dict[str, int]
    ) -> WorkItemResult[Any, Any]:
        result: WorkItemResult[Any, Any] | None = None
        if self.dispatcher.middlewares:
            result = await self.dispatcher.on_error(item, exc)
        if result is None:
            logger.error(
                "Item %s failed permanently: %s",
                item.item_id,
                error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
            )
            result = WorkItemResult(
                item_id=item.item_id,
                success=False,
                error=error_text(exc, ERROR_MESSAGE_DETAILED_LENGTH),
                context=item.context,
                token_usage=cast("TokenUsage", cumulative),
            )
        await self._emit_outcome(result, exc)
        return result

    async def _emit_outcome(self, result: WorkItemResult[Any, Any], exc: Exception) -> None:
        """ITEM_FAILED for a failed final result; ITEM_COMPLETED for one a middleware rescued."""
        if result.success:
            if self.dispatcher.observers:
                usage = result.token_usage
                await self.dispatcher.emit(
                    ProcessingEvent.ITEM_COMPLETED,
                    {
                        "item_id": result.item_id,
                        "tokens": usage.get("total_tokens", 0) if usage else 0,
                        "recovered_from": type(exc).__name__,
                    },
                )
        else:
            await self._emit_failed(result.item_id, type(exc).__name__)

    async def _emit_failed(self, item_id: str, error_type: str) -> None:
        if self.dispatcher.observers:
            await self.dispatcher.emit(
                ProcessingEvent.ITEM_FAILED, {"item_id": item_id, "error_type": error_type}
            )
