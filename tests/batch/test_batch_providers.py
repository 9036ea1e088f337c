"""Batch mode through the real SDK clients, over HTTP, against the bundled simulator.

pydantic-ai's models (OpenAI Responses, Anthropic, Google) drive the openai, anthropic and
google-genai batch endpoints; `GeminiStrategy` drives google-genai's inline batches. The
simulator's clock is a manual one: a job ends when the test moves it, so "pending" is a
state the test controls, not a race.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BaseObserver,
    GeminiModel,
    GeminiStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
)
from async_batch_llm.cli._model import HTTPStatusClassifier
from async_batch_llm.models import gemini_client
from async_batch_llm.testing.simulator import (
    ProviderRequest,
    ProviderSimulator,
    RawReply,
    SimulatorConfig,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning"
)

PROVIDERS = ["openai", "anthropic", "google"]
SIM_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}


class ManualClock:
    """The simulator's clock: batch jobs progress only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StartSimulator = Callable[..., Awaitable[ProviderSimulator]]
MakeModel = Callable[[str, ProviderSimulator], Awaitable[Any]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def start_simulator(clock: ManualClock, stack: contextlib.AsyncExitStack) -> StartSimulator:
    async def start(**options: Any) -> ProviderSimulator:
        reply = options.pop("reply", None)
        config = SimulatorConfig(clock=clock, **options)
        return await stack.enter_async_context(ProviderSimulator(config, reply=reply))

    return start


@pytest.fixture
def make_model(stack: contextlib.AsyncExitStack) -> MakeModel:
    """A pydantic-ai model on the simulator, whose HTTP client closes with the test."""

    async def make(provider: str, sim: ProviderSimulator) -> Any:
        return await stack.enter_async_context(model_for(provider, sim))

    return make


def model_for(provider: str, sim: ProviderSimulator) -> Any:
    if provider == "openai":
        return OpenAIResponsesModel(
            "gpt-4o-mini", provider=OpenAIProvider(base_url=sim.openai_base_url, api_key="k")
        )
    if provider == "anthropic":
        return AnthropicModel(
            "claude-haiku-4-5",
            provider=AnthropicProvider(base_url=sim.anthropic_base_url, api_key="k"),
        )
    return GoogleModel(
        "gemini-2.5-flash", provider=GoogleProvider(base_url=sim.gemini_base_url, api_key="k")
    )


def config(**overrides: Any) -> ProcessorConfig:
    overrides.setdefault("batch_poll_interval", 0.01)
    overrides.setdefault("batch_max_poll_interval", 0.02)
    overrides.setdefault("max_workers", 4)
    overrides.setdefault(
        "retry", RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.002, jitter=False)
    )
    return ProcessorConfig(**overrides)


def items(strategy: Any, count: int) -> list[LLMWorkItem[str, Any, Any]]:
    return [
        LLMWorkItem(item_id=f"item-{n}", strategy=strategy, prompt=f"question {n}")
        for n in range(count)
    ]


async def run(processor_config: ProcessorConfig, work: list[Any], **kwargs: Any) -> Any:
    kwargs.setdefault("error_classifier", HTTPStatusClassifier())
    processor = ParallelBatchProcessor[str, Any, Any](config=processor_config, **kwargs)
    async with processor:
        for item in work:
            await processor.add_work(item)
        return await processor.process_all()


class OnJob(BaseObserver):
    """Calls the next of `actions` each time a new job is reported submitted."""

    def __init__(self, *actions: Callable[[], None]) -> None:
        self.actions = list(actions)
        self.jobs: list[str] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is not ProcessingEvent.BATCH_JOB_UPDATED or data["job_id"] in self.jobs:
            return
        self.jobs.append(data["job_id"])
        if self.actions:
            self.actions.pop(0)()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["batch", "auto"])
