"""OpenTelemetry: one item span per item, one attempt span per call, the metrics, and
nothing at all unless the processor was given ``telemetry=``.

Spans are read back with the OpenTelemetry SDK's in-memory exporter, metrics with its
in-memory reader, from providers passed to `OpenTelemetry` (the global ones are only
touched in a subprocess, see `test_nothing_is_emitted_without_telemetry`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
)
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, RateScope
from async_batch_llm.telemetry import OpenTelemetry

SDK_TRACER = "a-provider-sdk"


class TooManyRequests(Exception):
    """What a provider SDK raises for a 429 (the default classifier reads the message)."""


class Telemetry:
    """In-memory span exporter and metric reader behind one `OpenTelemetry`."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = OpenTelemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: Any) -> float:
        points = self.metrics().get(name, [])
        return sum(
            getattr(point, "value", None) if hasattr(point, "value") else point.sum
            for point in points
            if all(point.attributes.get(key) == value for key, value in attributes.items())
        )


@pytest.fixture
def otel() -> Telemetry:
    return Telemetry()


class Scripted(LLMCallStrategy[str]):
    """Per prompt: ``fail`` fails once then succeeds, ``limit`` is rate limited once,
    ``bad`` fails permanently; every call opens a span of "the SDK" inside `execute`."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer(SDK_TRACER, tracer_provider=tracer_provider)

    def rate_limit_scope(self) -> RateScope:
        return RateScope("openai", "k1", "gpt-4o-mini")

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, dict[str, int]]:
        with self.tracer.start_as_current_span("sdk.request"):
            await asyncio.sleep(0)
            if prompt.startswith("fail") and attempt == 1:
                raise ConnectionError("connection reset")
            if prompt.startswith("limit") and attempt == 1:
                raise TooManyRequests("429 Too Many Requests")
            if prompt.startswith("bad"):
                raise ValueError("the item is malformed")
        return prompt.upper(), {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}


def _config(**overrides: Any) -> ProcessorConfig:
    return ProcessorConfig(
        max_workers=4,
        retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
        **overrides,
    )


def _items(strategy: LLMCallStrategy[str], prompts: list[str]) -> list[LLMWorkItem[Any, Any, Any]]:
    return [LLMWorkItem(item_id=f"id-{p}", strategy=strategy, prompt=p) for p in prompts]


PROMPTS = ["ok1", "ok2", "fail1", "limit1", "bad1", "ok3"]


async def _run(otel: Telemetry, prompts: list[str] = PROMPTS, **kwargs: Any) -> Any:
    strategy = Scripted(otel.tracer_provider)
    rate = AdaptiveRateLimitStrategy(rpm=60_000)
    async with ParallelBatchProcessor(
        config=_config(), telemetry=otel.telemetry, rate_limit_strategy=rate, **kwargs
    ) as processor:
        for item in _items(strategy, prompts):
            await processor.add_work(item)
        return await processor.process_all()


async def test_one_item_span_per_item_and_one_attempt_span_per_call(otel: Telemetry) -> None:
    result = await _run(otel)
    items = {span.attributes["abl.item.id"]: span for span in otel.spans("abl.item")}
    assert sorted(items) == sorted(f"id-{p}" for p in PROMPTS)
    attempts = otel.spans("abl.attempt")
    by_parent = Counter(span.parent.span_id for span in attempts if span.parent)
    for outcome in result.results:
        span = items[outcome.item_id]
        # Every attempt span is a child of its item's span, one per call made.
        assert by_parent[span.context.span_id] == outcome.attempts
        assert span.parent is None  # a root: no ambient span in the test
        assert span.attributes["abl.attempts"] == outcome.attempts
        assert span.attributes["abl.outcome"] == ("succeeded" if outcome.success else "failed")
        assert span.attributes["gen_ai.provider.name"] == "openai"
        assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert span.attributes["abl.replayed"] is False
    assert len(attempts) == sum(outcome.attempts for outcome in result.results)
    # The retry and the rate limit are visible on the attempt spans.
    fail = [s for s in attempts if s.attributes["abl.item.id"] == "id-fail1"]
    assert sorted(s.attributes["abl.attempt"] for s in fail) == [1, 2]
    first = next(s for s in fail if s.attributes["abl.attempt"] == 1)
    assert first.attributes["abl.outcome"] == "failed"
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.attributes["abl.retryable"] is True
    assert first.status.status_code is StatusCode.ERROR
    limited = [s for s in attempts if s.attributes["abl.item.id"] == "id-limit1"]
    assert [s.attributes["abl.outcome"] for s in limited] == ["rate_limited", "succeeded"]
    assert all(s.attributes["abl.rate_limit.scope"] == "openai/k1/gpt-4o-mini" for s in limited)
    assert all("abl.admission.wait" in s.attributes for s in attempts)
    bad = items["id-bad1"]
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.attributes["error.type"] == "ValueError"
    assert bad.attributes["abl.error.category"] == "logic_error"
    ok = next(s for s in attempts if s.attributes["abl.item.id"] == "id-ok1")
    assert ok.attributes["gen_ai.usage.input_tokens"] == 100
    assert ok.attributes["gen_ai.usage.output_tokens"] == 10


async def test_spans_the_sdk_opens_inside_the_call_are_children_of_the_attempt(
    otel: Telemetry,
) -> None:
    await _run(otel)
    attempts = {span.context.span_id: span for span in otel.spans("abl.attempt")}
    sdk_spans = otel.spans("sdk.request")
    assert len(sdk_spans) == len(attempts)
    for span in sdk_spans:
        assert span.parent is not None
        parent = attempts[span.parent.span_id]
        assert span.context.trace_id == parent.context.trace_id


async def test_the_metrics_count_items_attempts_rate_limits_tokens_and_scopes(
    otel: Telemetry,
) -> None:
    result = await _run(otel)
    assert otel.total("abl.items") == len(PROMPTS)
    assert otel.total("abl.items", **{"abl.outcome": "failed"}) == 1
    assert otel.total("abl.attempts") == sum(r.attempts for r in result.results)
    assert otel.total("abl.attempts", **{"abl.outcome": "rate_limited"}) == 1
    assert otel.total("abl.rate_limits") == 1
    succeeded_calls = sum(1 for r in result.results if r.success)
    assert otel.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == (
        100 * succeeded_calls
    )
    assert otel.total("abl.calls.in_flight") == 0  # every call that started, ended
    assert otel.total("gen_ai.client.operation.duration") > 0
    assert otel.total("abl.cost") > 0  # genai-prices knows gpt-4o-mini
    limits = otel.metrics()["abl.scope.limit"]
    # The configured limit, lowered once by the 429 (the limit in force is reported).
    assert len(limits) == 1
    assert 0 < limits[0].value < 60_000
    assert limits[0].attributes["abl.rate_limit.scope"] == "openai/k1/gpt-4o-mini"
    assert "abl.scope.utilisation" in otel.metrics()


async def test_replayed_results_get_a_replayed_item_span_and_no_attempt() -> None:
    store = MemoryCheckpointStore()
    first = Telemetry()
    await _run(first, checkpoint=store)
    second = Telemetry()
    result = await _run(second, checkpoint=store)
    replayed = [r for r in result.results if r.replayed]
    assert len(replayed) == len(PROMPTS) - 1  # the failure runs again
    spans = second.spans("abl.item")
    assert sum(1 for s in spans if s.attributes["abl.replayed"]) == len(replayed)
    assert [s.attributes["abl.item.id"] for s in second.spans("abl.attempt")] == ["id-bad1"]
    assert second.total("abl.items", **{"abl.replayed": True}) == len(replayed)


async def test_a_cancelled_batch_ends_every_span_it_started(otel: Telemetry) -> None:
    started = asyncio.Event()

    class Hanging(LLMCallStrategy[str]):
        async def execute(self, prompt: str, attempt: int, timeout: float, state: Any = None):
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async with ParallelBatchProcessor(config=_config(), telemetry=otel.telemetry) as processor:
        for item in _items(Hanging(), ["a", "b", "c"]):
            await processor.add_work(item)
        task = asyncio.ensure_future(processor.process_all())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    items = otel.spans("abl.item")
    attempts = otel.spans("abl.attempt")
    assert attempts, "the calls in flight had spans"
    assert {s.attributes["abl.outcome"] for s in items} <= {"cancelled"}
    assert len(items) == len(attempts)  # each started item span ended, with its attempt
    assert otel.total("abl.calls.in_flight") == 0
    # The context was restored: nothing left current in this task.
    assert not trace.get_current_span().get_span_context().is_valid


async def test_the_item_spans_are_children_of_the_span_around_the_batch(otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("nightly job") as outer:
        await _run(otel, ["ok1", "ok2"])
    for span in otel.spans("abl.item"):
        assert span.parent is not None
        assert span.parent.span_id == outer.get_span_context().span_id


def test_telemetry_must_be_an_opentelemetry_object() -> None:
    with pytest.raises(TypeError, match=r"telemetry must be an async_batch_llm\.telemetry"):
        ParallelBatchProcessor(telemetry=True)  # type: ignore[arg-type]


def test_without_telemetry_the_attempt_path_has_no_instruments() -> None:
    processor: ParallelBatchProcessor[Any, Any, Any] = ParallelBatchProcessor()
    assert processor._runner.instruments is None
    assert processor._runner.entry_point() == processor._runner.run


_GLOBAL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from async_batch_llm import LLMWorkItem, ParallelBatchProcessor
    from async_batch_llm.testing import MockAgent
    from async_batch_llm.llm_strategies import PydanticAIStrategy
    from async_batch_llm.telemetry import OpenTelemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    async def main(telemetry):
        strategy = PydanticAIStrategy(MockAgent(response_factory=lambda p: p))
        async with ParallelBatchProcessor(telemetry=telemetry) as processor:
            for n in range(5):
                await processor.add_work(LLMWorkItem(item_id=str(n), strategy=strategy, prompt="p"))
            await processor.process_all()

    enabled = sys.argv[1] == "on"
    asyncio.run(main(OpenTelemetry() if enabled else None))
    data = reader.get_metrics_data()
    names = sorted(
        m.name
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics
        for m in s.metrics
    )
    print(json.dumps({"spans": len(exporter.get_finished_spans()), "metrics": names}))
    """
)


