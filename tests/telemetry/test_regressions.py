"""One test per defect an adversarial review of the observability work found."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig, RetryConfig
from async_batch_llm._internal.timeline import read_timeline
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, RateScope
from async_batch_llm.telemetry import OpenTelemetry

USAGE = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}


class Gated(LLMCallStrategy[str]):
    """Every call waits for `gate`; counts the calls waiting."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expected = 0

    def rate_limit_scope(self) -> RateScope:
        return RateScope("openai", "k", "gpt-4o-mini")

    async def execute(self, prompt: str, attempt: int, timeout: float, state: Any = None):
        self.waiting += 1
        if self.waiting == self.expected:
            self.all_waiting.set()
        await self.gate.wait()
        return prompt, dict(USAGE)


def _in_flight(reader: InMemoryMetricReader) -> list[float]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "abl.calls.in_flight"
        for point in metric.data.data_points
    ]


async def test_processors_sharing_a_meter_provider_all_report_their_calls_in_flight() -> None:
    reader = InMemoryMetricReader()
    telemetry = OpenTelemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    first: ParallelBatchProcessor[Any, Any, Any] = ParallelBatchProcessor(telemetry=telemetry)
    second: ParallelBatchProcessor[Any, Any, Any] = ParallelBatchProcessor(
        config=ProcessorConfig(max_workers=4), telemetry=telemetry
    )
    async with first, second:
        strategy = Gated()
        strategy.expected = 4
        for n in range(4):
            await second.add_work(LLMWorkItem(item_id=str(n), strategy=strategy, prompt="p"))
        run = asyncio.ensure_future(second.process_all())
        await strategy.all_waiting.wait()
        # The second processor's calls are seen, though the first registered the gauges.
        assert sum(_in_flight(reader)) == 4
        strategy.gate.set()
        await run
    assert sum(_in_flight(reader)) == 0


async def test_a_finished_processor_and_its_strategies_are_not_kept_alive() -> None:
    reader = InMemoryMetricReader()
    telemetry = OpenTelemetry(meter_provider=MeterProvider(metric_readers=[reader]))

    async def run(**options: Any) -> tuple[weakref.ref[Any], weakref.ref[Any]]:
        strategy = Gated()
        strategy.gate.set()
        processor: ParallelBatchProcessor[Any, Any, Any] = ParallelBatchProcessor(**options)
        async with processor:
            items = [LLMWorkItem(item_id="a", strategy=strategy, prompt="p")]
            [result async for result in processor.stream(items)]
        return weakref.ref(processor), weakref.ref(strategy)

    for options in ({"telemetry": telemetry}, {"checkpoint": MemoryCheckpointStore()}):
        processor, strategy = await run(**options)
        gc.collect()
        assert processor() is None, options
        assert strategy() is None, options
    reader.get_metrics_data()  # the observed instruments cope with the processor gone


async def test_a_second_run_of_a_processor_reports_the_rate_its_scope_achieved() -> None:
    """The rate controller's counts span runs; each run's timeline starts from its own."""
    store = MemoryCheckpointStore()
    strategy = Gated()
    strategy.gate.set()
    config = ProcessorConfig(max_workers=4, timeline_interval=0.01)
    rate = AdaptiveRateLimitStrategy(rpm=600_000)
    async with ParallelBatchProcessor(
        config=config, checkpoint=store, rate_limit_strategy=rate
    ) as processor:
        for session, count in ((1, 30), (2, 3)):
            items = (
                LLMWorkItem(item_id=f"{session}-{n}", strategy=strategy, prompt="p")
                for n in range(count)
            )
            [result async for result in processor.stream(items)]
    data = read_timeline(store.meta)
    for session, count in ((1, 30), (2, 3)):
        times = {p.at: p.seconds for p in data.points if p.session == session}
        admitted = sum(s.achieved_rpm * times[s.at] / 60 for s in data.scopes if s.at in times)
        assert round(admitted) == count


