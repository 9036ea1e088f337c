"""Fixtures for the provider tests over HTTP: simulators and real SDK clients pointed at them.

Every client talks to a `ProviderSimulator` on 127.0.0.1 through the unmodified SDKs. Clients
that own connections are closed when the test ends, so no socket outlives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google import genai
from google.genai import types as genai_types
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.google import GoogleProvider
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm.models import _genai_httpx, gemini_client
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

from .http_support import (
    ANTHROPIC_MODEL,
    FAST_GENAI_RETRIES,
    GEMINI_MODEL,
    OPENAI_MODEL,
    GeminiClientFactory,
    LaunchSimulator,
    ManualClock,
    PydanticAIModelFactory,
    PydanticAIProvider,
)


@pytest.fixture
def sim_clock() -> ManualClock:
    """A monotonic clock for simulators whose buckets should refill only on request."""
    return ManualClock(1000.0)


@pytest.fixture
async def launch_simulator() -> AsyncIterator[LaunchSimulator]:
    """Start simulators with ``SimulatorConfig`` options; all stop when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def launch(**options: Any) -> ProviderSimulator:
            reply = options.pop("reply", None)
            simulator = ProviderSimulator(SimulatorConfig(**options), reply=reply)
            return await stack.enter_async_context(simulator)

        yield launch


@pytest.fixture
async def provider_sim(launch_simulator: LaunchSimulator) -> ProviderSimulator:
    """A simulator without limits, latency or injected errors."""
    return await launch_simulator()


@pytest.fixture
async def gemini_sdk_client() -> AsyncIterator[GeminiClientFactory]:
    """Build ``google.genai.Client``s for a simulator (closed at teardown).

    ``client_retries=None`` gives the library's :func:`gemini_client` (SDK retries off);
    a number gives a client built to retry that many attempts, with millisecond waits.
    """
    clients: list[Any] = []
    http_clients: list[Any] = []

    def make(sim: ProviderSimulator, *, client_retries: int | None = None) -> Any:
        if client_retries is None:
            client = gemini_client("gm-test", base_url=sim.gemini_base_url)
        else:
            http_client = _genai_httpx(genai).AsyncClient()
            http_clients.append(http_client)
            options = {**FAST_GENAI_RETRIES, "attempts": client_retries}
            retry = genai_types.HttpRetryOptions(**options)
            client = genai.Client(
                api_key="gm-test",
                http_options=genai_types.HttpOptions(
                    base_url=sim.gemini_base_url,
                    httpx_async_client=http_client,
                    retry_options=retry,
                ),
            )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aio.aclose()
    for http_client in http_clients:
        await http_client.aclose()


@pytest.fixture
async def pydantic_ai_model() -> AsyncIterator[PydanticAIModelFactory]:
    """Build pydantic-ai models whose providers point at a simulator (closed at teardown).

    Providers are created from ``base_url`` and ``api_key`` as a user would, so their SDK
    clients keep the SDK defaults (OpenAI and Anthropic retry twice). The Anthropic model
    asks for ``max_tokens`` so that pydantic-ai does not stream. ``google_retries`` builds
    the Google provider with SDK retries configured.
    """
    providers: list[Any] = []

    def make(
        sim: ProviderSimulator,
        provider: PydanticAIProvider,
        *,
        google_retries: int | None = None,
    ) -> Model:
        model: Model
        if provider == "openai":
            openai_provider = OpenAIProvider(base_url=sim.openai_base_url, api_key="sk-test")
            providers.append(openai_provider)
            model = OpenAIChatModel(OPENAI_MODEL, provider=openai_provider)
        elif provider == "anthropic":
            anthropic_provider = AnthropicProvider(
                base_url=sim.anthropic_base_url, api_key="sk-ant-test"
            )
            providers.append(anthropic_provider)
            model = AnthropicModel(
                ANTHROPIC_MODEL, provider=anthropic_provider, settings={"max_tokens": 1024}
            )
        else:
            retry = (
                None
                if google_retries is None
                else genai_types.HttpRetryOptions(
                    **{**FAST_GENAI_RETRIES, "attempts": google_retries}
                )
            )
            google_provider = GoogleProvider(
                base_url=sim.gemini_base_url, api_key="gm-test", retry_options=retry
            )
            providers.append(google_provider)
            model = GoogleModel(GEMINI_MODEL, provider=google_provider)
        return model

    yield make
    for opened in providers:
        # Leaving a provider closes the HTTP client it created.
        async with opened:
            pass
