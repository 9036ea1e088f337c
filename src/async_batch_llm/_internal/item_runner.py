"""Run one work item to its final result: admission, attempts, retries, tokens, events.

The retry policy:

* success ends the item;
* a rate limit is retried without using one of ``retry.max_attempts``: the next admission
  waits out the pause (and fails the item only when the provider has let nothing through
  for ``rate_limit.max_rate_limit_retries`` pauses in a row);
* another retryable error is retried after a backoff (none for validation errors) until
  ``retry.max_attempts`` attempts have failed;
* a permanent error fails the item at once (middleware ``on_error`` may supply a result).

Tokens of every failed attempt are summed into the item's result, success or failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from async_batch_llm._internal.admission import (
    NO_PERMIT,
    Admission,
    Outcome,
    Permit,
    RateLimitRetriesExhausted,
)
from async_batch_llm._internal.deadline import AttemptDeadline
from async_batch_llm._internal.hooks import interruption_error, is_propagating, run_step
from async_batch_llm._internal.outcome import SUCCEEDED
from async_batch_llm._internal.quota import QUOTA_EXHAUSTED_CATEGORY, is_quota_exhausted
from async_batch_llm._internal.retry_policy import RetryPolicy
from async_batch_llm._internal.state_use import reads_retry_state
from async_batch_llm._internal.usage import (
    FAILED_USAGE_ATTR,
    USAGE_KEYS,
    UsageNormalizer,
    add_usage,
    attach_failed_usage,
    merged_usage,
)
from async_batch_llm._internal.values import RetryState, WorkItemResult
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.observers.base import ProcessingEvent
from async_batch_llm.strategies.errors import (
    CallInterruptedError,
    DefaultErrorClassifier,
    FrameworkTimeoutError,
    HookTimeoutError,
    unwrap_token_tracking,
)
from async_batch_llm.token_extractor import TokenExtractor

if TYPE_CHECKING:
    from async_batch_llm._internal.batch_jobs import Answer
    from async_batch_llm._internal.event_dispatcher import EventDispatcher
    from async_batch_llm._internal.instruments import Attempt
    from async_batch_llm._internal.otel import OTelInstruments
    from async_batch_llm._internal.strategy_lifecycle import StrategyLifecycle
    from async_batch_llm._internal.timeline import TimelineRecorder
    from async_batch_llm.base import LLMWorkItem
    from async_batch_llm.core.config import ProcessorConfig
    from async_batch_llm.strategies.errors import ErrorClassifier, ErrorInfo

__all__ = [
    "ERROR_MESSAGE_DETAILED_LENGTH",
    "ERROR_MESSAGE_MAX_LENGTH",
    "SKIPPED_ERROR",
    "Failed",
    "ItemRunner",
    "WorkerAbandoned",
    "WorkerContext",
    "error_text",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Error text length in results of items that failed after retries (or before any attempt).
ERROR_MESSAGE_MAX_LENGTH: Final = 200
#: Error text length in results of items that failed with a permanent error.
ERROR_MESSAGE_DETAILED_LENGTH: Final = 500
#: The error text of an item whose ``before_process`` middleware returned ``None``.
SKIPPED_ERROR: Final = "Skipped by middleware"
#: The ``error_category`` of such an item.
SKIPPED_CATEGORY: Final = "skipped"
#: The error text and category of an item not (or no more) attempted after ``drain()``.
DRAINED_ERROR: Final = "Drained: the batch was stopping, the item was not attempted (again)"
DRAINED_CATEGORY: Final = "interrupted"

_FALLBACK_CLASSIFIER: Final = DefaultErrorClassifier()
_BASE_ON_ERROR: Final = LLMCallStrategy.on_error


def error_text(exc: BaseException, limit: int) -> str:
    """``"<ExceptionClass>: <message>"`` with the message cut to `limit` characters."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable error>"
    return f"{type(exc).__name__}: {message[:limit]}"


class WorkerAbandoned(BaseException):
    """The worker ran past its bound and was replaced; it must stop without a trace."""


