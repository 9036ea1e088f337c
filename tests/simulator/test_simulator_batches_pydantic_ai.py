"""pydantic-ai's batch primitives (``Model.batch_*``, ``model_request_batch``) end to end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anthropic
import openai
import pytest
from google import genai
from pydantic_ai import ModelRequest
from pydantic_ai.direct import model_request_batch
from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.batch import BatchRequest
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm.testing.simulator import Provider, ProviderSimulator, SimulatorConfig
from conftest import AIOHTTP_SUBCLASS_WARNING, ManualClock, StartSimulator

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

PROVIDERS = pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
ModelFactory = Callable[[ProviderSimulator, Provider], Model]


@pytest.fixture
def batch_model(
    openai_client: Callable[..., openai.AsyncOpenAI],
    anthropic_client: Callable[..., anthropic.AsyncAnthropic],
    genai_client: Callable[..., genai.Client],
) -> ModelFactory:
    """The pydantic-ai model with batch support for each provider, on a simulator."""

    def make(sim: ProviderSimulator, provider: Provider) -> Model:
        if provider == "openai":
            return OpenAIResponsesModel(
                "gpt-5", provider=OpenAIProvider(openai_client=openai_client(sim))
            )
        if provider == "anthropic":
            return AnthropicModel(
                "claude-sonnet-5",
                provider=AnthropicProvider(anthropic_client=anthropic_client(sim)),
            )
        return GoogleModel("gemini-2.5-flash", provider=GoogleProvider(client=genai_client(sim)))

    return make


def requests(count: int) -> list[BatchRequest]:
    return [
        BatchRequest(custom_id=f"q{i}", messages=[ModelRequest.user_text_prompt(f"question {i}")])
        for i in range(count)
    ]


@PROVIDERS
async def test_batch_primitives_end_to_end(
    start_simulator: StartSimulator,
    batch_model: ModelFactory,
    clock: ManualClock,
    provider: Provider,
) -> None:
    """encode -> create -> status (in progress until the clock moves) -> results -> decode."""
    sim = await start_simulator(batch_latency=60.0)
    model = batch_model(sim, provider)
    batch_requests = requests(3)
    encoded = [await model.batch_encode(request) for request in batch_requests]
    batch = await model.batch_create(encoded)
    assert batch.status == "in_progress"
    assert batch.request_count == 3
    clock.advance(30.0)
    batch = await model.batch_status(batch)
    assert batch.status == "in_progress"
    clock.advance(30.0)
    batch = await model.batch_status(batch)
    assert batch.status == "ended"
    results = {result.custom_id: result for result in await model.batch_results(batch)}
    assert {result.status for result in results.values()} == {"succeeded"}
    assert sorted(results) == ["q0", "q1", "q2"]
    for index, request in enumerate(batch_requests):
        response = model.batch_decode(results[request.custom_id], request)
        assert isinstance(response, ModelResponse)
        assert response.text == f"Echo: question {index}"
        # "question 0" is 10 characters, about 4 a token; "Echo: question 0" is 16.
        assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 4)
        assert response.provider_details is not None
        assert response.provider_details["processing"] == "batch"
    assert sim.stats.batch_jobs_created == {provider: 1}
    assert sim.stats.batch_requests == 3
    assert sim.stats.by_status.keys() == {200}


@PROVIDERS
async def test_batch_failures_and_cancellation_decode_as_errors(
    start_simulator: StartSimulator,
    batch_model: ModelFactory,
    clock: ManualClock,
    provider: Provider,
) -> None:
    """Failed requests decode to the provider's 500; cancelled ones to an unrun error."""
    sim = await start_simulator(batch_latency=10.0, batch_error_rate=1.0)
    model = batch_model(sim, provider)
    batch_requests = requests(4)
    batch = await model.batch_create([await model.batch_encode(r) for r in batch_requests])
    clock.advance(5.0)
    batch = await model.batch_cancel(batch)
    assert batch.status in ("canceling", "ended")
    clock.advance(1.0)
    batch = await model.batch_status(batch)
    assert batch.status == "ended"
    results = {result.custom_id: result for result in await model.batch_results(batch)}
    assert results["q0"].status == "errored"
    assert results["q1"].status == "errored"
    if provider != "gemini":
        # A Gemini job's results list only the requests it ran.
        assert (results["q2"].status, results["q3"].status) == ("canceled", "canceled")
    with pytest.raises(ModelAPIError) as raised:
        model.batch_decode(results["q0"], batch_requests[0])
    assert getattr(raised.value, "status_code", None) == 500
    assert sim.stats.batch_jobs_cancelled == {provider: 1}


async def test_model_request_batch_splits_at_the_simulator_cap(
    start_simulator: StartSimulator, batch_model: ModelFactory
) -> None:
    """model_request_batch sends one request per job under max_requests, and gets answers."""
    sim = await start_simulator()
    model = batch_model(sim, "anthropic")
    responses = await model_request_batch(
        model, requests(3), max_requests=2, poll_interval=timedelta(milliseconds=1)
    )
    texts = [r.text if isinstance(r, ModelResponse) else repr(r) for r in responses]
    assert texts == ["Echo: question 0", "Echo: question 1", "Echo: question 2"]
    assert sim.stats.batch_jobs_created == {"anthropic": 2}
    assert sorted(record.request_count for record in sim.batch_jobs) == [1, 2]


class TickingClock:
    """A clock that moves one second each time it is read, so jobs age as they are polled."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def test_model_request_batch_reports_expired_requests_without_resubmitting(
    batch_model: ModelFactory,
) -> None:
    """With max_resubmissions=0 an expired job's requests come back as errors, one job only."""
    config = SimulatorConfig(clock=TickingClock(), batch_latency=1000.0, batch_expiry=5.0)
    async with ProviderSimulator(config) as sim:
        model = batch_model(sim, "openai")
        responses = await model_request_batch(
            model, requests(2), max_resubmissions=0, poll_interval=timedelta(milliseconds=1)
        )
        assert all(isinstance(response, ModelAPIError) for response in responses)
        assert "expired" in str(responses[0])
        assert sim.stats.batch_jobs_created == {"openai": 1}
        assert [record.state for record in sim.batch_jobs] == ["expired"]
