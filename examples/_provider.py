"""The examples' switch between the local provider simulator and a real provider.

Every example runs offline by default: it starts a
:class:`~async_batch_llm.testing.simulator.ProviderSimulator` in-process and points the real
SDK client at it, so nothing leaves the machine and no API key is needed. With ``--real`` the
same code talks to the real provider, with the API key from the environment
(``OPENAI_API_KEY``, or ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``). Without the key, ``--real``
stops with a message saying which variable to set.

This module is shared by the examples and is not one itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import httpx2

if TYPE_CHECKING:
    import openai
    from google.genai import Client as GeminiClient
    from pydantic_ai.models.openai import OpenAIChatModel

    from async_batch_llm.testing.simulator import ProviderSimulator, ReplyHook, SimulatorConfig

Provider = Literal["openai", "gemini"]

#: Environment variables holding each provider's API key, in order of preference.
KEY_VARIABLES: dict[Provider, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
_NAMES: dict[Provider, str] = {"openai": "OpenAI", "gemini": "Gemini"}
# Any key works against the simulator; each key gets its own quota there.
_SIMULATOR_KEY = "sk-simulated"


def api_key(provider: Provider) -> str | None:
    """The provider's API key from the environment, or ``None``."""
    for variable in KEY_VARIABLES[provider]:
        if value := os.environ.get(variable):
            return value
    return None


def parse_args(
    description: str,
    provider: Provider,
    *,
    configure: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.Namespace:
    """Parse ``--real`` (plus what ``configure`` adds); exit if ``--real`` has no API key."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    variables = " or ".join(KEY_VARIABLES[provider])
    parser.add_argument(
        "--real",
        action="store_true",
        help=f"call the real {_NAMES[provider]} API with the key in {variables} (this costs "
        "money); by default everything runs offline against the local provider simulator",
    )
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    if args.real and api_key(provider) is None:
        parser.exit(
            2,
            f"{parser.prog}: --real calls the real {_NAMES[provider]} API and needs an API key: "
            f"set {variables}, or leave out --real to run offline against the simulator\n",
        )
    return args


class Endpoint:
    """Where the examples' SDK clients send requests: the simulator, or the real provider.

    Build SDK clients with its methods; they are closed when the :func:`endpoint` block ends.
    """

    def __init__(self, provider: Provider, simulator: ProviderSimulator | None) -> None:
        self.provider = provider
        #: The running simulator, or ``None`` when talking to the real provider.
        self.simulator = simulator
        self._closers: list[Callable[[], Awaitable[object]]] = []

    @property
    def real(self) -> bool:
        """Whether requests go to the real provider."""
        return self.simulator is None

    @property
    def api_key(self) -> str:
        """The real key with ``--real``, a made-up one for the simulator."""
        return (api_key(self.provider) or "") if self.simulator is None else _SIMULATOR_KEY

    @property
    def openai_base_url(self) -> str | None:
        """The simulator's OpenAI URL, or ``None`` for OpenAI's own."""
        return None if self.simulator is None else self.simulator.openai_base_url

    @property
    def gemini_base_url(self) -> str | None:
        """The simulator's Gemini URL, or ``None`` for Google's own."""
        return None if self.simulator is None else self.simulator.gemini_base_url

    def describe(self) -> str:
        """Where the requests go, for the examples' first line of output."""
        if self.simulator is None:
            return f"the real {_NAMES[self.provider]} API"
        return f"the provider simulator at {self.simulator.base_url} (offline, no API key)"

    def openai_model(self, model_name: str, **http_options: Any) -> OpenAIChatModel:
        """A pydantic-ai ``OpenAIChatModel`` (``http_options`` go to its ``httpx2.AsyncClient``)."""
        import pydantic_ai
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        # The examples own their output: no first-run banner from pydantic-ai in a terminal.
        pydantic_ai.BANNER_ENABLED = False
        http_client = httpx2.AsyncClient(timeout=120.0, **http_options)
        self._closers.append(http_client.aclose)
        provider = OpenAIProvider(
            base_url=self.openai_base_url, api_key=self.api_key, http_client=http_client
        )
        return OpenAIChatModel(model_name, provider=provider)

    def openai_client(self) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` client that leaves retrying to the processor."""
        import openai

        client = openai.AsyncOpenAI(
            base_url=self.openai_base_url, api_key=self.api_key, max_retries=0
        )
        self._closers.append(client.close)
        return client

    def gemini_client(self) -> GeminiClient:
        """A ``google.genai.Client`` (see ``async_batch_llm.models.gemini_client``)."""
        from async_batch_llm.models import gemini_client

        client = gemini_client(self.api_key, base_url=self.gemini_base_url)
        self._closers.append(client.aio.aclose)
        return client

    async def aclose(self) -> None:
        """Close every client handed out."""
        closers, self._closers = self._closers, []
        for close in closers:
            await close()


@asynccontextmanager
async def endpoint(
    provider: Provider,
    *,
    real: bool,
    simulator: SimulatorConfig | None = None,
    reply: ReplyHook | None = None,
) -> AsyncIterator[Endpoint]:
    """The real ``provider`` when ``real``, else a simulator started with ``simulator``.

    The simulator's default has a short latency (20-100 ms) and no limits; ``reply`` may
    answer requests in place of its default replies (see ``ProviderSimulator``).
    """
    if real:
        target = Endpoint(provider, None)
        try:
            yield target
        finally:
            await target.aclose()
        return

    from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

    config = simulator if simulator is not None else SimulatorConfig(latency=(0.02, 0.1), seed=1)
    async with ProviderSimulator(config, reply=reply) as sim:
        target = Endpoint(provider, sim)
        try:
            yield target
        finally:
            await target.aclose()
