"""OpenTelemetry spans and metrics of a run (the listener behind `telemetry.OpenTelemetry`).

One ``abl.item`` span per item, the parent of one ``abl.attempt`` span per call. Each is
the current span while it is open, so spans an SDK opens inside the strategy (pydantic-ai's
``chat`` span, httpx's) nest under the attempt. Attribute names follow the OpenTelemetry
GenAI semantic conventions where one fits (provider, model, token usage, ``error.type``)
and use the ``abl.`` namespace for the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from async_batch_llm._internal.instruments import (
    Attempt,
    FactsCache,
    StrategyFacts,
    read_scopes,
)
from async_batch_llm._internal.values import split_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from async_batch_llm._internal.values import WorkItemResult
    from async_batch_llm.rate_control import ScopeSnapshot
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["OTelInstruments"]

INSTRUMENTATION_NAME = "async_batch_llm"

logger = logging.getLogger("async_batch_llm")

# The buckets the GenAI conventions recommend for `gen_ai.client.token.usage` and
# `gen_ai.client.operation.duration`.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)


def _outcome(result: WorkItemResult[Any, Any] | None, failure: BaseException | None = None) -> str:
    if result is None:
        # No result: the run of the item raised.
        if isinstance(failure, asyncio.CancelledError):
            return "cancelled"
        return "abandoned" if type(failure).__name__ == "WorkerAbandoned" else "error"
    if result.success:
        return "succeeded"
    return "skipped" if result.error_category == "skipped" else "failed"


class OTelInstruments:
    """Spans and metrics from the attempt path (see `telemetry.OpenTelemetry`)."""

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        scopes: Callable[[], Iterable[ScopeSnapshot]] | None = None,
    ) -> None:
        from async_batch_llm import __version__

        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self._scopes = scopes
        self.facts = FactsCache()
        # Metric attribute sets, made once per strategy: building them per call cost more
        # than the no-op API's calls themselves.
        self._by_facts: dict[StrategyFacts, _Labels] = {}
        self._in_flight: dict[_Labels, int] = {}
        meters = self.meters = _Meters.of(meter_provider)
        meters.live.add(self)
        self.items = meters.items
        self.attempts = meters.attempts
        self.rate_limits = meters.rate_limits
        self.tokens = meters.tokens
        self.duration = meters.duration
        self.cost = meters.cost
        self.admission_wait = meters.admission_wait

    # -- items -------------------------------------------------------------------------------

    async def run_item(
        self, item: Any, awaitable: Awaitable[WorkItemResult[Any, Any]]
    ) -> WorkItemResult[Any, Any]:
        """Await the run of `item` (`awaitable`) inside its item span."""
        labels = self._labels(self.facts(item.strategy))
        span = self.tracer.start_span(
            "abl.item",
            kind=SpanKind.INTERNAL,
            attributes={"abl.item.id": item.item_id, **labels.base},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        result: WorkItemResult[Any, Any] | None = None
        failure: BaseException | None = None
        try:
            result = await awaitable
        except BaseException as exc:
            failure = exc
            raise
        finally:
            otel_context.detach(token)
            try:
                self._item_ended(span, labels, result, failure)
            except Exception:  # telemetry never changes how an item ends
                logger.debug("Recording the item span failed", exc_info=True)
            finally:
                span.end()
        return result

    def _item_ended(
        self,
        span: Any,
        labels: _Labels,
        result: WorkItemResult[Any, Any] | None,
        failure: BaseException | None,
    ) -> None:
        outcome = _outcome(result, failure)
        if span.is_recording():
            attributes: dict[str, Any] = {"abl.outcome": outcome, "abl.replayed": False}
            if result is not None:
                usage = result.token_usage
                attributes["abl.attempts"] = result.attempts
                attributes["abl.via"] = result.via
                attributes["gen_ai.usage.input_tokens"] = usage.get("input_tokens", 0)
                attributes["gen_ai.usage.output_tokens"] = usage.get("output_tokens", 0)
                if result.error_category:
                    attributes["abl.error.category"] = result.error_category
                if not result.success:
                    attributes["error.type"] = split_error(result.error or "")[0]
                    span.set_status(Status(StatusCode.ERROR, result.error or None))
            else:
                span.set_status(Status(StatusCode.ERROR, outcome))
                attributes["error.type"] = (
                    outcome if failure is None else type(failure).__qualname__
                )
            span.set_attributes(attributes)
        self.items.add(1, labels.item(outcome, replayed=False))

    def item_replayed(self, item: Any, result: Any) -> None:
        """A zero-length item span for a result read back from a checkpoint."""
        labels = self._labels(self.facts(item.strategy))
        item_id = item.item_id
        outcome = _outcome(result)
        now = time.time_ns()
        span = self.tracer.start_span(
            "abl.item",
            kind=SpanKind.INTERNAL,
            start_time=now,
            attributes={
                "abl.item.id": item_id,
                **labels.base,
                "abl.outcome": outcome,
                "abl.replayed": True,
                "abl.attempts": result.attempts,
            },
        )
        span.end(end_time=now)
        self.items.add(1, labels.item(outcome, replayed=True))

    # -- attempts ------------------------------------------------------------------------------

    def attempt_started(self, item: Any, number: int, waited: float, answered: bool) -> Attempt:
        """Open the attempt span (the current span until `Attempt.end`).

        `answered`: the attempt hands over a provider batch job's answer instead of a call.
        """
        facts = self.facts(item.strategy)
        attempt = Attempt(self, item.item_id, number, facts, waited, answered)
        labels = self._labels(facts)
        span = self.tracer.start_span(
            "abl.attempt",
            kind=SpanKind.CLIENT,
            attributes={
                "abl.item.id": attempt.item_id,
                "abl.attempt": attempt.number,
                "abl.admission.wait": attempt.waited,
                "abl.via": "batch" if attempt.answered else "online",
                **labels.base,
            },
        )
        attempt.otel = (span, otel_context.attach(trace.set_span_in_context(span)), labels)
        self._in_flight[labels] = self._in_flight.get(labels, 0) + 1
        self.admission_wait.record(attempt.waited, labels.base)
        return attempt

    def attempt_ended(
        self,
        attempt: Attempt,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
    ) -> None:
        span, context_token, labels = attempt.otel
        otel_context.detach(context_token)
        self._in_flight[labels] -= 1
        try:
            self._attempt_ended(attempt, span, labels, usage, error, info)
        except Exception:  # telemetry never changes how an attempt ends
            logger.debug("Recording the attempt span failed", exc_info=True)
        finally:
            span.end()

    def _attempt_ended(
        self,
        attempt: Attempt,
        span: Any,
        labels: _Labels,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
    ) -> None:
        scope = attempt.facts.scope
        base = labels.base
        seconds = time.monotonic() - attempt.started
        if error is None:
            outcome = "succeeded"
        elif info is not None and info.is_rate_limit:
            outcome = "rate_limited"
        else:
            outcome = "failed"
        if usage:
            input_tokens = usage.get("input_tokens", 0)
            output_tokens = usage.get("output_tokens", 0)
            if input_tokens:
                self.tokens.record(input_tokens, labels.input_tokens)
            if output_tokens:
                self.tokens.record(output_tokens, labels.output_tokens)
            cost = attempt.facts.cost(usage)
            if cost:
                self.cost.add(cost, base)
        error_type = None if error is None else type(error).__qualname__
        if span.is_recording():
            attributes: dict[str, Any] = {"abl.outcome": outcome}
            if scope:
                attributes["abl.rate_limit.scope"] = scope
            if usage:
                attributes["gen_ai.usage.input_tokens"] = usage.get("input_tokens", 0)
                attributes["gen_ai.usage.output_tokens"] = usage.get("output_tokens", 0)
            if error is not None:
                attributes["error.type"] = error_type
                if info is not None:
                    attributes["abl.error.category"] = info.error_category
                    attributes["abl.retryable"] = info.is_retryable
                span.set_status(Status(StatusCode.ERROR, _message(error) or error_type))
            span.set_attributes(attributes)
            if error is not None:
                span.record_exception(error)
        if outcome == "rate_limited":
            self.rate_limits.add(1, labels.rate_limited(scope))
        outcome_labels = labels.attempt(outcome, error_type)
        self.attempts.add(1, outcome_labels)
        self.duration.record(seconds, outcome_labels)

    def _labels(self, facts: StrategyFacts) -> _Labels:
        labels = self._by_facts.get(facts)
        if labels is None:
            if len(self._by_facts) > 4096:
                self._by_facts.clear()
            labels = self._by_facts[facts] = _Labels(facts)
        return labels

    # -- observed instruments ------------------------------------------------------------------

    def in_flight(self) -> list[tuple[int, dict[str, Any]]]:
        return [(count, labels.base) for labels, count in self._in_flight.items()]

    def snapshots(self) -> list[ScopeSnapshot]:
        return read_scopes(self._scopes)


class _Meters:
    """The instruments of one meter provider, shared by every processor that uses it.

    An SDK registers each instrument name once per provider and ignores a second
    registration's callbacks, so the observable instruments read every live
    `OTelInstruments` (held weakly: a finished processor is not kept alive by them).
    """

    # By provider, weakly: a provider an application drops takes its instruments along.
    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, _Meters]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, meter_provider: Any) -> _Meters:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        found = cls._by_provider.get(provider)
        if found is None:
            found = cls._by_provider[provider] = cls(provider)
        return found

    def __init__(self, provider: Any) -> None:
        from async_batch_llm import __version__

        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=provider)
        self.live: weakref.WeakSet[OTelInstruments] = weakref.WeakSet()
        self.items = meter.create_counter(
            "abl.items", unit="{item}", description="Items ended, by outcome"
        )
        self.attempts = meter.create_counter(
            "abl.attempts", unit="{call}", description="Calls made, by outcome"
        )
        self.rate_limits = meter.create_counter(
            "abl.rate_limits", unit="{call}", description="Calls answered with a rate limit (429)"
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per call",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of each call",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.cost = meter.create_counter(
            "abl.cost", unit="USD", description="Cost of the calls made, where the price is known"
        )
        self.admission_wait = meter.create_histogram(
            "abl.admission.wait",
            unit="s",
            description="Time a call waited for admission (rate limit, budget)",
            explicit_bucket_boundaries_advisory=(0, *_DURATION_BUCKETS),
        )
        # Observed, not counted per call: an SDK records each measurement at some cost,
        # and the number in flight is only wanted when the metrics are collected.
        meter.create_observable_up_down_counter(
            "abl.calls.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{call}",
            description="Calls in flight",
        )
        meter.create_observable_gauge(
            "abl.scope.limit",
            callbacks=[self._observe_limits],
            unit="{request}/min",
            description="Request limit in force per rate-limit scope",
        )
        meter.create_observable_gauge(
            "abl.scope.utilisation",
            callbacks=[self._observe_utilisation],
            unit="1",
            description="Share of the scope's request limit used over the last window",
        )

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[tuple[tuple[str, Any], ...], tuple[int, dict[str, Any]]] = {}
        for instruments in list(self.live):
            for count, attributes in instruments.in_flight():
                key = tuple(sorted(attributes.items()))
                previous = totals.get(key, (0, attributes))[0]
                totals[key] = (previous + count, attributes)
        return [Observation(count, attributes) for count, attributes in totals.values()]

    def _scope_points(self) -> dict[str, ScopeSnapshot]:
        # A scope shared by two processors (one rate strategy) is observed once.
        return {
            str(snapshot.scope): snapshot
            for instruments in list(self.live)
            for snapshot in instruments.snapshots()
        }

    def _observe_limits(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_scopes("requests_per_minute")

    def _observe_utilisation(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_scopes("utilisation")

    def _observe_scopes(self, field: str) -> list[Observation]:
        """`field` of each scope's snapshot, where it is known."""
        observations = []
        for snapshot in self._scope_points().values():
            value = getattr(snapshot, field)
            if value is not None:
                observations.append(Observation(value, _scope_attributes(snapshot)))
        return observations


