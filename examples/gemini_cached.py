"""Gemini with a cached context: many questions about one long document, paying for it once.

``GeminiCachedModel`` keeps the document in a Gemini context cache. Its ``prepare()`` (run
by the strategy before the first call) reuses a live cache with the same ``cache_tags`` or
creates one; every request then refers to the cache instead of resending the document, and
the provider bills those input tokens at the cached rate. ``BatchResult`` reports them as
``total_cached_tokens`` and ``cache_hit_rate()``.

The cache outlives the batch (until its TTL ends), so a second run reuses it; this example
deletes it at the end with ``delete_cache()``.

Runs offline against the provider simulator, which implements Gemini's ``cachedContents``
(a small reply hook plays the model); with ``--real`` and ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set, against the real Gemini API (the document is long enough for
Gemini's minimum cache size).

Run it with ``python examples/gemini_cached.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re

from _provider import endpoint, parse_args
from google.genai import types

from async_batch_llm import (
    GeminiCachedModel,
    GeminiErrorClassifier,
    GeminiStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
)
from async_batch_llm.testing.simulator import ProviderRequest, Reply

# A long shared prefix: about 3,000 tokens of shipping rules.
HANDBOOK = "\n".join(
    f"Rule {n}: orders from warehouse {n % 7} ship within {n % 3 + 1} days, and returns "
    f"to it are accepted for {14 + n % 4 * 7} days after delivery."
    for n in range(1, 121)
)
QUESTIONS = [f"Within how many days does rule {n} ship an order?" for n in (4, 17, 42, 98)]


def text_of(response: LLMResponse) -> str:
    return response.text.strip()


def simulated_reader(request: ProviderRequest) -> Reply | None:
    """Offline stand-in for the model: looks the rule up in the (cached) handbook."""
    match = re.search(r"rule (\d+)", request.prompt)
    if match is None:
        return None
    days = int(match[1]) % 3 + 1
    return f"Within {days} day{'s' if days > 1 else ''}."


async def main(args: argparse.Namespace) -> None:
    async with endpoint("gemini", real=args.real, reply=simulated_reader) as target:
        print(f"Asking {target.describe()}")
        model = GeminiCachedModel(
            "gemini-2.5-flash",
            target.gemini_client(),
            cached_content=[types.Content(role="user", parts=[types.Part(text=HANDBOOK)])],
            cache_ttl_seconds=600,  # the cache lives 10 minutes ...
            cache_renewal_buffer_seconds=60,  # ... and is renewed 1 minute before it ends
            cache_tags={"example": "shipping-handbook"},  # how a later run finds it again
        )
        strategy = GeminiStrategy(model, text_of)
        async with ParallelBatchProcessor[str, str, None](
            config=ProcessorConfig(max_workers=4), error_classifier=GeminiErrorClassifier()
        ) as processor:
            for i, question in enumerate(QUESTIONS):
                await processor.add_work(
                    LLMWorkItem(item_id=f"q{i}", strategy=strategy, prompt=question)
                )
            result = await processor.process_all()
        print(f"cache: {model.cache_name}")
        await model.delete_cache()  # or keep it for the next run, until its TTL ends

    for item in sorted(result.results, key=lambda r: r.item_id):
        print(f"{item.item_id}: {item.output or item.error}")
    print(
        f"input tokens: {result.total_input_tokens:,}, of which cached: "
        f"{result.total_cached_tokens:,} ({result.cache_hit_rate():.1f}%)"
    )
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main(parse_args(__doc__ or "", "gemini")))
