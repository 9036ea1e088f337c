"""What observability costs per item: OpenTelemetry and the checkpoint's timeline.

The same items and zero-latency strategy as ``overhead.py``, run through
`ParallelBatchProcessor` several ways, alternating, median of each:

- **bare loop** — `overhead.bare_loop`, the baseline every ratio is against;
- **no telemetry** — ``process_all()`` with the defaults (what ``overhead.py`` measures);
- **otel, API only** — ``telemetry=OpenTelemetry()`` with no SDK installed as the global
  provider: the API's no-op tracer and meter (what an application that has not configured
  OpenTelemetry pays for leaving ``telemetry=`` on);
- **otel, SDK** — the OpenTelemetry SDK with a span processor that drops every span and a
  metric reader that is never read: the cost of producing the spans and metrics, without
  any exporter's;
- **checkpoint, no timeline** / **checkpoint + timeline** — a `MemoryCheckpointStore`, with
  ``timeline_interval=None`` and with the default (every 2 s).

Usage::

    python benchmarks/telemetry.py            # 20,000 items, 7 rounds
    python benchmarks/telemetry.py --quick    # fewer items and rounds (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import Items, SleepStrategy, bare_loop

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.telemetry import OpenTelemetry

WORKERS = 100
Run = Callable[[Items], Awaitable[int]]


def _sdk_telemetry() -> OpenTelemetry:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Dropping(SpanProcessor):
        """Receives every span and keeps none (no exporter's cost in the numbers)."""

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(Dropping())
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return OpenTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)


def _processor_run(**options: Any) -> Run:
    timeline = options.pop("timeline", "default")

    async def run(items: Items) -> int:
        config = ProcessorConfig(max_workers=WORKERS)
        if timeline is None:
            config.timeline_interval = None
        extra = dict(options)
        if "checkpoint" in extra:
            extra["checkpoint"] = MemoryCheckpointStore()
        async with ParallelBatchProcessor[str, str, None](config=config, **extra) as processor:
            for item in items:
                await processor.add_work(item)
            result = await processor.process_all()
        if result.succeeded != len(items):
            msg = f"lost items: {result.succeeded}/{len(items)} succeeded"
            raise RuntimeError(msg)
        return result.succeeded

    return run


async def _bare(items: Items) -> int:
    return await bare_loop(items, WORKERS)


async def _timed(run: Run, items: Items) -> float:
    gc.collect()
    start = time.perf_counter()
    done = await run(items)
    elapsed = time.perf_counter() - start
    assert done == len(items)
    return elapsed


def sides() -> dict[str, Run]:
    return {
        "bare loop": _bare,
        "no telemetry": _processor_run(),
        "otel, API only": _processor_run(telemetry=OpenTelemetry()),
        "otel, SDK": _processor_run(telemetry=_sdk_telemetry()),
        "checkpoint, no timeline": _processor_run(checkpoint=True, timeline=None),
        "checkpoint + timeline": _processor_run(checkpoint=True),
    }


async def measure(count: int, rounds: int) -> dict[str, float]:
    strategy = SleepStrategy(0.0)
    items = [
        LLMWorkItem[str, str, None](item_id=f"item-{i}", strategy=strategy, prompt=f"prompt {i}")
        for i in range(count)
    ]
    runs = sides()
    for run in runs.values():
        await _timed(run, items[:1000])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(await _timed(run, items))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds")
    args = parser.parse_args(argv)
    count = 2_000 if args.quick else 20_000
    rounds = 3 if args.quick else 7
    seconds = asyncio.run(measure(count, rounds))
    bare = seconds["bare loop"]
    plain = seconds["no telemetry"]
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"{count:,} items, zero latency, {WORKERS} workers, median of {rounds} rounds")
    print("| run | per item | vs bare loop | added per item vs no telemetry |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        added = "" if name == "bare loop" else f"{(value - plain) / count * 1e6:+.2f} µs"
        print(
            f"| {name} | {value / count * 1e6:.2f} µs | {value / bare:.2f}x | {added} |",
            flush=True,
        )
    no_timeline = seconds["checkpoint, no timeline"]
    timeline = seconds["checkpoint + timeline"]
    print(f"timeline on a checkpointed run: {(timeline - no_timeline) / count * 1e6:+.2f} µs/item")


if __name__ == "__main__":
    main()