class WorkerContext:
    """What the item runner needs of the task it runs in.

    Create it inside the task it describes.

    Args:
        worker_id: The worker's number (for events and cooldown strategies).
        hook_timeout: Seconds allowed for one middleware hook or ``on_error`` call.
        on_stuck: Called with this context when a step of the task ignored its
            cancellation for `grace` seconds (see `AttemptDeadline`).
        grace: Seconds a cancelled step gets to stop.
    """

    __slots__ = (
        "abandoned",
        "deadline",
        "drain_cancelled",
        "first_call",
        "hook_timeout",
        "item",
        "recorded",
        "replayable_failure",
        "worker_id",
    )

    def __init__(
        self,
        worker_id: int,
        hook_timeout: float,
        *,
        on_stuck: Callable[[WorkerContext], object] | None = None,
        grace: float = 5.0,
    ) -> None:
        self.worker_id = worker_id
        self.hook_timeout = hook_timeout
        #: The task's reusable step deadline.
        self.deadline = AttemptDeadline(
            on_stuck=None if on_stuck is None else (lambda: on_stuck(self)), grace=grace
        )
        #: Set when the worker's owner gave up on it; it must not record anything after.
        self.abandoned = False
        #: Set while a drain's cancellation of this task is pending.
        self.drain_cancelled = False
        #: The item the worker is on, and whether its result was recorded already.
        self.item: Any = None
        self.recorded = False
        #: Whether the item's failed result says something about the item itself (a
        #: permanent error for it), so a checkpoint may replay it; set by the runner.
        self.replayable_failure = False
        #: When the current item's first call began (`time.monotonic`), for the timeline's
        #: slowest items; 0 until a call is made (set only while a timeline is recorded).
        self.first_call = 0.0

    async def run_hook(self, awaitable: Awaitable[Any], what: str) -> Any:
        """Await a user hook under ``hook_timeout`` (see `run_step`)."""
        try:
            return await run_step(self.deadline, self.hook_timeout, awaitable, what)
        finally:
            if self.abandoned:
                raise WorkerAbandoned


class Failed:
    """A failed attempt: its error, classified once, and the permit it was admitted with."""

    __slots__ = ("error", "info", "permit")

    def __init__(self, error: Exception, info: ErrorInfo, permit: Permit) -> None:
        self.error = error
        self.info = info
        self.permit = permit


