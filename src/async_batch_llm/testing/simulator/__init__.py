"""A local LLM provider simulator for end-to-end tests, benchmarks and offline demos.

`ProviderSimulator` is a real HTTP server on 127.0.0.1 that speaks enough of OpenAI chat
completions and responses, Anthropic messages and Gemini ``generateContent`` (plus
``cachedContents``), and the three providers' batch and file APIs, for the unmodified openai,
anthropic, google-genai and pydantic-ai clients. Per API key it enforces
continuously refilling requests- and tokens-per-window buckets, answers 429s with the provider's
retry hints, sends the provider's rate-limit headers, waits a configurable latency, injects
server errors at a seeded rate and counts what it served in `SimulatorStats`.

Run it standalone with ``python -m async_batch_llm.testing.simulator --help``.

It needs aiohttp: ``pip install aiohttp``.
"""

from __future__ import annotations

from async_batch_llm.testing.simulator._batches import BatchJobRecord
from async_batch_llm.testing.simulator._config import Latency, SimulatorConfig
from async_batch_llm.testing.simulator._request import (
    Provider,
    ProviderRequest,
    RawReply,
    Reply,
    ReplyHook,
)
from async_batch_llm.testing.simulator._server import ProviderSimulator
from async_batch_llm.testing.simulator._stats import RequestRecord, SimulatorStats

__all__ = [
    "ProviderSimulator",
    "SimulatorConfig",
    "SimulatorStats",
    "RequestRecord",
    "BatchJobRecord",
    "ProviderRequest",
    "RawReply",
    "Reply",
    "ReplyHook",
    "Provider",
    "Latency",
]

for _public in (
    ProviderSimulator,
    SimulatorConfig,
    SimulatorStats,
    RequestRecord,
    BatchJobRecord,
    ProviderRequest,
    RawReply,
):
    _public.__module__ = __name__
del _public