class _Labels:
    """The metric attribute sets of one strategy's calls (each made once, never mutated)."""

    __slots__ = ("_attempts", "_items", "_limited", "base", "input_tokens", "output_tokens")

    def __init__(self, facts: StrategyFacts) -> None:
        self.base: dict[str, Any] = {
            "gen_ai.provider.name": facts.provider,
            "gen_ai.request.model": facts.model,
        }
        self.input_tokens = self.base | {"gen_ai.token.type": "input"}
        self.output_tokens = self.base | {"gen_ai.token.type": "output"}
        self._items: dict[tuple[str, bool], dict[str, Any]] = {}
        self._attempts: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._limited: dict[str | None, dict[str, Any]] = {}

    def item(self, outcome: str, *, replayed: bool) -> dict[str, Any]:
        key = (outcome, replayed)
        found = self._items.get(key)
        if found is None:
            found = self._items[key] = self.base | {
                "abl.outcome": outcome,
                "abl.replayed": replayed,
            }
        return found

    def attempt(self, outcome: str, error_type: str | None) -> dict[str, Any]:
        key = (outcome, error_type)
        found = self._attempts.get(key)
        if found is None:
            found = self.base | {"abl.outcome": outcome}
            if error_type is not None:
                found["error.type"] = error_type
            if len(self._attempts) < 256:  # error types are few; never let them grow unbounded
                self._attempts[key] = found
        return found

    def rate_limited(self, scope: str | None) -> dict[str, Any]:
        found = self._limited.get(scope)
        if found is None:
            found = self._limited[scope] = self.base | (
                {"abl.rate_limit.scope": scope} if scope else {}
            )
        return found


def _scope_attributes(snapshot: ScopeSnapshot) -> dict[str, Any]:
    return {
        "abl.rate_limit.scope": str(snapshot.scope),
        "gen_ai.provider.name": snapshot.scope.provider,
        "gen_ai.request.model": snapshot.scope.model,
        "abl.limit.source": snapshot.request_limit_source or "unknown",
    }


def _message(error: BaseException) -> str:
    """The start of the error's message (an exception whose ``__str__`` raises has none)."""
    try:
        return str(error)[:500]
    except Exception:
        return ""