class ItemRunner:
    """Turns one `LLMWorkItem` into exactly one `WorkItemResult`.

    The collaborators are public attributes so the processor can swap them (e.g. when a user
    assigns ``processor.error_classifier``).
    """

    def __init__(
        self,
        *,
        config: ProcessorConfig,
        classifier: ErrorClassifier,
        dispatcher: EventDispatcher,
        admission: Admission,
        lifecycle: StrategyLifecycle,
        count_rate_limit: Callable[[], None],
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.dispatcher = dispatcher
        #: Publishes an item's final event (``ITEM_COMPLETED`` / ``ITEM_FAILED``); a
        #: checkpointed run holds them back until the result is committed.
        self.publish_final: Callable[[ProcessingEvent, dict[str, Any]], None] = dispatcher.publish
        self.admission = admission
        self.lifecycle = lifecycle
        self._prepared_ids = lifecycle.prepared_ids
        #: Set by `ParallelBatchProcessor.drain`: attempts not admitted yet are not made.
        self.draining = False
        # The workers waiting for admission or a back-off, which a drain ends at once.
        self._waiting: set[WorkerContext] = set()
        self.retry_policy = RetryPolicy(config.retry)
        self.token_extractor = TokenExtractor()
        self.usage = UsageNormalizer()
        self._count_rate_limit = count_rate_limit
        #: OpenTelemetry's spans and metrics, and the timeline a checkpointed run records;
        #: ``None`` when off (the attempt path tests each once per attempt).
        self.instruments: OTelInstruments | None = None
        self.timeline: TimelineRecorder | None = None
        # Whether each strategy met can see its items' RetryState (held: ids stay unique),
        # and the last one found blind to it (most batches have one strategy).
        self._reads_state: dict[int, tuple[Any, bool]] = {}
        self._blind: Any = None

    def stopping(self) -> bool:
        """Whether `draining` is set (a call: it may change while an attempt waits)."""
        return self.draining

    def drain(self) -> None:
        """Make no attempt that is not admitted yet; end the waits for admission now."""
        self.draining = True
        for worker in list(self._waiting):
            worker.drain_cancelled = True
            worker.deadline.task.cancel()

    async def _drainable(self, worker: WorkerContext, awaitable: Awaitable[_T]) -> _T | None:
        """Await a wait before an attempt (admission, back-off); ``None`` if drained.

        `drain` cancels the waiting task; that cancellation, and only it, is withdrawn
        here. Admission is cancel-safe: what it booked for the attempt is released.
        """
        if self.draining:
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            return None
        self._waiting.add(worker)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not worker.drain_cancelled:
                raise
            worker.drain_cancelled = False
            task = worker.deadline.task
            if task.uncancel() > 0:
                raise  # cancelled for another reason too
            return None
        finally:
            self._waiting.discard(worker)
            if worker.drain_cancelled:
                # The wait swallowed the drain's cancellation: withdraw it all the same.
                worker.drain_cancelled = False
                worker.deadline.task.uncancel()

    def entry_point(self) -> Callable[..., Awaitable[WorkItemResult[Any, Any]]]:
        """What a worker calls to run an item: `run`, or `run_instrumented` when listened to."""
        return self.run if self.instruments is None else self.run_instrumented

    async def run_instrumented(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker: WorkerContext,
        *,
        raise_on_failure: bool = False,
    ) -> WorkItemResult[Any, Any]:
        """`run` inside the item's span (see `OTelInstruments.run_item`)."""
        return await self.traced(item, self.run(item, worker, raise_on_failure=raise_on_failure))

    def traced(
        self, item: LLMWorkItem[Any, Any, Any], run: Awaitable[WorkItemResult[Any, Any]]
    ) -> Awaitable[WorkItemResult[Any, Any]]:
        """`run` (the run of `item`) to be awaited inside the item's span, when one is made."""
        instruments = self.instruments
        return run if instruments is None else instruments.run_item(item, run)

    def reconfigure(self, config: ProcessorConfig) -> None:
        """Use `config` (validated) from now on, e.g. after the user edited it in place."""
        self.config = config
        self.retry_policy = RetryPolicy(config.retry)

    def run(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker: WorkerContext,
        *,
        raise_on_failure: bool = False,
    ) -> Awaitable[WorkItemResult[Any, Any]]:
        """The awaitable of `item`'s one result: attempted until it succeeds, is skipped, or
        fails.

        With `raise_on_failure` (the 0.7.2 ``_process_item_with_retries`` contract) the last
        error is raised instead when retries are exhausted, rate limits never let up or
        ``prepare()`` fails; it then carries the item's summed tokens as
        ``_failed_token_usage``. Permanent errors still give a failed result.

        A plain function: when the strategy is prepared and the first attempt is admitted at
        once (most items), the awaitable is that attempt's own coroutine, which goes on to
        the retries if it fails, so an item runs in one coroutine rather than two.
        """
        strategy = item.strategy
        if id(strategy) in self._prepared_ids and not self.draining:
            try:
                permit = self.admission.try_admit(strategy, worker.worker_id, None, None)
            except Exception as exc:
                return self._refused(item, exc, worker, raise_on_failure)
            if permit is not None:
                state = None if strategy is self._blind else self._state_for(strategy)
                return self.attempt(  # type: ignore[return-value]  # never a Failed: it retries
                    item, worker, 1, strategy, state, permit, 0.0, True, raise_on_failure
                )
        return self._run_after_waiting(item, worker, raise_on_failure)

    async def _run_after_waiting(
        self, item: LLMWorkItem[Any, Any, Any], worker: WorkerContext, raise_on_failure: bool
    ) -> WorkItemResult[Any, Any]:
        """`run` for an item whose first attempt must wait: for its strategy's
        ``prepare()``, for admission, or not be made at all (a drain)."""
        strategy = item.strategy
        if id(strategy) not in self._prepared_ids:
            try:
                await self.lifecycle.ensure_prepared(strategy)
            except Exception as exc:
                logger.error(
                    "prepare() of strategy %s failed for item %s: %s",
                    type(strategy).__name__,
                    item.item_id,
                    error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
                )
                if raise_on_failure:
                    raise
                category = self._classify(exc).error_category
                return await self.fail(item, exc, None, worker, category=category)
        admission = self.admission
        waited = 0.0  # seconds the call waits for admission (for telemetry)
        try:
            permit = admission.try_admit(strategy, worker.worker_id, None, None)
            if permit is None:
                waiting_since = time.monotonic()
                admitted = await self._drainable(
                    worker, admission.admit(strategy, item.prompt, worker.worker_id, None, None)
                )
                if admitted is None:
                    return self._skipped(item, 0, DRAINED_ERROR)
                waited = time.monotonic() - waiting_since
                permit = admitted
        except Exception as exc:
            return await self._refused(item, exc, worker, raise_on_failure)
        if self.draining:
            permit.settle(Outcome.RELEASED)
            return self._skipped(item, 0, DRAINED_ERROR)
        state = self._state_for(strategy)
        return await self.attempt(  # type: ignore[return-value]  # never a Failed: it retries
            item, worker, 1, strategy, state, permit, waited, True, raise_on_failure
        )

    def _state_for(self, strategy: Any) -> RetryState | None:
        """A new `RetryState` for an item of `strategy`; ``None`` when the strategy cannot
        see it (see `reads_retry_state`)."""
        known = self._reads_state.get(id(strategy))
        if known is None or known[0] is not strategy:
            reads = reads_retry_state(strategy, _BASE_ON_ERROR)
            known = self._reads_state[id(strategy)] = (strategy, reads)
        if known[1]:
            return RetryState()
        self._blind = strategy
        return None

    def _refused(
        self,
        item: LLMWorkItem[Any, Any, Any],
        exc: Exception,
        worker: WorkerContext,
        raise_on_failure: bool,
    ) -> Awaitable[WorkItemResult[Any, Any]]:
        """The result of an item whose first attempt its admission refused (a quota or a
        budget is used up)."""
        return self._give_up(item, exc, None, worker, raise_on_failure, 0, _admission_category(exc))

    async def run_answered(
        self, item: LLMWorkItem[Any, Any, Any], worker: WorkerContext, answer: Answer
    ) -> WorkItemResult[Any, Any]:
        """Finish `item` with what its provider batch job gave (`BatchJobs`).

        A batch output goes through the same attempt as an online one (middleware, events,
        usage checks) without a call; a request to run online runs the item as usual, its
        batch request counted among the attempts.
        """
        if answer.online:
            result = await self.run(item, worker)
            result.attempts += answer.attempts
            spent_in_batch: dict[str, int] = dict(answer.usage)  # type: ignore[arg-type]
            if any(spent_in_batch.values()):
                result.token_usage = merged_usage(result.token_usage, spent_in_batch)
            return result
        if answer.error is not None:
            spent: dict[str, int] = dict(answer.usage)  # type: ignore[arg-type]
            return await self.fail(
                item,
                answer.error,
                spent,
                worker,
                attempts=answer.attempts,
                category=answer.category,
            )
        answered = _Answered(answer)
        outcome = await self.attempt(item, worker, answer.attempts, answered, None, NO_PERMIT)
        if isinstance(outcome, Failed):
            return await self.fail(
                item,
                outcome.error,
                dict(answer.usage),  # type: ignore[arg-type]
                worker,
                attempts=answer.attempts,
                category=outcome.info.error_category,
            )
        if outcome.success:
            outcome.via = "batch"
        return outcome

    async def _retry(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker: WorkerContext,
        strategy: Any,
        state: RetryState | None,
        failed: Failed,
        raise_on_failure: bool,
    ) -> WorkItemResult[Any, Any]:
        """Handle the failed first attempt and run further attempts as the policy says."""
        spent: dict[str, int] = dict.fromkeys(USAGE_KEYS, 0)  # tokens of the failed attempts
        failures = 0
        number = 1
        admission = self.admission
        while True:
            error, info, permit = failed.error, failed.info, failed.permit
            add_usage(spent, self.token_extractor.extract_from_exception(error))
            await self._strategy_on_error(strategy, error, number, state, worker)
            limited: BaseException | None = None  # the rate-limit error, for the admission
            if info.is_rate_limit:
                limited = error
                self.rate_limited(item, worker, permit)
            elif not info.is_retryable:
                worker.replayable_failure = _says_something_about_the_item(error, info)
                return await self.fail(
                    item,
                    error,
                    spent,
                    worker,
                    detailed=True,
                    attempts=number,
                    category=info.error_category,
                )
            else:
                failures += 1
                if failures >= self.config.retry.max_attempts:
                    # Output that never validates is the item's; a flaky network is not.
                    worker.replayable_failure = info.error_category == "validation_error"
                    return await self._give_up(
                        item, error, spent, worker, raise_on_failure, number, info.error_category
                    )
                await self._drainable(worker, self._back_off(item, error, info, failures))
            if self.stopping():
                drained = self._skipped(item, number, DRAINED_ERROR)
                drained.token_usage = dict(spent)  # type: ignore[assignment]
                return drained
            number += 1
            waited = 0.0
            try:
                ready = admission.try_admit(strategy, worker.worker_id, permit, limited)
                if ready is None:
                    waiting_since = time.monotonic()
                    ready = await self._drainable(
                        worker,
                        admission.admit(strategy, item.prompt, worker.worker_id, permit, limited),
                    )
                    if ready is None:
                        drained = self._skipped(item, number - 1, DRAINED_ERROR)
                        drained.token_usage = dict(spent)  # type: ignore[assignment]
                        return drained
                    waited = time.monotonic() - waiting_since
            except Exception as exc:
                # Quota exhausted, or rate limited with no progress for too long.
                given_up = error if type(exc) is RateLimitRetriesExhausted else exc
                return await self._give_up(
                    item,
                    given_up,
                    spent,
                    worker,
                    raise_on_failure,
                    number - 1,
                    _admission_category(exc),
                )
            if self.stopping():
                ready.settle(Outcome.RELEASED)
                drained = self._skipped(item, number - 1, DRAINED_ERROR)
                drained.token_usage = dict(spent)  # type: ignore[assignment]
                return drained
            outcome = await self.attempt(item, worker, number, strategy, state, ready, waited)
            if not isinstance(outcome, Failed):
                if outcome.success and any(spent.values()):
                    # The failed attempts were paid for too: the item's usage covers them all.
                    outcome.token_usage = merged_usage(outcome.token_usage, spent)
                return outcome
            failed = outcome

    async def attempt(
        self,
        item: LLMWorkItem[Any, Any, Any],
        worker: WorkerContext,
        number: int,
        strategy: Any,
        state: RetryState | None,
        permit: Permit,
        waited: float = 0.0,
        retry_failure: bool = False,
        raise_on_failure: bool = False,
    ) -> WorkItemResult[Any, Any] | Failed:
        """One admitted call: middleware, the strategy under its deadline, events.

        `waited` is how long the call waited for its admission (for telemetry). Returns
        the success (or middleware-skip) result, or the classified failure; with
        `retry_failure` (an item's first attempt) a failure goes on to the retries
        instead, and the item's final result is returned (see `run`).
        """
        dispatcher = self.dispatcher
        observed = dispatcher.observers
        start = time.monotonic()
        if observed:
            dispatcher.publish(
                ProcessingEvent.ITEM_STARTED,
                {"item_id": item.item_id, "worker_id": worker.worker_id},
            )
        work_item = item
        if dispatcher.middlewares:
            try:
                prepared = await dispatcher.before_process(item, worker.run_hook)
            except BaseException:
                permit.settle(Outcome.RELEASED)
                raise
            if prepared is None:
                permit.settle(Outcome.RELEASED)
                return self._skipped(item, number - 1)
            work_item = prepared
        config = self.config
        deadline = worker.deadline
        probe: Attempt | None = None
        if self.instruments is not None:
            probe = self.instruments.attempt_started(
                item, number, waited, type(strategy) is _Answered
            )
        timeline = self.timeline
        if timeline is not None:
            timeline.call_started(waited)
            if number == 1 or not worker.first_call:
                worker.first_call = start
        try:
            # The call runs here, not in a helper coroutine: a frame less per attempt.
            if config.dry_run:
                # No model call: a dry run is bounded like a hook, not by the attempt deadline.
                deadline.arm(config.hook_timeout, "dry_run()")
                returned = await strategy.dry_run(work_item.prompt)
            else:
                timeout = config.timeout_per_item
                deadline.arm(timeout)
                returned = await strategy.execute(work_item.prompt, number, timeout, state)
            # A call that swallowed its cancellation and returned is late, not failed.
            deadline.disarm()
            if worker.abandoned:
                raise WorkerAbandoned
            if type(returned) is not tuple or len(returned) != 2:
                raise _configuration_error(TypeError(_malformed_return(strategy, config, returned)))
            output, usage = returned
            # The clean-usage check inline (see `is_clean_usage`): it runs for every call.
            if type(usage) is dict:
                for count in usage.values():
                    if type(count) is not int or count < 0:
                        usage = self.usage.normalize(usage, strategy)
                        break
            else:
                usage = self.usage.normalize(usage, strategy)
        except BaseException as exc:
            failed = self._failed(exc, work_item, strategy, worker, permit, probe, start)
            if not retry_failure:
                return failed
        else:
            permit.settle(SUCCEEDED, usage)
            if probe is not None:
                probe.end(usage, None, None)
            if timeline is not None:
                timeline.call_ended(
                    item.strategy,
                    time.monotonic() - start,
                    usage,
                    None,
                    type(strategy) is _Answered,
                )
            # Positional arguments: this runs once per item and keywords cost twice as much.
            result: WorkItemResult[Any, Any] = WorkItemResult(
                work_item.item_id, True, output, None, work_item.context, usage, None, False, number
            )
            if dispatcher.middlewares:
                result = await dispatcher.after_process(result, worker.run_hook)
                result.token_usage = self.usage.normalize(
                    result.token_usage, dispatcher, "A middleware's after_process() result"
                )
                if not result.attempts:
                    result.attempts = number
            if observed:
                payload: dict[str, Any] = {
                    "item_id": work_item.item_id,
                    "duration": time.monotonic() - start,
                    "tokens": usage.get("total_tokens", 0),
                }
                limit = permit.describe()
                if limit:
                    payload.update(limit)
                self.publish_final(ProcessingEvent.ITEM_COMPLETED, payload)
            return result
        # Outside the ``except`` block: the retries must not run as handling of this error.
        return await self._retry(item, worker, strategy, state, failed, raise_on_failure)

    def _failed(
        self,
        exc: BaseException,
        item: LLMWorkItem[Any, Any, Any],
        strategy: Any,
        worker: WorkerContext,
        permit: Permit,
        probe: Attempt | None,
        start: float,
    ) -> Failed:
        """The attempt's call raised `exc`: classify it, settle the permit, end the probes.

        Re-raises what must propagate (see `_attempt_error`), with the permit released.
        """
        timeline = self.timeline
        answered = type(strategy) is _Answered
        try:
            error = self._attempt_error(exc, item, strategy, worker, start)
        except BaseException:
            permit.settle(Outcome.RELEASED)
            if probe is not None:
                probe.end(None, exc, None)
            if timeline is not None:
                timeline.call_ended(item.strategy, time.monotonic() - start, None, None, True)
            raise
        info = self._classify(error)
        permit.settle(_outcome_of(error, info), error)
        if probe is not None:
            probe.end(None, error, info)
        if timeline is not None:
            timeline.call_ended(item.strategy, time.monotonic() - start, None, info, answered)
        return Failed(error, info, permit)

    def _attempt_error(
        self,
        exc: BaseException,
        item: LLMWorkItem[Any, Any, Any],
        strategy: Any,
        worker: WorkerContext,
        start: float,
    ) -> Exception:
        """The error an attempt that raised `exc` fails with; re-raises what must propagate.

        Every way the call can end other than the batch's own cancellation (or
        ``KeyboardInterrupt``/``SystemExit``) becomes an ``Exception``: the deadline a
        `FrameworkTimeoutError`, a stray ``CancelledError`` or other `BaseException` a
        `CallInterruptedError`.
        """
        if isinstance(exc, WorkerAbandoned):
            raise exc
        deadline = worker.deadline
        expired = deadline.disarm()
        if worker.abandoned:
            raise WorkerAbandoned from None
        if expired:
            error: Exception = self._timeout_error(item, start, exc)
            error.__cause__ = exc
            return error
        if isinstance(exc, Exception):
            return exc
        if is_propagating(exc, deadline.task):
            raise exc
        what = f"{_method(self.config)} of {type(strategy).__name__}"
        return interruption_error(exc, what)

    async def fail(
        self,
        item: LLMWorkItem[Any, Any, Any],
        exc: Exception,
        spent: dict[str, int] | None,
        worker: WorkerContext,
        *,
        detailed: bool = False,
        attempts: int = 0,
        category: str | None = None,
    ) -> WorkItemResult[Any, Any]:
        """The final result of an item that failed with `exc` (after middleware ``on_error``).

        `spent` sums the tokens of all its attempts (``None``: it made none). `detailed`
        keeps 500 characters of the error instead of 200 (permanent errors). `attempts`
        and `category` are the result's ``attempts`` and ``error_category``.
        """
        dispatcher = self.dispatcher
        result: WorkItemResult[Any, Any] | None = None
        if dispatcher.middlewares:
            result = await dispatcher.on_error(item, exc, worker.run_hook)
            if result is not None:
                result.token_usage = self.usage.normalize(
                    result.token_usage, dispatcher, "A middleware's on_error() result"
                )
        if result is None:
            # Once a budget is spent every remaining item ends this way; it said so once.
            logger.log(
                logging.DEBUG if category == "budget_exhausted" else logging.ERROR,
                "Item %s failed: %s",
                item.item_id,
                error_text(exc, ERROR_MESSAGE_MAX_LENGTH),
            )
            limit = ERROR_MESSAGE_DETAILED_LENGTH if detailed else ERROR_MESSAGE_MAX_LENGTH
            result = WorkItemResult(
                item.item_id,
                False,
                None,
                error_text(exc, limit),
                item.context,
                spent if spent is not None else {},  # type: ignore[arg-type]
                None,
                False,
                attempts,
                category,
            )
        elif not result.attempts:
            result.attempts = attempts
        if dispatcher.observers:
            self._publish_outcome(result, exc)
        return result

    async def _give_up(
        self,
        item: LLMWorkItem[Any, Any, Any],
        exc: Exception,
        spent: dict[str, int] | None,
        worker: WorkerContext,
        raise_on_failure: bool,
        attempts: int,
        category: str,
    ) -> WorkItemResult[Any, Any]:
        if raise_on_failure:
            if spent is not None:
                attach_failed_usage(exc, spent)
            raise exc
        return await self.fail(item, exc, spent, worker, attempts=attempts, category=category)

    def _skipped(
        self, item: LLMWorkItem[Any, Any, Any], attempts: int, error: str = SKIPPED_ERROR
    ) -> WorkItemResult[Any, Any]:
        if self.dispatcher.observers:
            self.publish_final(
                ProcessingEvent.ITEM_FAILED, {"item_id": item.item_id, "error_type": "Skipped"}
            )
        return WorkItemResult(
            item.item_id,
            False,
            None,
            error,
            item.context,
            attempts=attempts,
            error_category=SKIPPED_CATEGORY if error is SKIPPED_ERROR else DRAINED_CATEGORY,
        )

    def _publish_outcome(self, result: WorkItemResult[Any, Any], exc: Exception) -> None:
        """ITEM_FAILED for a failed final result; ITEM_COMPLETED for one a middleware rescued."""
        if result.success:
            usage: object = result.token_usage
            self.publish_final(
                ProcessingEvent.ITEM_COMPLETED,
                {
                    "item_id": result.item_id,
                    "tokens": usage.get("total_tokens", 0) if isinstance(usage, dict) else 0,
                    "recovered_from": type(exc).__name__,
                },
            )
        else:
            self.publish_final(
                ProcessingEvent.ITEM_FAILED,
                {"item_id": result.item_id, "error_type": type(exc).__name__},
            )

    def _classify(self, exc: Exception) -> ErrorInfo:
        try:
            return self.classifier.classify(unwrap_token_tracking(exc))
        except Exception:
            # A broken classifier must not replace the real error in the item's result.
            logger.warning(
                "Error classifier %s raised; classifying %s with the default rules",
                type(self.classifier).__name__,
                type(exc).__name__,
                exc_info=True,
            )
            return _FALLBACK_CLASSIFIER.classify(exc)

    async def _strategy_on_error(
        self,
        strategy: Any,
        exc: Exception,
        attempt: int,
        state: RetryState | None,
        worker: WorkerContext,
    ) -> None:
        on_error = getattr(strategy, "on_error", None)
        if on_error is None or getattr(on_error, "__func__", None) is _BASE_ON_ERROR:
            return  # the base class's hook does nothing
        try:
            await worker.run_hook(
                on_error(exc, attempt, state), f"on_error() of {type(strategy).__name__}"
            )
        except Exception as hook_exc:
            logger.warning(
                "on_error() of strategy %s raised or overran (%r); ignored",
                type(strategy).__name__,
                hook_exc,
            )

    def rate_limited(
        self, item: LLMWorkItem[Any, Any, Any], worker: WorkerContext, permit: Permit
    ) -> None:
        """Count a rate-limited attempt and report it (``RATE_LIMIT_HIT``)."""
        self._count_rate_limit()
        if self.dispatcher.observers:
            payload: dict[str, Any] = {"item_id": item.item_id, "worker_id": worker.worker_id}
            limit = permit.describe()
            if limit:
                payload.update(limit)
            self.dispatcher.publish(ProcessingEvent.RATE_LIMIT_HIT, payload)

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

    def _timeout_error(
        self, item: LLMWorkItem[Any, Any, Any], start: float, cause: BaseException
    ) -> TimeoutError:
        elapsed = time.monotonic() - start
        if self.config.dry_run:
            limit = self.config.hook_timeout
            return HookTimeoutError(
                f"dry_run() for item {item.item_id!r} did not finish within {limit}s",
                hook="dry_run()",
                timeout=limit,
            )
        limit = self.config.timeout_per_item
        error = FrameworkTimeoutError(
            f"Attempt for item {item.item_id!r} exceeded timeout_per_item "
            f"({elapsed:.1f}s elapsed, limit {limit}s)",
            item_id=item.item_id,
            elapsed=elapsed,
            timeout_limit=limit,
        )
        # A strategy that spent tokens before the deadline records them on the error it saw;
        # the timeout error carries them on, as they were.
        attributes = getattr(cause, "__dict__", None)
        if isinstance(attributes, dict) and FAILED_USAGE_ATTR in attributes:
            error.__dict__[FAILED_USAGE_ATTR] = attributes[FAILED_USAGE_ATTR]
        return error


#: Set on errors that come from how the batch is set up (a strategy returning the wrong
#: shape), not from the item: such a failure is never replayed from a checkpoint.
_CONFIGURATION_ERROR_ATTR: Final = "_async_batch_llm_configuration_error"
#: Categories of permanent errors that concern the run, not the item.
_NOT_ABOUT_THE_ITEM: Final = frozenset({QUOTA_EXHAUSTED_CATEGORY, "interrupted", "rate_limit"})


class _Answered:
    """Stands in for the strategy in an attempt whose output a batch job already gave."""

    __slots__ = ("_answer",)

    def __init__(self, answer: Answer) -> None:
        self._answer = answer

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Any, Any]:
        return self._answer.output, self._answer.usage


