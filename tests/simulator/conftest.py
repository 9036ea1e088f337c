"""Fixtures for the provider simulator tests: a controlled clock and real SDK clients.

Every SDK client is built with its own retries switched off, so each call is one request:
openai/anthropic ``max_retries=0``; google-genai ``HttpRetryOptions(attempts=1)`` (its default
``retry_options=None`` already skips status retries, but only an explicit ``retry_options``
also turns off the hidden sleep-and-retry on aiohttp connection errors).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types

from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

AIOHTTP_SUBCLASS_WARNING = (
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning"
)
"""google-genai subclasses ``aiohttp.ClientSession`` when aiohttp is installed; aiohttp warns."""


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StartSimulator = Callable[..., Awaitable[ProviderSimulator]]


@pytest.fixture
def clock() -> ManualClock:
    """The monotonic clock driving the simulator's buckets."""
    return ManualClock(1000.0)


@pytest.fixture
def wall_clock() -> ManualClock:
    """The wall clock behind timestamps and cache expiry (2023-11-14T22:13:20Z)."""
    return ManualClock(1_700_000_000.0)


@pytest.fixture
async def start_simulator(
    clock: ManualClock, wall_clock: ManualClock
) -> AsyncIterator[StartSimulator]:
    """Start simulators on the test's clocks; all of them stop when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**options: Any) -> ProviderSimulator:
            reply = options.pop("reply", None)
            config = SimulatorConfig(clock=clock, wall_clock=wall_clock, **options)
            return await stack.enter_async_context(ProviderSimulator(config, reply=reply))

        yield start


@pytest.fixture
async def sim(start_simulator: StartSimulator) -> ProviderSimulator:
    """A simulator without limits, latency or injected errors."""
    return await start_simulator()


@pytest.fixture
async def openai_client() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """Build ``AsyncOpenAI`` clients for a simulator (closed at teardown)."""
    clients: list[openai.AsyncOpenAI] = []

    def make(simulator: ProviderSimulator, api_key: str = "sk-test") -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=simulator.openai_base_url, api_key=api_key, max_retries=0
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def anthropic_client() -> AsyncIterator[Callable[..., anthropic.AsyncAnthropic]]:
    """Build ``AsyncAnthropic`` clients for a simulator (closed at teardown)."""
    clients: list[anthropic.AsyncAnthropic] = []

    def make(
        simulator: ProviderSimulator, api_key: str = "sk-ant-test"
    ) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(
            base_url=simulator.anthropic_base_url, api_key=api_key, max_retries=0
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


GenaiTransport = Literal["aiohttp", "httpx2"]


@pytest.fixture
async def genai_client() -> AsyncIterator[Callable[..., genai.Client]]:
    """Build ``google.genai.Client``s for a simulator (closed at teardown).

    With aiohttp installed google-genai sends through aiohttp unless it is given an httpx
    client; ``transport`` picks which.
    """
    clients: list[genai.Client] = []
    httpx_clients: list[httpx2.AsyncClient] = []

    def make(
        simulator: ProviderSimulator,
        api_key: str = "gm-test",
        transport: GenaiTransport = "httpx2",
    ) -> genai.Client:
        options = types.HttpOptions(
            base_url=simulator.gemini_base_url,
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        if transport == "httpx2":
            httpx_client = httpx2.AsyncClient()
            httpx_clients.append(httpx_client)
            options.httpx_async_client = httpx_client
        client = genai.Client(api_key=api_key, http_options=options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aio.aclose()
    for httpx_client in httpx_clients:
        await httpx_client.aclose()
