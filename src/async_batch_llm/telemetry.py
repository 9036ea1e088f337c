"""OpenTelemetry traces and metrics of a batch.

```python
from async_batch_llm import ParallelBatchProcessor
from async_batch_llm.telemetry import OpenTelemetry

async with ParallelBatchProcessor(config=config, telemetry=OpenTelemetry()) as processor:
    ...
```

The library depends on ``opentelemetry-api`` only (the ``otel`` extra, or
``pip install opentelemetry-api``);
the SDK, its exporters and their configuration belong to the application. Without a
configured SDK the API's no-op providers make everything free; without ``telemetry=`` the
processor does not touch OpenTelemetry at all.

**Traces.** One ``abl.item`` span per item, with one ``abl.attempt`` child per call. The
attempt is the current span while the strategy runs, so the spans its SDK opens
(pydantic-ai's ``chat <model>``, httpx's requests) are its children and one trace shows the
whole call. A result replayed from a checkpoint gets a zero-length ``abl.item`` span with
``abl.replayed = true`` and no attempt.

| attribute | on | value |
|---|---|---|
| ``gen_ai.provider.name``, ``gen_ai.request.model`` | item, attempt | the strategy's scope |
| ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens`` | item, attempt | tokens used |
| ``error.type`` | item, attempt | exception class of a failure |
| ``abl.item.id`` | item, attempt | the work item's id |
| ``abl.outcome`` | item | ``succeeded``, ``failed``, ``skipped``, ``cancelled`` |
| ``abl.outcome`` | attempt | ``succeeded``, ``rate_limited``, ``failed`` |
| ``abl.attempts``, ``abl.via``, ``abl.replayed`` | item | calls, ``online``/``batch``, replayed |
| ``abl.error.category`` | item, attempt | the classifier's category |
| ``abl.attempt`` | attempt | the attempt's number (1 for the first) |
| ``abl.admission.wait`` | attempt | seconds waited for admission (rate limit, budget) |
| ``abl.rate_limit.scope`` | attempt | the scope that admitted it (adaptive rate control) |
| ``abl.retryable`` | attempt | whether the failure is retried |

**Metrics** (attributes ``gen_ai.provider.name``, ``gen_ai.request.model``, and as named):
``abl.items`` (``abl.outcome``, ``abl.replayed``), ``abl.attempts`` (``abl.outcome``,
``error.type``), ``abl.rate_limits`` (``abl.rate_limit.scope``), ``gen_ai.client.token.usage``
(``gen_ai.token.type``), ``gen_ai.client.operation.duration``, ``abl.cost`` (USD, when
genai-prices knows the model), ``abl.admission.wait``, ``abl.calls.in_flight``, and the
gauges ``abl.scope.limit`` (requests/min) and ``abl.scope.utilisation`` per rate-limit scope.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OpenTelemetry"]


class OpenTelemetry:
    """Emit OpenTelemetry spans and metrics for every item and attempt of a processor.

    Pass it as ``ParallelBatchProcessor(telemetry=OpenTelemetry())``.

    Args:
        tracer_provider: Where spans go; default: the global tracer provider
            (``opentelemetry.trace.set_tracer_provider``).
        meter_provider: Where metrics go; default: the global meter provider.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the ``otel`` extra).
    """

    __slots__ = ("meter_provider", "tracer_provider")

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            msg = (
                "OpenTelemetry needs the opentelemetry-api package: pip install "
                "opentelemetry-api (or this project's otel extra, pip install '.[otel]' in a "
                "checkout)"
            )
            raise ImportError(msg) from None
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider

    def __repr__(self) -> str:
        return (
            f"OpenTelemetry(tracer_provider={self.tracer_provider!r}, "
            f"meter_provider={self.meter_provider!r})"
        )
