"""Stream a batch into a checkpoint, stop half-way, and resume without paying twice.

* ``ParallelBatchProcessor.stream()`` takes items from a generator as it needs them (never
  more than its window ahead of the results taken) and yields each result as it finishes.
* ``checkpoint=`` names an SQLite file (here in a temporary directory). Every result is
  committed to it before it is yielded.
* The first run stops after 40 results (``break`` inside ``aclosing()``): intake stops, the
  calls in flight are cancelled, what finished is committed.
* The second run streams the same items again: stored results come back with
  ``replayed=True`` and no call; only the rest are sent. ``checkpoint_report`` says how
  many of each.
* ``process_stream()`` does the same for a plain async function (here one call of the
  OpenAI SDK) and a list of ``(id, prompt)`` pairs, with no strategy class.

Runs offline against the provider simulator; with ``--real`` and ``OPENAI_API_KEY`` set,
against the real OpenAI API (about 110 requests with gpt-4o-mini).

Run it with ``python examples/streaming_resume.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

from _provider import Endpoint, endpoint, parse_args
from pydantic_ai import Agent

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    process_stream,
)

MODEL = "gpt-4o-mini"
REVIEWS = 100
STOP_AFTER = 40
config = ProcessorConfig(max_workers=8, timeout_per_item=60.0)


def reviews(strategy: PydanticAIStrategy[str]) -> Iterator[LLMWorkItem[str, str, None]]:
    """The work items, made one at a time as the stream asks for them."""
    for n in range(REVIEWS):
        text = f"Review #{n}: arrived late, but the blender works well and is quiet."
        yield LLMWorkItem(item_id=f"review-{n}", strategy=strategy, prompt=text)


def requests_answered(target: Endpoint) -> str:
    """How many requests the simulator answered so far (unknown for the real API)."""
    return "?" if target.simulator is None else str(target.simulator.stats.requests_total)


async def run(target: Endpoint, checkpoint: Path) -> tuple[int, int]:
    agent = Agent(
        target.openai_model(MODEL), instructions="Classify the review: positive or negative."
    )
    strategy = PydanticAIStrategy(agent)

    # Run 1: stop after STOP_AFTER results. aclosing() closes the stream at the break;
    # without it, Python closes it only when the generator is garbage collected.
    async with ParallelBatchProcessor[str, str, None](
        config=config, checkpoint=checkpoint
    ) as processor:
        seen = 0
        async with aclosing(processor.stream(reviews(strategy))) as results:
            async for _ in results:
                seen += 1
                if seen == STOP_AFTER:
                    break
        report = processor.checkpoint_report
        assert report is not None
        print(f"run 1: stopped after {seen} results, {report.recorded} committed")
        print(f"       requests answered so far: {requests_answered(target)}")

    # Run 2: the same items, the same checkpoint. Stored results are replayed.
    async with ParallelBatchProcessor[str, str, None](
        config=config, checkpoint=checkpoint
    ) as processor:
        replayed = called = 0
        succeeded = failed = 0
        async for result in processor.stream(reviews(strategy)):
            replayed += result.replayed
            called += not result.replayed
            succeeded += result.success
            failed += not result.success
        report = processor.checkpoint_report
        assert report is not None
        print(f"run 2: {replayed} replayed, {called} called")
        print(
            f"       checkpoint_report: replayed={report.replayed}, "
            f"unfinished={report.unfinished}, run_again={report.run_again}, new={report.new}"
        )
        print(f"       requests answered so far: {requests_answered(target)}")

    # process_stream: a plain async function instead of a strategy class.
    client = target.openai_client()

    async def translate(prompt: str) -> tuple[str, dict[str, int]]:
        response = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Translate to French: {prompt}"}]
        )
        usage = response.usage
        tokens = {
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
        }
        return response.choices[0].message.content or "", tokens

    phrases = [("hello", "Good morning"), ("thanks", "Thank you"), ("bye", "See you tomorrow")]
    for attempt in (1, 2):
        outcomes = [
            result
            async for result in process_stream(
                translate, phrases, config=config, checkpoint=checkpoint.with_name("fr.sqlite")
            )
        ]
        shown = ", ".join(
            f"{r.item_id}{' (replayed)' if r.replayed else ''}"
            for r in sorted(outcomes, key=lambda r: r.item_id)
        )
        print(f"process_stream, pass {attempt}: {shown}")
        succeeded += sum(r.success for r in outcomes)
        failed += sum(not r.success for r in outcomes)
    return succeeded, failed


async def main(args: argparse.Namespace) -> None:
    async with endpoint("openai", real=args.real) as target:
        print(f"Requests go to {target.describe()}.")
        with tempfile.TemporaryDirectory() as tmp:
            succeeded, failed = await run(target, Path(tmp) / "reviews.sqlite")
    print(f"{succeeded} succeeded, {failed} failed")


if __name__ == "__main__":
    # Each run logs one INFO line with its checkpoint report; this example prints its own.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
