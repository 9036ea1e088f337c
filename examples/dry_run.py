"""Dry run: run the whole pipeline without calling the model.

With ``ProcessorConfig(dry_run=True)`` the processor calls each strategy's ``dry_run()``
instead of ``execute()``. Everything else runs as usual (workers, middleware, observers,
post-processor), so a dry run checks the wiring of a big batch, and what its token budget
looks like, before it costs anything. :class:`PydanticAIStrategy` answers a dry run with an
unvalidated instance of the agent's ``output_type`` and a rough token estimate.

The simulator counts the requests it receives: none. With ``--real`` the agent is built for
the real OpenAI API (``OPENAI_API_KEY`` must be set), and still nothing is sent.

Run it with ``python examples/dry_run.py``.
"""

from __future__ import annotations

import argparse
import asyncio

from _provider import endpoint, parse_args
from pydantic import BaseModel
from pydantic_ai import Agent

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig, PydanticAIStrategy


class Summary(BaseModel):
    """The structured answer the real run would produce."""

    title: str
    key_points: list[str]


async def main(args: argparse.Namespace) -> None:
    documents = [
        f"Quarterly report {n}: revenue grew, costs fell, hiring paused." for n in range(50)
    ]
    async with endpoint("openai", real=args.real) as target:
        agent = Agent(target.openai_model("gpt-4o-mini"), output_type=Summary)
        strategy = PydanticAIStrategy(agent)
        config = ProcessorConfig(max_workers=8, dry_run=True)
        async with ParallelBatchProcessor[str, Summary, None](config=config) as processor:
            for i, document in enumerate(documents):
                await processor.add_work(
                    LLMWorkItem(item_id=f"doc-{i}", strategy=strategy, prompt=document)
                )
            result = await processor.process_all()
        where = target.describe()
        sent = target.simulator.stats.requests_total if target.simulator is not None else 0

    first = min(result.results, key=lambda r: r.item_id)
    print(f"{first.item_id}: {first.output!r} (a placeholder: {type(first.output).__name__})")
    print(f"estimated tokens in/out: {result.total_input_tokens:,}/{result.total_output_tokens:,}")
    print(f"requests sent to {where}: {sent}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