async def test_drained_items_are_interrupted_in_the_timeline_not_failed() -> None:
    store = MemoryCheckpointStore()
    strategy = Gated()
    strategy.expected = 2
    config = ProcessorConfig(max_workers=2, timeline_interval=60.0)
    async with ParallelBatchProcessor(config=config, checkpoint=store) as processor:
        for n in range(10):
            await processor.add_work(LLMWorkItem(item_id=str(n), strategy=strategy, prompt="p"))
        run = asyncio.ensure_future(processor.process_all())
        await strategy.all_waiting.wait()
        processor.drain()
        strategy.gate.set()
        result = await run
    assert result.succeeded == 2
    (point,) = read_timeline(store.meta).points
    assert (point.succeeded, point.failed, point.interrupted) == (2, 0, 8)
    # The slowest items are items that made a call.
    assert {row.item_id for row in read_timeline(store.meta).slowest} <= {"0", "1"}


class BrokenMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class RaisesBroken(LLMCallStrategy[str]):
    async def execute(self, prompt: str, attempt: int, timeout: float, state: Any = None):
        raise BrokenMessage


async def test_telemetry_never_changes_how_an_item_ends() -> None:
    """An exception whose message cannot be formatted made recording the span raise, and
    the item ended in the pool's defect result instead of its own failure."""

    async def run(telemetry: OpenTelemetry | None) -> Any:
        config = ProcessorConfig(retry=RetryConfig(max_attempts=1))
        async with ParallelBatchProcessor(config=config, telemetry=telemetry) as processor:
            await processor.add_work(LLMWorkItem(item_id="a", strategy=RaisesBroken(), prompt="p"))
            (outcome,) = (await processor.process_all()).results
        return outcome

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with_telemetry = await run(OpenTelemetry(tracer_provider=provider))
    without = await run(None)
    assert (with_telemetry.error, with_telemetry.error_category, with_telemetry.attempts) == (
        without.error,
        without.error_category,
        without.attempts,
    )
    assert with_telemetry.attempts == 1
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"abl.item", "abl.attempt"}
    assert spans["abl.item"].attributes["abl.outcome"] == "failed"
    assert spans["abl.attempt"].attributes["abl.outcome"] == "failed"
    assert spans["abl.attempt"].attributes["error.type"] == "BrokenMessage"


_PRICES_OFF_THE_LOOP = """
import asyncio, sys, threading
from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.llm_strategies import LLMCallStrategy

assert "genai_prices" not in sys.modules
importers = []
real_import = __import__

def spying_import(name, *args, **kwargs):
    if name == "genai_prices" and "genai_prices" not in sys.modules:
        importers.append(threading.current_thread().name)
    return real_import(name, *args, **kwargs)

__builtins__.__import__ = spying_import

class Echo(LLMCallStrategy[str]):
    async def execute(self, prompt, attempt, timeout, state=None):
        # The loader started with the run's timeline; a run lasts longer than it.
        from async_batch_llm._internal import instruments
        loader = instruments._price_loader
        if loader is None:
            raise ValueError("the run did not start loading the prices")
        await asyncio.to_thread(loader.join)
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

async def main():
    config = ProcessorConfig(max_workers=2, timeline_interval=60.0)
    async with ParallelBatchProcessor(config=config, checkpoint=MemoryCheckpointStore()) as p:
        items = (LLMWorkItem(item_id=f"i{k}", strategy=Echo(), prompt="p") for k in range(3))
        return [r async for r in p.stream(items)]

print(sum(r.success for r in asyncio.run(main())), importers)
"""


def test_the_price_data_is_loaded_beside_the_event_loop_not_on_it() -> None:
    """Importing genai-prices takes about half a second; on the loop, the first timeline
    interval (or cost metric) stalled every call in flight for that long."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PRICES_OFF_THE_LOOP],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == ["3", "['async-batch-llm-prices']\n"]