@pytest.mark.parametrize("enabled", ["off", "on"])
def test_nothing_is_emitted_without_telemetry_even_with_a_global_sdk(enabled: str) -> None:
    """The application configured the global SDK; only ``telemetry=`` makes us use it."""
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_SCRIPT, enabled],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if enabled == "off":
        assert seen == {"spans": 0, "metrics": []}
    else:
        assert seen["spans"] == 5 + 5  # items and attempts, through the global provider
        assert "abl.items" in seen["metrics"]


async def test_the_time_a_call_waited_for_admission_is_on_its_span_and_in_the_timeline(
    otel: Telemetry,
) -> None:
    """A 429 with a 0.2 s retry hint pauses the scope: the retry waits that long."""

    class Hinted(TooManyRequests):
        retry_after = 0.2

    class PausedOnce(Scripted):
        async def execute(self, prompt: str, attempt: int, timeout: float, state: Any = None):
            if prompt == "first" and attempt == 1:
                raise Hinted("429 Too Many Requests")
            return await super().execute(prompt, attempt, timeout, state)

    store = MemoryCheckpointStore()
    config = _config(timeline_interval=60.0)
    async with ParallelBatchProcessor(
        config=config, telemetry=otel.telemetry, checkpoint=store
    ) as processor:
        for item in _items(PausedOnce(otel.tracer_provider), ["first"]):
            await processor.add_work(item)
        await processor.process_all()
    waits = {
        s.attributes["abl.attempt"]: s.attributes["abl.admission.wait"]
        for s in otel.spans("abl.attempt")
    }
    assert waits[1] < 0.05  # admitted at once
    assert 0.15 < waits[2] < 2.0  # waited out the pause
    from async_batch_llm._internal.timeline import read_timeline

    (point,) = read_timeline(store.meta).points
    assert point.admission_wait == pytest.approx((waits[1] + waits[2]) / 2, rel=0.05)