async def test_every_item_ends_in_one_result_from_one_job(
    start_simulator: StartSimulator, make_model: MakeModel, provider: str, mode: str
) -> None:
    sim = await start_simulator()
    agent = Agent(await make_model(provider, sim), instructions="Answer briefly.")
    result = await run(config(mode=mode), items(PydanticAIStrategy(agent), 12))
    assert sorted(r.item_id for r in result.results) == sorted(f"item-{n}" for n in range(12))
    assert result.succeeded == 12
    for r in result.results:
        assert r.via == "batch"
        assert r.output == f"Echo: question {r.item_id.removeprefix('item-')}"
        assert r.token_usage["input_tokens"] > 0
        assert r.attempts == 1
    assert sim.stats.batch_jobs_created[SIM_PROVIDER[provider]] == 1
    assert sim.stats.batch_requests == 12
    # Nothing went online.
    assert sim.stats.by_provider.get(SIM_PROVIDER[provider], 0) == sim.stats.requests_total


class Verdict(BaseModel):
    label: str
    score: float


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_structured_output_through_a_batch(
    start_simulator: StartSimulator, make_model: MakeModel, provider: str
) -> None:
    sim = await start_simulator()
    agent = Agent(await make_model(provider, sim), output_type=Verdict)
    result = await run(config(mode="batch"), items(PydanticAIStrategy(agent), 3))
    assert result.succeeded == 3
    assert all(isinstance(r.output, Verdict) and r.via == "batch" for r in result.results)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_run_is_split_into_jobs_by_the_cap(
    start_simulator: StartSimulator, make_model: MakeModel, provider: str
) -> None:
    # The simulator refuses a job of more than 5 requests, as a provider over its cap does.
    sim = await start_simulator(batch_max_requests=5)
    agent = Agent(await make_model(provider, sim))
    result = await run(
        config(mode="batch", batch_max_requests=5), items(PydanticAIStrategy(agent), 12)
    )
    assert result.succeeded == 12
    jobs = sim.batch_jobs
    assert sorted(job.request_count for job in jobs) == [2, 5, 5]
    assert sim.stats.batch_jobs_created[SIM_PROVIDER[provider]] == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_auto_runs_failed_and_expired_requests_online(
    start_simulator: StartSimulator, make_model: MakeModel, clock: ManualClock, provider: str
) -> None:
    def reply(request: ProviderRequest) -> Any:
        if request.batch_id is not None and request.prompt.endswith(("1", "2")):
            return RawReply(status=500, body={"error": {"message": "batch request failed"}})
        return None

    # Requests finish one by one over 100 s; the job expires at 60 s: the last 40% of its
    # requests are never run.
    sim = await start_simulator(batch_latency=100.0, batch_expiry=60.0, reply=reply)
    observer = OnJob(lambda: clock.advance(70.0))
    agent = Agent(await make_model(provider, sim))
    result = await run(
        config(mode="auto"), items(PydanticAIStrategy(agent), 10), observers=[observer]
    )
    assert result.succeeded == 10
    by_id = {r.item_id: r for r in result.results}
    (job,) = sim.batch_jobs
    assert job.ended
    # The job really expired part-way: 6 of its 10 requests were done when it expired.
    assert job.outcomes["expired"] == 4
    online = {r.item_id for r in result.results if r.via == "online"}
    # The last four requests expired; items 1 and 2 failed inside the job.
    assert online == {"item-1", "item-2", "item-6", "item-7", "item-8", "item-9"}
    for item_id in online:
        assert by_id[item_id].attempts == 2  # the batch request, then the online call
        assert by_id[item_id].output == f"Echo: question {item_id.removeprefix('item-')}"
    for r in result.results:
        if r.via == "batch":
            assert r.item_id not in {"item-1", "item-2"}
    assert sim.stats.batch_jobs_created[SIM_PROVIDER[provider]] == 1


async def test_batch_mode_submits_unrun_requests_again(
    start_simulator: StartSimulator, make_model: MakeModel, clock: ManualClock
) -> None:
    sim = await start_simulator(batch_latency=100.0)

    def expire_half() -> None:
        clock.advance(55.0)
        sim.expire_batches()

    observer = OnJob(expire_half, lambda: clock.advance(200.0))
    agent = Agent(await make_model("anthropic", sim))
    result = await run(
        config(mode="batch"), items(PydanticAIStrategy(agent), 10), observers=[observer]
    )
    # The expired requests went into a second job, which the clock no longer holds back.
    assert result.succeeded == 10
    assert all(r.via == "batch" for r in result.results)
    first, second = sim.batch_jobs
    assert first.outcomes["expired"] == 5
    assert second.request_count == 5
    assert {r.attempts for r in result.results} == {1, 2}


