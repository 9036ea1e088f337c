"""Adaptive rate control: every provider key paced to its own limit, offline against the simulator.

`ProviderSimulator` allows each API key 60 requests per "minute", compressed here to three
seconds so the example finishes quickly (``WINDOW``; against real providers leave
``window_seconds`` at its default of 60). One processor with an
``AdaptiveRateLimitStrategy`` runs 150 prompts for each of three scopes at once:

* pydantic-ai's OpenAI model, and a strategy of our own on the plain OpenAI SDK with a
  second key: the simulator sends OpenAI's ``x-ratelimit-*`` headers on every response, the
  httpx hook hands them to the controller, and each key is paced to the limit they state;
* Gemini: no rate-limit headers, so the scope learns its pace from what the provider let
  through before its first 429.

Each scope is paced on its own; the 429s of one never pause another. A last, small batch
meets an exhausted daily quota: after the first refusals every remaining item fails at once
with ``QuotaExhaustedError``, without calling the provider again.

Run it with ``python examples/rate_control.py`` (needs the ``all`` extra).
"""

from __future__ import annotations

import asyncio
import logging
import time

import anthropic
import httpx2
import openai
from google import genai
from google.genai import types as genai_types
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    GeminiModel,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryState,
    TokenUsage,
)
from async_batch_llm.models import gemini_client
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, RateScope, httpx_event_hooks
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

#: The simulator's rate-limit "minute", in seconds.
WINDOW = 3.0
PROMPTS = [f"Classify ticket #{i}: the invoice total looks wrong." for i in range(150)]


# --8<-- [start:hooked-client]
def hooked_http_client() -> httpx2.AsyncClient:
    """An HTTP client that reports every response's rate-limit headers to the controller.

    One client can serve every SDK client of the batch; close it when the batch is done.
    """
    return httpx2.AsyncClient(event_hooks=httpx_event_hooks())


# --8<-- [end:hooked-client]


# --8<-- [start:openai]
def openai_agent(base_url: str | None, api_key: str, http_client: httpx2.AsyncClient) -> Agent:
    """A pydantic-ai agent on the hooked client."""
    provider = OpenAIProvider(base_url=base_url, api_key=api_key, http_client=http_client)
    return Agent(OpenAIChatModel("gpt-4o-mini", provider=provider))


# --8<-- [end:openai]


# --8<-- [start:gemini]
def gemini_model(
    base_url: str | None, api_key: str, http_client: httpx2.AsyncClient
) -> GeminiModel:
    """A Gemini model on the hooked client (Gemini sends no limit headers today; the pace is
    learned, and headers would be picked up if it ever sends them)."""
    client = gemini_client(api_key, base_url=base_url, http_client=http_client)
    return GeminiModel("gemini-2.5-flash", client)


# --8<-- [end:gemini]


# --8<-- [start:sdks]
def plain_sdk_clients(
    base_url: str, http_client: httpx2.AsyncClient
) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic, genai.Client]:
    """The plain SDK clients on the hooked client, for strategies of your own.

    SDK retries are off so that every 429 reaches the processor.
    """
    return (
        openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="sk-...", http_client=http_client, max_retries=0
        ),
        anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-ant-...", http_client=http_client, max_retries=0
        ),
        genai.Client(
            api_key="AIza...",
            http_options=genai_types.HttpOptions(
                base_url=base_url,
                httpx_async_client=http_client,
                retry_options=genai_types.HttpRetryOptions(attempts=1),
            ),
        ),
    )


# --8<-- [end:sdks]


# --8<-- [start:custom]
class ChatStrategy(LLMCallStrategy[str]):
    """Calls the OpenAI SDK directly and tells the controller where its calls count."""

    def __init__(self, client: openai.AsyncOpenAI, model: str, *, max_tokens: int) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens

    def rate_limit_scope(self) -> RateScope:
        # OpenAI limits each key per model; the key is fingerprinted, never stored.
        return RateScope.from_api_key(
            provider="openai", api_key=self.client.api_key, model=self.model
        )

    def estimate_tokens(self, prompt: str) -> int:
        # OpenAI counts max_tokens against the tokens-per-minute limit when the call starts.
        return len(prompt) // 4 + 1 + self.max_tokens

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        response = await self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            timeout=timeout,
        )
        usage: TokenUsage = {}
        if response.usage is not None:
            usage = {
                "input_tokens": response.usage.prompt_tokens,
                "output_tokens": response.usage.completion_tokens,
                "total_tokens": response.usage.total_tokens,
            }
        return response.choices[0].message.content or "", usage


