"""Provider batch mode: the same batch through Anthropic's Message Batches, at batch prices.

* ``ProcessorConfig(mode="batch")`` sends the items as requests of one provider batch job
  (pydantic-ai's batch support, on the anthropic SDK's ``messages.batches``), polls it, and
  yields each result when the job ends, with ``via == "batch"``.
* The first run is stopped while its job is pending. The job was recorded in the
  checkpoint before the run waited for it, so the second run polls the same job instead of
  submitting (and paying for) the requests again: the simulator counts one submission.
* ``mode="auto"`` then runs a batch whose job fails some requests: those run online, the
  rest come from the job.
* Cost is priced at batch rates; the summary says what batch mode saved.

Runs offline against the provider simulator, whose jobs take a second here (a real one
can take up to a day).

Run it with ``python examples/batch_mode.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.providers.anthropic import AnthropicProvider

from async_batch_llm import (
    BaseObserver,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
)
from async_batch_llm.pricing import Pricer
from async_batch_llm.testing.simulator import (
    ProviderRequest,
    ProviderSimulator,
    RawReply,
    SimulatorConfig,
)

MODEL = "claude-haiku-4-5"
PRICED_AS = f"anthropic:{MODEL}"
REVIEWS = 30
config = ProcessorConfig(mode="batch", batch_poll_interval=0.2, batch_max_poll_interval=0.5)


#: The jobs seen so far, numbered in order (provider job ids differ from run to run).
JOBS: dict[str, int] = {}


class JobLog(BaseObserver):
    """Prints each batch job's changes, and sets `submitted` when the first one is."""

    def __init__(self) -> None:
        self.submitted = asyncio.Event()
        self.seen: set[str] = set()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is not ProcessingEvent.BATCH_JOB_UPDATED:
            return
        job_id = data["job_id"]
        how = data["provider_status"]
        if job_id not in self.seen and data["resumed"]:
            how = "resumed from the checkpoint"
        self.seen.add(job_id)
        number = JOBS.setdefault(job_id, len(JOBS) + 1)
        print(f"  job {number}: {how}, {data['request_count']} requests")
        self.submitted.set()


def reviews(strategy: PydanticAIStrategy[str]) -> list[LLMWorkItem[str, str, None]]:
    return [
        LLMWorkItem(item_id=f"review-{n}", strategy=strategy, prompt=f"Review #{n}: works well.")
        for n in range(REVIEWS)
    ]


async def stopped_then_resumed(agent: Agent[None, str], checkpoint: Path) -> list[Any]:
    log = JobLog()
    processor = ParallelBatchProcessor[str, str, None](
        config=config, checkpoint=checkpoint, observers=[log]
    )

    async def first_run() -> None:
        async with processor:
            async for _ in processor.stream(reviews(PydanticAIStrategy(agent))):
                pass

    print("first run (stopped while its job is pending):")
    task = asyncio.create_task(first_run())
    await log.submitted.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    print("second run (same checkpoint):")
    results = []
    rerun = ParallelBatchProcessor[str, str, None](
        config=config, checkpoint=checkpoint, observers=[JobLog()]
    )
    async with rerun:
        async for result in rerun.stream(reviews(PydanticAIStrategy(agent))):
            results.append(result)
    return results


async def auto_mode(agent: Agent[None, str]) -> list[Any]:
    print("auto mode (the job fails 3 requests; they run online):")
    processor = ParallelBatchProcessor[str, str, None](
        config=ProcessorConfig(mode="auto", batch_poll_interval=0.2), observers=[JobLog()]
    )
    async with processor:
        return [r async for r in processor.stream(reviews(PydanticAIStrategy(agent))[:10])]


class FailThree:
    """The simulator's reply hook: once armed, batch requests for reviews 1-3 fail."""

    armed = False

    def __call__(self, request: ProviderRequest) -> RawReply | None:
        failing = request.prompt.startswith(("Review #1:", "Review #2:", "Review #3:"))
        if self.armed and request.batch_id is not None and failing:
            return RawReply(status=500, body={"type": "error", "error": {"type": "api_error"}})
        return None


async def main() -> None:
    simulator_config = SimulatorConfig(batch_latency=1.0)
    fail_three = FailThree()
    async with ProviderSimulator(simulator_config, reply=fail_three) as sim:
        provider = AnthropicProvider(base_url=sim.anthropic_base_url, api_key="sk-ant-simulated")
        agent = Agent(AnthropicModel(MODEL, provider=provider), instructions="One word.")
        async with agent:
            with tempfile.TemporaryDirectory() as directory:
                results = await stopped_then_resumed(agent, Path(directory) / "run.sqlite")
            fail_three.armed = True
            auto = await auto_mode(agent)
        submitted = sim.stats.batch_jobs_created["anthropic"]

    from_batch = [r for r in results if r.via == "batch"]
    print(f"resumed run: {len(from_batch)} of {len(results)} results from the batch job")
    print(f"batch jobs submitted: {submitted} (the stopped run's, collected by the rerun; auto's)")
    by_route = {"batch": 0, "online": 0}
    for result in auto:
        by_route[result.via] += 1
    print(f"auto mode: {by_route['batch']} from the job, {by_route['online']} online")

    batch_price, online_price = Pricer(PRICED_AS, batch=True), Pricer(PRICED_AS)
    paid = sum((batch_price.price(r.token_usage) or Decimal(0)) for r in from_batch)
    online = sum((online_price.price(r.token_usage) or Decimal(0)) for r in from_batch)
    print(f"cost at batch prices: ${paid:.6f} (online: ${online:.6f}, saved ${online - paid:.6f})")
    everything = [*results, *auto]
    succeeded = sum(r.success for r in everything)
    print(f"{succeeded} succeeded, {len(everything) - succeeded} failed")


if __name__ == "__main__":
    asyncio.run(main())