@pytest.mark.parametrize("mode", ["batch", "auto"])
async def test_gemini_strategy_through_google_genai_batches(
    start_simulator: StartSimulator, mode: str
) -> None:
    sim = await start_simulator()
    client = gemini_client(api_key="k", base_url=sim.gemini_base_url)
    try:
        model = GeminiModel("gemini-2.5-flash", client, system_instruction="Be brief.")

        def parse(response: LLMResponse) -> str:
            return response.text.upper()

        strategy = GeminiStrategy(model, parse, temperature=0.2)
        result = await run(config(mode=mode), items(strategy, 7))
    finally:
        await client.aio.aclose()
    assert result.succeeded == 7
    for r in result.results:
        assert r.via == "batch"
        assert r.output == f"ECHO: QUESTION {r.item_id.removeprefix('item-')}"
        assert r.token_usage["input_tokens"] > 0
    assert sim.stats.batch_jobs_created["gemini"] == 1


async def test_a_deadline_cancels_the_job_and_auto_runs_the_rest_online(
    start_simulator: StartSimulator,
    make_model: MakeModel,
) -> None:
    sim = await start_simulator(batch_latency=3600.0)  # never ends: the clock is not moved
    agent = Agent(await make_model("openai", sim))
    result = await run(config(mode="auto", batch_deadline=0.2), items(PydanticAIStrategy(agent), 4))
    assert result.succeeded == 4
    assert all(r.via == "online" for r in result.results)
    (job,) = sim.batch_jobs
    assert job.cancelled
    assert sim.stats.batch_jobs_cancelled["openai"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_the_run_cancels_the_jobs_it_started(
    start_simulator: StartSimulator, make_model: MakeModel, provider: str
) -> None:
    sim = await start_simulator(batch_latency=3600.0)
    submitted = asyncio.Event()
    agent = Agent(await make_model(provider, sim))
    task = asyncio.ensure_future(
        run(
            config(mode="batch"),
            items(PydanticAIStrategy(agent), 5),
            observers=[OnJob(submitted.set)],
        )
    )
    await submitted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (job,) = sim.batch_jobs
    assert job.cancelled
    assert sim.stats.batch_jobs_cancelled[SIM_PROVIDER[provider]] == 1


async def test_with_a_checkpoint_a_cancelled_run_keeps_its_jobs_unless_told_otherwise(
    start_simulator: StartSimulator, make_model: MakeModel, tmp_path: Any
) -> None:
    sim = await start_simulator(batch_latency=3600.0)
    agent = Agent(await make_model("anthropic", sim))
    for policy, cancelled in (("auto", False), ("cancel", True)):
        submitted = asyncio.Event()
        task = asyncio.ensure_future(
            run(
                config(mode="batch", batch_on_cancel=policy),  # type: ignore[arg-type]
                items(PydanticAIStrategy(agent), 3),
                observers=[OnJob(submitted.set)],
                checkpoint=tmp_path / f"{policy}.sqlite",
            )
        )
        await submitted.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sim.batch_jobs[-1].cancelled is cancelled


def test_agents_whose_runs_are_more_than_one_request_stay_online() -> None:
    from pydantic_ai.toolsets import FunctionToolset

    model = AnthropicModel("claude-haiku-4-5", provider=AnthropicProvider(api_key="k"))
    assert PydanticAIStrategy(Agent(model, instructions="Be brief.")).batch_api() is not None

    toolset = FunctionToolset()

    @toolset.tool_plain
    def lookup(key: str) -> str:
        return key

    with_tool = Agent(model)

    @with_tool.tool_plain
    def double(x: int) -> int:
        return 2 * x

    dynamic = Agent(model)

    @dynamic.instructions
    def today() -> str:
        return "It is Tuesday."

    for agent in (Agent(model, toolsets=[toolset]), with_tool, dynamic):
        assert PydanticAIStrategy(agent).batch_api() is None