# --8<-- [end:custom]


def text_of(response: LLMResponse) -> str:
    return response.text


def make_processor(metrics: MetricsObserver) -> ParallelBatchProcessor[str, str, None]:
    # One controller for the whole batch; each provider + key + model gets its own pace.
    rate_control = AdaptiveRateLimitStrategy(window_seconds=WINDOW)
    return ParallelBatchProcessor[str, str, None](
        config=ProcessorConfig(max_workers=30, timeout_per_item=30.0),
        rate_limit_strategy=rate_control,
        observers=[metrics],
    )


async def run(
    strategies: dict[str, LLMCallStrategy[str]], prompts: list[str], metrics: MetricsObserver
) -> tuple[int, int]:
    processor = make_processor(metrics)
    async with processor:
        # Interleaved: a worker waiting for one scope's turn holds no item of another scope.
        for i, prompt in enumerate(prompts):
            for name, strategy in strategies.items():
                await processor.add_work(
                    LLMWorkItem(item_id=f"{name}-{i}", strategy=strategy, prompt=prompt)
                )
        result = await processor.process_all()
    for scope in processor.rate_limit_strategy.snapshot():  # type: ignore[attr-defined]
        limit = scope.requests_per_minute
        pace = "no pace" if limit is None else f"pace {limit * WINDOW / 60:.0f} per window"
        exhausted = ", quota exhausted" if scope.quota_exhausted else ""
        print(
            f"  {scope.scope}: {scope.succeeded} calls ok, {scope.rate_limited} x 429, "
            f"{pace} ({scope.request_limit_source or 'unknown'}){exhausted}"
        )
    return result.succeeded, result.failed


async def main() -> None:
    limits = SimulatorConfig(rpm=60, window_seconds=WINDOW, latency=0.02, seed=1)
    metrics = MetricsObserver()
    started = time.perf_counter()
    async with ProviderSimulator(limits) as sim, hooked_http_client() as http_client:
        agent = openai_agent(sim.openai_base_url, "sk-offline", http_client)
        model = gemini_model(sim.gemini_base_url, "gm-offline", http_client)
        plain_openai, _, _ = plain_sdk_clients(sim.base_url, http_client)
        plain_openai = plain_openai.with_options(api_key="sk-second-key")
        print("Three scopes, 150 prompts each, 60 requests per 3 s window per key:")
        succeeded, failed = await run(
            {
                "pydantic-ai": PydanticAIStrategy(agent),
                "plain-sdk": ChatStrategy(plain_openai, "gpt-4o-mini", max_tokens=50),
                "gemini": GeminiStrategy(model, text_of),
            },
            PROMPTS,
            metrics,
        )
    elapsed = time.perf_counter() - started
    ideal = (len(PROMPTS) - 60) / 60 * WINDOW
    print(f"  finished in {elapsed:.1f}s; the quota allows {ideal:.1f}s at best")

    quota = SimulatorConfig(daily_request_quota=20, latency=0.02)
    async with ProviderSimulator(quota) as sim, hooked_http_client() as http_client:
        agent = openai_agent(sim.openai_base_url, "sk-small-quota", http_client)
        print("A daily quota of 20 requests, 60 prompts:")
        started = time.perf_counter()
        ok, quota_failed = await run({"quota": PydanticAIStrategy(agent)}, PROMPTS[:60], metrics)
        refused = sim.stats.quota_exhausted
    print(
        f"  {ok} succeeded, {quota_failed} failed in {time.perf_counter() - started:.2f}s; "
        f"{refused} requests reached the exhausted quota, none was retried"
    )
    scopes = (await metrics.get_metrics())["rate_limit_scopes"]
    print(f"MetricsObserver.rate_limit_scopes: {', '.join(sorted(scopes))}")
    print("Summary")
    print(f"{succeeded + ok} succeeded, {failed + quota_failed} failed")


if __name__ == "__main__":
    # Quota failures are logged as errors; this example prints its own summary.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main())
