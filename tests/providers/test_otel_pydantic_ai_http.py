"""OpenTelemetry through a real SDK: pydantic-ai's own spans nest under our attempt spans.

pydantic-ai, instrumented with the same tracer provider, opens an ``agent run`` span and a
``chat <model>`` span for each call it makes over HTTP to the simulator; they must be
children of the ``abl.attempt`` span of that call, inside the ``abl.item`` span, so one
trace shows the whole item.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.capabilities.instrumentation import Instrumentation
from pydantic_ai.models.instrumented import InstrumentationSettings

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
)
from async_batch_llm.telemetry import OpenTelemetry
from async_batch_llm.testing.simulator import ProviderSimulator

from .http_support import PydanticAIModelFactory, PydanticAIProvider


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_pydantic_ai_spans_are_children_of_the_attempt_span(
    provider_sim: ProviderSimulator,
    pydantic_ai_model: PydanticAIModelFactory,
    provider: PydanticAIProvider,
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent: Agent[Any, str] = Agent(
        pydantic_ai_model(provider_sim, provider),
        capabilities=[
            Instrumentation(settings=InstrumentationSettings(tracer_provider=tracer_provider))
        ],
    )
    provider_sim.fail_next(1, status=500)  # one retried call: two attempts, two chat spans
    config = ProcessorConfig(
        max_workers=2,
        retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
    )
    async with ParallelBatchProcessor(
        config=config, telemetry=OpenTelemetry(tracer_provider=tracer_provider)
    ) as processor:
        for n in range(3):
            await processor.add_work(
                LLMWorkItem(item_id=f"q{n}", strategy=PydanticAIStrategy(agent), prompt=f"hi {n}")
            )
        result = await processor.process_all()
    assert result.succeeded == 3
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    items = [s for s in spans if s.name == "abl.item"]
    attempts = [s for s in spans if s.name == "abl.attempt"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(items) == 3
    assert len(attempts) == sum(r.attempts for r in result.results) >= 4
    assert chats, [s.name for s in spans]

    def ancestors(span: Any) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    for chat in chats:
        chain = ancestors(chat)
        # chat <model>  <  (agent run)  <  abl.attempt  <  abl.item
        assert "abl.attempt" in chain, chain
        assert chain[-1] == "abl.item", chain
        assert chain.index("abl.attempt") < chain.index("abl.item")
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.attributes["gen_ai.provider.name"]
        assert attempt.attributes["gen_ai.request.model"]