def _configuration_error(error: Exception) -> Exception:
    error.__dict__[_CONFIGURATION_ERROR_ATTR] = True
    return error


def _says_something_about_the_item(error: Exception, info: ErrorInfo) -> bool:
    """Whether a permanent error is the item's own (its stored failure may be replayed)."""
    if info.is_timeout or info.is_rate_limit or info.error_category in _NOT_ABOUT_THE_ITEM:
        return False
    if isinstance(error, HookTimeoutError | CallInterruptedError):
        return False
    return not getattr(error, "__dict__", {}).get(_CONFIGURATION_ERROR_ATTR, False)


def _admission_category(exc: Exception) -> str:
    """The ``error_category`` of an item its admission refused (see `Admission.admit`)."""
    if type(exc) is RateLimitRetriesExhausted:
        return "rate_limit"
    category = getattr(exc, "error_category", None)
    if isinstance(category, str):
        return category
    return QUOTA_EXHAUSTED_CATEGORY if is_quota_exhausted(exc) else "admission_error"


def _outcome_of(exc: Exception, info: ErrorInfo) -> Outcome:
    if info.is_rate_limit:
        return Outcome.RATE_LIMITED
    if info.error_category == "quota_exhausted" or is_quota_exhausted(exc):
        return Outcome.QUOTA_EXHAUSTED
    return Outcome.FAILED


def _method(config: ProcessorConfig) -> str:
    return "dry_run()" if config.dry_run else "execute()"


def _malformed_return(strategy: Any, config: ProcessorConfig, returned: object) -> str:
    if type(returned) is tuple:
        count = len(returned)
        got = f"a tuple of {count} item{'' if count == 1 else 's'}"
    else:
        got = f"{type(returned).__name__} {returned!r:.60}"
    return (
        f"{type(strategy).__name__}.{_method(config)} must return a 2-tuple "
        f"(output, token_usage), got {got}"
    )
