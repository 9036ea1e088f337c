"""Per-item cost of ParallelBatchProcessor against a bare asyncio worker loop.

Both sides run the same strategy (it only awaits ``asyncio.sleep(latency)``) over the same
pre-built work items with the same number of workers. The baseline is the least a batch
runner can do: ``workers`` tasks pulling items from one shared iterator, awaiting
``strategy.execute`` and appending ``(item_id, output, usage)`` to a list. The framework
side is ``add_work`` for every item plus ``process_all()`` with default settings (retries,
per-attempt deadline, stats, rate-limit gate — no observers, middleware or callbacks).

Runs alternate between the two sides and the median of each is reported, so a noisy
neighbour slows both. Usage::

    python benchmarks/overhead.py              # both scenarios
    python benchmarks/overhead.py --quick      # fewer items and rounds (smoke test)
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
from dataclasses import dataclass
from typing import Any

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
)


class SleepStrategy(LLMCallStrategy[str]):
    """A stand-in for a provider call: waits ``latency`` seconds, returns fixed usage."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        await asyncio.sleep(self.latency)
        return prompt, {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


Items = Sequence[LLMWorkItem[str, str, None]]


async def bare_loop(items: Items, workers: int) -> int:
    """The baseline: ``workers`` tasks sharing one iterator of items."""
    pending = iter(items)
    results: list[tuple[str, Any, Any]] = []

    async def worker() -> None:
        for item in pending:
            output, usage = await item.strategy.execute(item.prompt, 1, 120.0, None)
            results.append((item.item_id, output, usage))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(results)


async def framework(items: Items, workers: int) -> int:
    """The same work through ``ParallelBatchProcessor``."""
    config = ProcessorConfig(max_workers=workers)
    async with ParallelBatchProcessor[str, str, None](config=config) as processor:
        for item in items:
            await processor.add_work(item)
        result = await processor.process_all()
    if result.succeeded != len(items):
        msg = f"framework run lost items: {result.succeeded}/{len(items)} succeeded"
        raise RuntimeError(msg)
    return result.succeeded


@dataclass
class Scenario:
    name: str
    latency: float
    items: int
    workers: int
    rounds: int


async def _timed(run: Callable[[Items, int], Awaitable[int]], items: Items, workers: int) -> float:
    gc.collect()
    start = time.perf_counter()
    done = await run(items, workers)
    elapsed = time.perf_counter() - start
    assert done == len(items)
    return elapsed


async def measure(scenario: Scenario) -> dict[str, float]:
    """Median seconds of each side over ``rounds`` alternating runs."""
    strategy = SleepStrategy(scenario.latency)
    items = [
        LLMWorkItem[str, str, None](item_id=f"item-{i}", strategy=strategy, prompt=f"prompt {i}")
        for i in range(scenario.items)
    ]
    await _timed(bare_loop, items[:1000], scenario.workers)  # warm-up
    await _timed(framework, items[:1000], scenario.workers)
    bare_times: list[float] = []
    framework_times: list[float] = []
    for _ in range(scenario.rounds):
        bare_times.append(await _timed(bare_loop, items, scenario.workers))
        framework_times.append(await _timed(framework, items, scenario.workers))
    return {"bare": statistics.median(bare_times), "framework": statistics.median(framework_times)}


def report(scenario: Scenario, seconds: dict[str, float]) -> str:
    bare, fw = seconds["bare"], seconds["framework"]
    per_item_bare = bare / scenario.items * 1e6
    per_item_fw = fw / scenario.items * 1e6
    return (
        f"| {scenario.name} | {scenario.items:,} | {scenario.workers} "
        f"| {per_item_bare:.2f} µs ({scenario.items / bare:,.0f}/s) "
        f"| {per_item_fw:.2f} µs ({scenario.items / fw:,.0f}/s) "
        f"| {fw / bare:.2f}x | {bare / fw:.1%} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    rounds = 3 if args.quick else 7
    scenarios = [
        Scenario("zero latency", 0.0, 20_000 // scale, 100, rounds),
        Scenario("5 ms latency", 0.005, 10_000 // scale, 100, max(3, rounds // 2)),
    ]
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(
        "| scenario | items | workers | bare loop per item (throughput) "
        "| framework per item (throughput) | framework / bare time | throughput vs bare |"
    )
    print("|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        print(report(scenario, asyncio.run(measure(scenario))), flush=True)


if __name__ == "__main__":
    main()
