"""Batch mode against online, on the same items in the same run.

1. **Engine cost** (`--items`, zero latency): the processor's own CPU per item, online
   (a strategy that returns at once) against batch mode (an in-process `BatchAPI` whose
   jobs end at the first check), without and with an SQLite checkpoint. Batch mode
   encodes, groups, records, polls and decodes, then finishes each item through a worker.
2. **Through the SDK** (`--sdk-items`): pydantic-ai's Anthropic model against the bundled
   simulator (no latency, no limits), online against `mode="batch"`: wall time, HTTP
   requests sent, and the cost at online and at batch prices.

The best of `--rounds` runs is reported. Usage::

    python benchmarks/batch_mode.py
    python benchmarks/batch_mode.py --quick     # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.batch import BatchAPI, BatchJob, EncodedRequest, RequestResult

USAGE: TokenUsage = {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}


class InstantBatchAPI(BatchAPI[str]):
    """Jobs that end at their first check, with every request answered."""

    provider = "bench"
    model = "bench-model"
    group = "bench"
    max_requests = 10_000

    def __init__(self) -> None:
        self._jobs: dict[str, list[EncodedRequest]] = {}

    async def encode(self, custom_id: str, prompt: str) -> EncodedRequest:
        return EncodedRequest(custom_id, len(prompt), prompt)

    async def submit(self, requests: Sequence[EncodedRequest]) -> BatchJob:
        job_id = f"job-{len(self._jobs)}"
        self._jobs[job_id] = list(requests)
        return BatchJob(job_id, "bench", "bench-model", "bench", "in_progress", len(requests), 0.0)

    async def refresh(self, job: BatchJob) -> BatchJob:
        job.state = "ended"
        return job

    async def results(self, job: BatchJob) -> list[RequestResult]:
        return [RequestResult(r.custom_id, "succeeded", r.body) for r in self._jobs[job.id]]

    async def cancel(self, job: BatchJob) -> BatchJob:
        return job

    def decode(self, result: RequestResult, prompt: str) -> tuple[str, TokenUsage]:
        return f"answer to {prompt}", dict(USAGE)  # type: ignore[return-value]


class InstantStrategy(LLMCallStrategy[str]):
    def __init__(self) -> None:
        self._api = InstantBatchAPI()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return f"answer to {prompt}", dict(USAGE)  # type: ignore[return-value]

    def batch_api(self) -> BatchAPI[str]:
        return self._api


async def engine_run(count: int, mode: str, checkpoint: Path | None) -> float:
    strategy = InstantStrategy()
    config = ProcessorConfig(
        max_workers=100,
        mode=mode,
        batch_poll_interval=0.001,  # type: ignore[arg-type]
    )
    processor = ParallelBatchProcessor[str, str, None](config=config, checkpoint=checkpoint)
    items = (LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"p{n}") for n in range(count))
    start = time.perf_counter()
    done = 0
    async with processor:
        async for result in processor.stream(items):
            done += result.success
    elapsed = time.perf_counter() - start
    assert done == count, (done, count)
    return elapsed


async def sdk_run(count: int, mode: str) -> tuple[float, int, Decimal, Decimal]:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    from async_batch_llm import PydanticAIStrategy
    from async_batch_llm.pricing import Pricer
    from async_batch_llm.testing.simulator import ProviderSimulator

    async with ProviderSimulator() as sim:
        provider = AnthropicProvider(base_url=sim.anthropic_base_url, api_key="k")
        agent = Agent(AnthropicModel("claude-haiku-4-5", provider=provider))
        strategy = PydanticAIStrategy(agent)
        config = ProcessorConfig(max_workers=32, mode=mode, batch_poll_interval=0.01)  # type: ignore[arg-type]
        processor = ParallelBatchProcessor[str, str, None](config=config)
        items = [
            LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"Question {n}")
            for n in range(count)
        ]
        start = time.perf_counter()
        async with agent, processor:
            results = [r async for r in processor.stream(items)]
        elapsed = time.perf_counter() - start
        requests = sim.stats.requests_total
    assert sum(r.success for r in results) == count
    online, batch = (
        Pricer("anthropic:claude-haiku-4-5"),
        Pricer("anthropic:claude-haiku-4-5", batch=True),
    )
    online_cost = sum((online.price(r.token_usage) or Decimal(0)) for r in results)
    batch_cost = sum((batch.price(r.token_usage) or Decimal(0)) for r in results)
    return elapsed, requests, online_cost, batch_cost


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--sdk-items", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.items, args.sdk_items, args.rounds = args.items // 10, args.sdk_items // 10, 1
    print(f"Python {sys.version.split()[0]} on {platform.machine()}; best of {args.rounds}")

    print(f"\n1. engine cost, {args.items:,} items, zero latency, 100 workers")
    with tempfile.TemporaryDirectory() as directory:
        for label, use_checkpoint in (("no checkpoint", False), ("SQLite checkpoint", True)):
            best: dict[str, float] = {}
            for mode in ("online", "batch"):
                times = []
                for round_number in range(args.rounds):
                    path = Path(directory) / f"{mode}-{use_checkpoint}-{round_number}.sqlite"
                    times.append(
                        await engine_run(args.items, mode, path if use_checkpoint else None)
                    )
                best[mode] = min(times)
            online_us = best["online"] / args.items * 1e6
            batch_us = best["batch"] / args.items * 1e6
            print(
                f"   {label:>17}: online {online_us:6.1f} us/item, batch {batch_us:6.1f} us/item "
                f"({batch_us / online_us:.2f}x online)"
            )

    print(f"\n2. through the anthropic SDK (pydantic-ai), {args.sdk_items:,} items, simulator")
    rows = {}
    for mode in ("online", "batch"):
        rows[mode] = min(
            [await sdk_run(args.sdk_items, mode) for _ in range(args.rounds)], key=lambda r: r[0]
        )
    for mode, (elapsed, requests, online_cost, batch_cost) in rows.items():
        cost = batch_cost if mode == "batch" else online_cost
        print(f"   {mode:>6}: {elapsed:6.2f} s, {requests:,} HTTP requests, cost ${cost:.4f}")
    online_cost = rows["online"][2]
    print(
        f"   batch/online: {rows['batch'][0] / rows['online'][0]:.2f}x the wall time, "
        f"{rows['batch'][1] / rows['online'][1]:.4f}x the requests, "
        f"{rows['batch'][3] / online_cost:.2f}x the cost"
    )


if __name__ == "__main__":
    asyncio.run(main())
