"""OpenTelemetry spans and metrics of a run (the listener behind `telemetry.OpenTelemetry`).

One ``abl.item`` span per item, the parent of one ``abl.attempt`` span per call. Each is
the current span while it is open, so spans an SDK opens inside the strategy (pydantic-ai's
``chat`` span, httpx's) nest under the attempt. Attribute names follow the OpenTelemetry
GenAI semantic conventions where one fits (provider, model, token usage, ``error.type``)
and use the ``abl.`` namespace for the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from async_batch_llm._internal.instruments import Attempt, StrategyFacts
    from async_batch_llm._internal.values import WorkItemResult
    from async_batch_llm.rate_control import ScopeSnapshot
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["OTelInstruments"]

INSTRUMENTATION_NAME = "async_batch_llm"

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


def _outcome(result: WorkItemResult[Any, Any] | None) -> str:
    if result is None:
        return "cancelled"
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
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider)
        self._scopes = scopes
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
        self.in_flight = meter.create_up_down_counter(
            "abl.calls.in_flight", unit="{call}", description="Calls in flight"
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

    # -- items -------------------------------------------------------------------------------

    def item_started(self, item_id: str, facts: StrategyFacts) -> Any:
        span = self.tracer.start_span(
            "abl.item",
            kind=SpanKind.INTERNAL,
            attributes={
                "abl.item.id": item_id,
                "gen_ai.provider.name": facts.provider,
                "gen_ai.request.model": facts.model,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token, facts

    def item_ended(self, token: Any, result: WorkItemResult[Any, Any] | None) -> None:
        span, context_token, facts = token
        otel_context.detach(context_token)
        outcome = _outcome(result)
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
                attributes["error.type"] = _error_type(result.error)
                span.set_status(Status(StatusCode.ERROR, result.error or None))
        else:
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            attributes["error.type"] = "cancelled"
        span.set_attributes(attributes)
        span.end()
        self.items.add(1, _metric_attributes(facts, outcome=outcome, replayed=False))

    def item_replayed(self, item_id: str, facts: StrategyFacts, result: Any) -> None:
        outcome = _outcome(result)
        now = time.time_ns()
        span = self.tracer.start_span(
            "abl.item",
            kind=SpanKind.INTERNAL,
            start_time=now,
            attributes={
                "abl.item.id": item_id,
                "gen_ai.provider.name": facts.provider,
                "gen_ai.request.model": facts.model,
                "abl.outcome": outcome,
                "abl.replayed": True,
                "abl.attempts": result.attempts,
            },
        )
        span.end(end_time=now)
        self.items.add(1, _metric_attributes(facts, outcome=outcome, replayed=True))

    # -- attempts ------------------------------------------------------------------------------

    def attempt_started(self, attempt: Attempt) -> None:
        facts = attempt.facts
        span = self.tracer.start_span(
            "abl.attempt",
            kind=SpanKind.CLIENT,
            attributes={
                "abl.item.id": attempt.item_id,
                "abl.attempt": attempt.number,
                "abl.admission.wait": attempt.waited,
                "gen_ai.provider.name": facts.provider,
                "gen_ai.request.model": facts.model,
            },
        )
        attempt.otel = (span, otel_context.attach(trace.set_span_in_context(span)))
        self.in_flight.add(1, _metric_attributes(facts))
        self.admission_wait.record(attempt.waited, _metric_attributes(facts))

    def attempt_ended(
        self,
        attempt: Attempt,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
        scope: str | None,
    ) -> None:
        span, context_token = attempt.otel
        otel_context.detach(context_token)
        facts = attempt.facts
        base = _metric_attributes(facts)
        self.in_flight.add(-1, base)
        seconds = time.monotonic() - attempt.started
        if error is None:
            outcome = "succeeded"
        elif info is not None and info.is_rate_limit:
            outcome = "rate_limited"
        else:
            outcome = "failed"
        attributes: dict[str, Any] = {"abl.outcome": outcome}
        if scope:
            attributes["abl.rate_limit.scope"] = scope
        if usage:
            attributes["gen_ai.usage.input_tokens"] = usage.get("input_tokens", 0)
            attributes["gen_ai.usage.output_tokens"] = usage.get("output_tokens", 0)
            for kind in ("input", "output"):
                count = usage.get(f"{kind}_tokens", 0)
                if count:
                    self.tokens.record(count, base | {"gen_ai.token.type": kind})
            cost = facts.cost(usage)
            if cost:
                self.cost.add(cost, base)
        outcome_attributes = base | {"abl.outcome": outcome}
        if error is not None:
            error_type = type(error).__qualname__
            attributes["error.type"] = error_type
            outcome_attributes["error.type"] = error_type
            if info is not None:
                attributes["abl.error.category"] = info.error_category
                attributes["abl.retryable"] = info.is_retryable
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:500] or error_type))
        if outcome == "rate_limited":
            self.rate_limits.add(1, base | ({"abl.rate_limit.scope": scope} if scope else {}))
        span.set_attributes(attributes)
        span.end()
        self.attempts.add(1, outcome_attributes)
        self.duration.record(seconds, outcome_attributes)

    # -- scope gauges -------------------------------------------------------------------------

    def _snapshots(self) -> list[ScopeSnapshot]:
        if self._scopes is None:
            return []
        try:
            return list(self._scopes())
        except Exception:
            return []

    def _observe_limits(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(snapshot.requests_per_minute, _scope_attributes(snapshot))
            for snapshot in self._snapshots()
            if snapshot.requests_per_minute is not None
        ]

    def _observe_utilisation(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(snapshot.utilisation, _scope_attributes(snapshot))
            for snapshot in self._snapshots()
            if snapshot.utilisation is not None
        ]


def _metric_attributes(facts: StrategyFacts, **extra: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": facts.provider,
        "gen_ai.request.model": facts.model,
    }
    for key, value in extra.items():
        attributes[f"abl.{key}"] = value
    return attributes


def _scope_attributes(snapshot: ScopeSnapshot) -> dict[str, Any]:
    return {
        "abl.rate_limit.scope": str(snapshot.scope),
        "gen_ai.provider.name": snapshot.scope.provider,
        "gen_ai.request.model": snapshot.scope.model,
        "abl.limit.source": snapshot.request_limit_source or "unknown",
    }


def _error_type(error: str | None) -> str:
    """The exception class of a result's ``"<Class>: <message>"`` error text."""
    if not error:
        return "error"
    head, _, _ = error.partition(":")
    return head.strip() or "error"
