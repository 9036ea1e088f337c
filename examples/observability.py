"""See what a batch did: OpenTelemetry traces and metrics, and an HTML run report.

* ``telemetry=OpenTelemetry(...)`` makes the processor emit one ``abl.item`` span per item
  with one ``abl.attempt`` child per call, and metrics (items, calls, 429s, tokens, cost,
  admission wait, each rate-limit scope's limit). Here they go to the OpenTelemetry SDK's
  in-memory exporter and reader so the example can print them; an application would
  configure an OTLP exporter instead (Jaeger, Grafana, Datadog, Logfire read it).
* The pydantic-ai agent is instrumented with the same tracer provider, so its own
  ``chat <model>`` spans appear *inside* our attempt spans: one trace per item.
* ``checkpoint=`` records the run in an SQLite file, including a timeline sampled every
  ``timeline_interval`` seconds; `write_report` turns it into one self-contained HTML file
  (``abl report run.sqlite -o report.html`` does the same from the command line).

The simulator answers the first three calls with a 429 and a 0.2 s retry hint, so those
items are retried, and allows 20 requests per 2-second window (its "minute", shrunk),
which adaptive rate control paces the rest to.

Needs the OpenTelemetry SDK (``pip install opentelemetry-sdk``, in the ``dev`` extra) and
plotly for the report (the ``report`` extra). Runs offline against the provider simulator;
with ``--real`` and ``OPENAI_API_KEY`` set, against the real OpenAI API (60 requests with
gpt-4o-mini).

Run it with ``python examples/observability.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from _provider import endpoint, parse_args
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.capabilities.instrumentation import Instrumentation
from pydantic_ai.models.instrumented import InstrumentationSettings

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig, PydanticAIStrategy
from async_batch_llm.report import load_report, write_report
from async_batch_llm.telemetry import OpenTelemetry
from async_batch_llm.testing.simulator import SimulatorConfig

MODEL = "gpt-4o-mini"
QUESTIONS = 60


def print_trace(spans: list[ReadableSpan], item_id: str) -> None:
    """The spans of one item's trace, indented under their parents."""
    root = next(
        s
        for s in spans
        if s.name == "abl.item" and (s.attributes or {}).get("abl.item.id") == item_id
    )
    assert root.context is not None
    trace = [
        s for s in spans if s.context is not None and s.context.trace_id == root.context.trace_id
    ]
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in trace:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        attributes = span.attributes or {}
        detail = ", ".join(
            f"{key}={attributes[key]!s}"
            for key in ("abl.attempt", "abl.outcome", "gen_ai.usage.input_tokens")
            if key in attributes
        )
        print(f"  {'  ' * depth}{span.name}" + (f" ({detail})" if detail else ""))
        assert span.context is not None
        for child in sorted(
            children.get(span.context.span_id, []), key=lambda s: s.start_time or 0
        ):
            show(child, depth + 1)

    show(root, 0)


def metric_totals(reader: InMemoryMetricReader) -> dict[str, float]:
    data = reader.get_metrics_data()
    totals: dict[str, float] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    # Counters have a value, histograms a sum.
                    value: Any = getattr(point, "value", None)
                    amount = value if value is not None else getattr(point, "sum", 0)
                    totals[metric.name] = totals.get(metric.name, 0.0) + amount
    return totals


async def main(args: argparse.Namespace) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    limits = SimulatorConfig(rpm=20, window_seconds=2.0, latency=(0.02, 0.08), seed=1)
    async with endpoint("openai", real=args.real, simulator=limits) as target:
        print(f"Requests go to {target.describe()}.")
        if target.simulator is not None:
            target.simulator.fail_next(3, status=429, retry_after=0.2)
        agent = Agent(
            target.openai_model(MODEL),
            instructions="Answer in one short sentence.",
            capabilities=[
                Instrumentation(settings=InstrumentationSettings(tracer_provider=tracer_provider))
            ],
        )
        strategy = PydanticAIStrategy(agent)
        config = ProcessorConfig(max_workers=8, timeline_interval=0.5)
        telemetry = OpenTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "questions.sqlite"
            async with ParallelBatchProcessor[str, str, None](
                config=config, checkpoint=state, telemetry=telemetry
            ) as processor:
                for n in range(QUESTIONS):
                    await processor.add_work(
                        LLMWorkItem(item_id=f"q{n}", strategy=strategy, prompt=f"What is {n} + 1?")
                    )
                result = await processor.process_all()

            spans = exporter.get_finished_spans()
            names = Counter(span.name.split(" ")[0] for span in spans)
            print(f"spans: {dict(sorted(names.items()))}")
            retried = next(
                (r.item_id for r in result.results if r.attempts > 1), result.results[0].item_id
            )
            print(f"the trace of {retried}:")
            print_trace(list(spans), retried)
            totals = metric_totals(reader)
            print(
                f"metrics: {totals.get('abl.items', 0):.0f} items, "
                f"{totals.get('abl.attempts', 0):.0f} calls, "
                f"{totals.get('abl.rate_limits', 0):.0f} rate-limited"
            )

            report = load_report(state)
            html = write_report(state, Path(tmp) / "report.html", title="observability example")
            print(
                f"report: {report.total} items, {len(report.timeline)} intervals, "
                f"{report.rate_limited} 429s, latency p50 of {report.latency[0].model}: "
                f"{report.latency[0].p50:.3f} s; {html.name} is "
                f"{html.stat().st_size / 1e6:.1f} MB, self-contained"
            )
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
