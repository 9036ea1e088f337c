"""``async with``: the processor cleans up after itself, however the block ends.

The strategy here owns a resource: it opens its Gemini client in ``prepare()`` (once, before
its first call) and closes it in ``cleanup()``. Leaving an ``async with
ParallelBatchProcessor(...)`` block calls ``cleanup()`` on every strategy it prepared, whether
the block ends normally or with an exception. Without ``async with``, call ``await
processor.shutdown()`` in a ``finally`` block.

Runs offline against the provider simulator; with ``--real`` and ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set, against the real Gemini API.

Run it with ``python examples/async_with.py``.
"""

from __future__ import annotations

import argparse
import asyncio

from _provider import Endpoint, endpoint, parse_args
from google.genai import Client

from async_batch_llm import (
    BatchResult,
    GeminiErrorClassifier,
    GeminiModel,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
)

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Perth"]
config = ProcessorConfig(max_workers=3, timeout_per_item=60.0)


class GeminiFacts(LLMCallStrategy[str]):
    """Opens a Gemini client before the first call and closes it at shutdown."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.client: Client | None = None
        self.model: GeminiModel | None = None

    async def prepare(self) -> None:
        self.client = self.target.gemini_client()
        self.model = GeminiModel("gemini-2.5-flash", self.client)

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        assert self.model is not None, "prepare() runs before the first execute()"
        response = await self.model.generate(prompt)
        return response.text, response.token_usage

    async def cleanup(self) -> None:
        if self.client is not None:
            await self.client.aio.aclose()
            self.client = None


async def with_async_with(strategy: GeminiFacts) -> BatchResult[str, None]:
    async with ParallelBatchProcessor[str, str, None](
        config=config, error_classifier=GeminiErrorClassifier()
    ) as processor:
        for city in CITIES:
            prompt = f"One surprising fact about {city}, in one sentence."
            await processor.add_work(LLMWorkItem(item_id=city, strategy=strategy, prompt=prompt))
        result = await processor.process_all()
        print(f"inside the block: client open = {strategy.client is not None}")
    # Leaving the block called strategy.cleanup().
    print(f"after the block:  client open = {strategy.client is not None}")
    return result


async def with_shutdown(strategy: GeminiFacts) -> None:
    processor = ParallelBatchProcessor[str, str, None](config=config)
    try:
        await processor.add_work(LLMWorkItem(item_id="one", strategy=strategy, prompt="Hi"))
        await processor.process_all()
        raise RuntimeError("something went wrong after the batch")
    except RuntimeError as exc:
        print(f"error: {exc}")
    finally:
        await processor.shutdown()  # what leaving ``async with`` does
    print(f"after shutdown(): client open = {strategy.client is not None}")


async def main(args: argparse.Namespace) -> None:
    async with endpoint("gemini", real=args.real) as target:
        print(f"Asking {target.describe()}")
        result = await with_async_with(GeminiFacts(target))
        await with_shutdown(GeminiFacts(target))
    for item in sorted(result.results, key=lambda r: r.item_id)[:3]:
        print(f"  {item.item_id}: {item.output or item.error}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    asyncio.run(main(parse_args(__doc__ or "", "gemini")))
