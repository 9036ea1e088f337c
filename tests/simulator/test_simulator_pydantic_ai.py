"""pydantic-ai's OpenAI, Anthropic and Google models against the simulator."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import openai
import pydantic
import pytest
from google import genai
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.exceptions import ModelQuotaExceededError, ModelRateLimitError
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm.testing.simulator import Provider, ProviderRequest, ProviderSimulator
from conftest import AIOHTTP_SUBCLASS_WARNING, StartSimulator

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

PROVIDERS = pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
ModelFactory = Callable[[ProviderSimulator, Provider], Model]


class Invoice(pydantic.BaseModel):
    number: str = pydantic.Field(min_length=4)
    total: float = pydantic.Field(gt=0)
    lines: list[str]


@pytest.fixture
def model_for(
    openai_client: Callable[..., openai.AsyncOpenAI],
    anthropic_client: Callable[..., anthropic.AsyncAnthropic],
    genai_client: Callable[..., genai.Client],
) -> ModelFactory:
    """pydantic-ai models on SDK clients (retries off) pointed at a simulator."""

    def make(sim: ProviderSimulator, provider: Provider) -> Model:
        if provider == "openai":
            return OpenAIChatModel(
                "gpt-4o", provider=OpenAIProvider(openai_client=openai_client(sim))
            )
        if provider == "anthropic":
            return AnthropicModel(
                "claude-sonnet-5",
                provider=AnthropicProvider(anthropic_client=anthropic_client(sim)),
            )
        return GoogleModel("gemini-2.5-flash", provider=GoogleProvider(client=genai_client(sim)))

    return make


@PROVIDERS
async def test_text_output_and_usage(
    sim: ProviderSimulator, model_for: ModelFactory, provider: Provider
) -> None:
    """A plain agent run gets the echo and the reported token usage."""
    result = await Agent(model_for(sim, provider)).run("hello there")
    assert result.output == "Echo: hello there"
    assert result.usage.requests == 1
    assert result.usage.input_tokens == 3
    assert result.usage.output_tokens == 5
    assert sim.stats.by_provider == {provider: 1}


@PROVIDERS
async def test_structured_output_through_the_output_tool(
    sim: ProviderSimulator, model_for: ModelFactory, provider: Provider
) -> None:
    """pydantic-ai's default tool-based structured output validates into the model."""
    result = await Agent(model_for(sim, provider), output_type=Invoice).run("bill me")
    assert isinstance(result.output, Invoice)
    assert len(result.output.number) >= 4
    assert result.output.total > 0
    assert sim.stats.successes == 1


@PROVIDERS
async def test_native_structured_output(
    sim: ProviderSimulator, model_for: ModelFactory, provider: Provider
) -> None:
    """``NativeOutput`` (response format / output_config / responseJsonSchema) validates."""
    result = await Agent(model_for(sim, provider), output_type=NativeOutput(Invoice)).run("bill")
    assert isinstance(result.output, Invoice)


@PROVIDERS
async def test_invalid_output_is_retried_then_succeeds(
    sim: ProviderSimulator, model_for: ModelFactory, provider: Provider
) -> None:
    """A scripted reply failing validation makes pydantic-ai ask again; the retry succeeds."""
    sim.script({"number": "1", "total": -5, "lines": []})
    result = await Agent(model_for(sim, provider), output_type=Invoice, retries=1).run("bill")
    assert isinstance(result.output, Invoice)
    assert result.usage.requests == 2
    assert sim.stats.successes == 2
    # Both attempts' tokens are reported, and the retry carries the validation feedback.
    assert result.usage.input_tokens > 2 * 3
    assert sim.stats.recent[-1].status == 200


async def test_invalid_json_tool_arguments_can_be_scripted(
    sim: ProviderSimulator, model_for: ModelFactory
) -> None:
    """Text scripted for a forced OpenAI tool becomes raw (here broken) tool arguments."""
    prompts: list[ProviderRequest] = []

    def spy(request: ProviderRequest) -> None:
        prompts.append(request)

    sim.reply_hook = spy
    sim.script('{"number": "12', provider="openai")
    result = await Agent(model_for(sim, "openai"), output_type=Invoice, retries=1).run("bill")
    assert isinstance(result.output, Invoice)
    assert [request.tool_name for request in prompts] == ["final_result"]
    assert prompts[0].sequence == 2


@pytest.mark.parametrize(
    ("provider", "retry_after"), [("openai", 25.0), ("anthropic", 25.0), ("gemini", None)]
)
async def test_rate_limit_surfaces_as_model_rate_limit_error(
    start_simulator: StartSimulator,
    model_for: ModelFactory,
    provider: Provider,
    retry_after: float | None,
) -> None:
    """A 429 reaches pydantic-ai as ModelRateLimitError with the hint it can read."""
    sim = await start_simulator(rpm=1, window_seconds=25.0)
    agent = Agent(model_for(sim, provider))
    await agent.run("first")
    with pytest.raises(ModelRateLimitError) as caught:
        await agent.run("second")
    assert caught.value.status_code == 429  # type: ignore[attr-defined]
    # Newer pydantic-ai releases also read Gemini's RetryInfo delay (25 s here).
    readable = {retry_after, 25.0} if provider == "gemini" else {retry_after}
    assert caught.value.retry_after in readable


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_quota_exhaustion_reaches_pydantic_ai(
    start_simulator: StartSimulator, model_for: ModelFactory, provider: Provider
) -> None:
    """Hard quota exhaustion: a quota error to pydantic-ai for OpenAI, a 429 for Anthropic,
    either for Gemini (newer pydantic-ai releases read its QuotaFailure)."""
    sim = await start_simulator(daily_request_quota=1)
    agent = Agent(model_for(sim, provider))
    await agent.run("first")
    expected: tuple[type[Exception], ...] = (ModelRateLimitError,)
    if provider == "openai":
        expected = (ModelQuotaExceededError,)
    elif provider == "gemini":  # newer pydantic-ai releases read Gemini's QuotaFailure
        expected = (ModelRateLimitError, ModelQuotaExceededError)
    with pytest.raises(expected):
        await agent.run("second")
