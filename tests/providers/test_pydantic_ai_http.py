"""PydanticAIStrategy with pydantic-ai's OpenAI, Anthropic and Google models over HTTP.

Each model's provider is built from the simulator's base URL and an API key, as a user
would build it; requests go through the real SDK clients to 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError, UnexpectedModelBehavior

from async_batch_llm import (
    GeminiErrorClassifier,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.testing.simulator import ProviderRequest, ProviderSimulator

from .http_support import (
    WIRE,
    EventLog,
    LaunchSimulator,
    ManualClock,
    PydanticAIModelFactory,
    PydanticAIProvider,
)

PROVIDERS = pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
SDK_RETRYING_PROVIDERS = pytest.mark.parametrize("provider", ["openai", "anthropic"])

FAST = ProcessorConfig(
    max_workers=4,
    timeout_per_item=10.0,
    retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
    rate_limit=RateLimitConfig(
        cooldown_seconds=0.001,
        slow_start_items=0,
        slow_start_initial_delay=0.0,
        slow_start_final_delay=0.0,
    ),
)

#: Valid JSON for ``Invoice``'s shape that fails its validation (short number, negative total).
INVALID_INVOICE = {"number": "1", "total": -5}


class Invoice(pydantic.BaseModel):
    number: str = pydantic.Field(min_length=4)
    total: float = pydantic.Field(gt=0)


def record_requests(sim: ProviderSimulator) -> list[ProviderRequest]:
    seen: list[ProviderRequest] = []

    def hook(request: ProviderRequest) -> None:
        seen.append(request)

    sim.reply_hook = hook
    return seen


async def run_batch(
    strategy: Any, prompts: list[str], *, config: ProcessorConfig = FAST, log: EventLog
) -> tuple[Any, dict[str, Any]]:
    processor = ParallelBatchProcessor[str, Any, None](
        config=config, error_classifier=GeminiErrorClassifier(), observers=[log]
    )
    async with processor:
        for index, prompt in enumerate(prompts):
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{index}", strategy=strategy, prompt=prompt)
            )
        result = await processor.process_all()
        return result, await processor.get_stats()


def assert_usage_matches_server(usage: Any, sim: ProviderSimulator) -> None:
    """The counts equal what the simulator reported over all of its (200) replies."""
    assert usage["input_tokens"] == sim.stats.prompt_tokens
    assert usage["output_tokens"] == sim.stats.output_tokens
    assert usage["total_tokens"] == sim.stats.tokens_served


class TestOutputs:
    @PROVIDERS
    async def test_plain_text_output_and_usage(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """A text agent's reply is the output; usage is what the server reported."""
        seen = record_requests(provider_sim)
        strategy = PydanticAIStrategy(Agent(pydantic_ai_model(provider_sim, provider)))
        output, usage = await strategy.execute("hello there", 1, 10.0)
        assert output == "Echo: hello there"
        assert usage["output_tokens"] == 5
        assert_usage_matches_server(usage, provider_sim)
        assert [(request.provider, request.stream) for request in seen] == [(WIRE[provider], False)]

    @PROVIDERS
    async def test_structured_output_in_a_batch(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """Every item's output validates into the agent's pydantic ``output_type``."""
        agent = Agent(pydantic_ai_model(provider_sim, provider), output_type=Invoice)
        log = EventLog()
        result, stats = await run_batch(
            PydanticAIStrategy(agent), ["bill a", "bill b", "bill c"], log=log
        )
        assert result.succeeded == 3
        assert all(isinstance(item.output, Invoice) for item in result.results)
        assert provider_sim.stats.successes == 3
        assert stats["total_input_tokens"] == provider_sim.stats.prompt_tokens
        assert stats["total_output_tokens"] == provider_sim.stats.output_tokens


class TestValidationRetries:
    @PROVIDERS
    async def test_pydantic_ai_retries_invalid_output_inside_one_attempt(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """With the agent's default output retry, the retry is a second request of one attempt.

        The item succeeds on its first processor attempt, and its usage covers both requests.
        """
        provider_sim.script(INVALID_INVOICE, provider=WIRE[provider])
        agent = Agent(pydantic_ai_model(provider_sim, provider), output_type=Invoice)
        log = EventLog()
        result, _ = await run_batch(PydanticAIStrategy(agent), ["bill"], log=log)
        assert result.succeeded == 1
        assert isinstance(result.results[0].output, Invoice)
        assert log.count(ProcessingEvent.ITEM_STARTED) == 1
        assert provider_sim.stats.successes == 2
        assert_usage_matches_server(result.results[0].token_usage, provider_sim)

    @PROVIDERS
    async def test_processor_retries_when_the_agent_gives_up(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """Without output retries the agent raises; the processor retries and succeeds.

        The successful result's usage adds the failed attempt's tokens to its own.
        """
        provider_sim.script(INVALID_INVOICE, provider=WIRE[provider])
        agent = Agent(
            pydantic_ai_model(provider_sim, provider), output_type=Invoice, retries={"output": 0}
        )
        log = EventLog()
        result, stats = await run_batch(PydanticAIStrategy(agent), ["bill"], log=log)
        assert result.succeeded == 1
        assert isinstance(result.results[0].output, Invoice)
        assert log.count(ProcessingEvent.ITEM_STARTED) == 2
        assert provider_sim.stats.successes == 2
        usage = result.results[0].token_usage
        assert_usage_matches_server(usage, provider_sim)
        assert stats["total_input_tokens"] == provider_sim.stats.prompt_tokens

    async def test_malformed_tool_arguments_are_retried(
        self, provider_sim: ProviderSimulator, pydantic_ai_model: PydanticAIModelFactory
    ) -> None:
        """Output tool arguments that are not even JSON fail the run; the retry succeeds."""
        provider_sim.script('{"number": "12', provider="openai")
        agent = Agent(
            pydantic_ai_model(provider_sim, "openai"), output_type=Invoice, retries={"output": 0}
        )
        log = EventLog()
        result, _ = await run_batch(PydanticAIStrategy(agent), ["bill"], log=log)
        assert result.succeeded == 1
        assert isinstance(result.results[0].output, Invoice)
        assert log.count(ProcessingEvent.ITEM_STARTED) == 2
        assert_usage_matches_server(result.results[0].token_usage, provider_sim)

    @PROVIDERS
    async def test_failed_item_counts_the_tokens_of_every_attempt(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """An item whose output never validates fails with the tokens of all its attempts."""
        provider_sim.reply_hook = lambda request: INVALID_INVOICE
        agent = Agent(
            pydantic_ai_model(provider_sim, provider), output_type=Invoice, retries={"output": 0}
        )
        log = EventLog()
        result, stats = await run_batch(PydanticAIStrategy(agent), ["bill"], log=log)
        failed = result.results[0]
        assert not failed.success
        assert failed.error is not None
        assert failed.error.startswith(UnexpectedModelBehavior.__name__)
        assert log.count(ProcessingEvent.ITEM_STARTED) == FAST.retry.max_attempts
        assert provider_sim.stats.successes == FAST.retry.max_attempts
        assert_usage_matches_server(failed.token_usage, provider_sim)
        assert stats["total_output_tokens"] == provider_sim.stats.output_tokens


class TestSdkRetries:
    @SDK_RETRYING_PROVIDERS
    @pytest.mark.parametrize("status", [503, 429])
    async def test_one_request_per_attempt_by_default(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
        status: int,
    ) -> None:
        """The SDK client (built to retry twice) sends one request; its error reaches us."""
        provider_sim.fail_next(1, status=status, retry_after=0.001 if status == 429 else None)
        strategy = PydanticAIStrategy(Agent(pydantic_ai_model(provider_sim, provider)))
        with pytest.raises(ModelHTTPError) as caught:
            await strategy.execute("hi", 1, 10.0)
        assert caught.value.status_code == status
        assert provider_sim.stats.requests_total == 1

    @PROVIDERS
    async def test_failures_reach_the_processor_after_one_request(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """Each processor attempt is exactly one HTTP request: the 429 and 503 are its own."""
        provider_sim.fail_next(1, status=429, retry_after=0.001)
        provider_sim.fail_next(1, status=503)
        log = EventLog()
        agent = Agent(pydantic_ai_model(provider_sim, provider, google_retries=3))
        result, stats = await run_batch(PydanticAIStrategy(agent), ["hi"], log=log)
        assert result.succeeded == 1
        assert log.count(ProcessingEvent.ITEM_STARTED) == 3
        assert log.count(ProcessingEvent.RATE_LIMIT_HIT) == stats["rate_limit_count"] == 1
        assert provider_sim.stats.requests_total == 3

    @PROVIDERS
    async def test_sdk_retries_true_lets_the_sdk_retry(
        self,
        provider_sim: ProviderSimulator,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """With ``sdk_retries=True`` the SDK retries the 429 itself: two requests, success.

        OpenAI and Anthropic clients retry by default; the Google provider retries only when
        built with ``retry_options``.
        """
        provider_sim.fail_next(1, status=429, retry_after=0.001)
        agent = Agent(pydantic_ai_model(provider_sim, provider, google_retries=3))
        output, _ = await PydanticAIStrategy(agent, sdk_retries=True).execute("hi", 1, 10.0)
        assert output == "Echo: hi"
        assert provider_sim.stats.requests_total == 2


class TestRetryHints:
    @PROVIDERS
    async def test_rate_limit_hint_reaches_the_classifier(
        self,
        launch_simulator: LaunchSimulator,
        sim_clock: ManualClock,
        pydantic_ai_model: PydanticAIModelFactory,
        provider: PydanticAIProvider,
    ) -> None:
        """The server's retry hint (headers, or Gemini RetryInfo under pydantic-ai's error)
        becomes the classifier's suggested wait."""
        sim = await launch_simulator(rpm=1, window_seconds=30.0, clock=sim_clock)
        strategy = PydanticAIStrategy(Agent(pydantic_ai_model(sim, provider)))
        await strategy.execute("first", 1, 10.0)
        with pytest.raises(ModelHTTPError) as caught:
            await strategy.execute("second", 2, 10.0)
        info = GeminiErrorClassifier().classify(caught.value)
        assert info.is_rate_limit
        assert info.suggested_wait == pytest.approx(30.0)
