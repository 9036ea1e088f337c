"""Structured output with pydantic-ai: every item's output is a validated pydantic model.

A pydantic-ai ``Agent`` with ``output_type=ReviewAnalysis`` asks the model for JSON that
fits the model class and validates it; :class:`PydanticAIStrategy` runs the agent once per
attempt. When an answer does not validate, pydantic-ai asks again within the attempt, and
after that the processor retries the item at once. Token usage comes from the agent run.

Offline, a small reply hook plays the model (a keyword rule instead of a language model),
so the answers vary with the review. With ``--real`` and ``OPENAI_API_KEY`` set, a real
OpenAI model analyses the reviews.

Run it with ``python examples/structured_output.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Literal

from _provider import endpoint, parse_args
from pydantic import BaseModel, Field
from pydantic_ai import Agent

from async_batch_llm import (
    GeminiErrorClassifier,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
)
from async_batch_llm.testing.simulator import ProviderRequest, Reply

REVIEWS = [
    "Arrived two weeks late and the box was crushed.",
    "Exactly as described, and it works perfectly.",
    "The handle snapped on day one; I asked for a refund.",
    "Great value, would buy again.",
]


class ReviewAnalysis(BaseModel):
    """What we want to know about each review."""

    sentiment: Literal["positive", "negative", "mixed"]
    stars: int = Field(ge=1, le=5, description="The star rating the review implies")
    issue: str | None = Field(description="The main complaint, if any")


def simulated_analyst(request: ProviderRequest) -> Reply | None:
    """Offline stand-in for the model: the reply pydantic-ai's output tool expects."""
    complaint = next((w for w in ("late", "snapped", "refund") if w in request.prompt), None)
    return {
        "sentiment": "negative" if complaint else "positive",
        "stars": 2 if complaint else 5,
        "issue": complaint,
    }


async def main(args: argparse.Namespace) -> None:
    async with endpoint("openai", real=args.real, reply=simulated_analyst) as target:
        print(f"Asking {target.describe()}")
        agent = Agent(
            target.openai_model("gpt-4o-mini"),
            output_type=ReviewAnalysis,
            instructions="Analyse the customer review.",
        )
        strategy = PydanticAIStrategy(agent)
        config = ProcessorConfig(max_workers=4, retry=RetryConfig(initial_wait=0.1))
        async with ParallelBatchProcessor[str, ReviewAnalysis, None](
            config=config, error_classifier=GeminiErrorClassifier()
        ) as processor:
            for i, review in enumerate(REVIEWS):
                await processor.add_work(
                    LLMWorkItem(item_id=f"review-{i}", strategy=strategy, prompt=review)
                )
            result = await processor.process_all()

    for item in sorted(result.results, key=lambda r: r.item_id):
        analysis = item.output
        if analysis is None:
            print(f"{item.item_id}: {item.error}")
            continue
        print(f"{item.item_id}: {analysis.sentiment:<8} {analysis.stars}/5  issue={analysis.issue}")
    print(f"tokens in/out: {result.total_input_tokens}/{result.total_output_tokens}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
