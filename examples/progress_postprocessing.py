"""Show a live progress bar and save every result to a JSON Lines file as soon as it is final.

* :class:`RichProgressObserver` (extra ``progress``) draws the bar: items done, succeeded
  and failed, rate limits and cooldowns, throughput.
* The post-processor gets every final :class:`WorkItemResult`, successes and failures
  alike, before ``process_all()`` returns. Here it appends one JSON line per result, so a
  crash half-way still leaves the finished results on disk.
* The progress callback gets ``(completed, total, current_item_id)`` every
  ``progress_interval`` results, in the background; here it prints a checkpoint line above
  the bar.
* Each item carries a ``context`` (here: the source row) that comes back on its result.

Rows without text fail at once, without a call. The file goes to ``--out`` (by default a
temporary directory that is removed at the end).

Runs offline against the provider simulator; with ``--real`` and ``OPENAI_API_KEY`` set,
against the real OpenAI API.

Run it with ``python examples/progress_postprocessing.py [--out results.jsonl]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypedDict

from _provider import endpoint, parse_args
from pydantic_ai import Agent

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.observers.progress import RichProgressObserver


class Row(TypedDict):
    """Where a prompt came from; travels with the item as its ``context``."""

    line: int
    text: str


class TranslateStrategy(PydanticAIStrategy[str]):
    """Runs the agent; a row without text fails at once (a ValueError is permanent)."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if not prompt.strip():
            raise ValueError("the row has no text to translate")
        return await super().execute(prompt, attempt, timeout, state)


def jsonl_writer(out: IO[str]) -> Callable[[WorkItemResult[str, Row]], None]:
    """A post-processor that appends each final result to ``out`` as one JSON line."""

    def write(result: WorkItemResult[str, Row]) -> None:
        record = {
            "id": result.item_id,
            "line": result.context["line"] if result.context else None,
            "ok": result.success,
            "translation": result.output,
            "error": result.error,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()

    return write


async def run(args: argparse.Namespace, out: IO[str]) -> None:
    texts = ["Good morning", "Thank you", "", "See you tomorrow", "Where is the station?"]
    rows = [Row(line=n, text=texts[n % len(texts)]) for n in range(100)]
    async with endpoint("openai", real=args.real) as target:
        agent = Agent(target.openai_model("gpt-4o-mini"), instructions="Translate to French.")
        strategy = TranslateStrategy(agent)
        progress = RichProgressObserver(description="Translating")

        async def checkpoint(completed: int, total: int, current_item: str) -> None:
            progress.console.print(f"checkpoint: {completed}/{total} done, last {current_item}")

        async with ParallelBatchProcessor[str, str, Row](
            config=ProcessorConfig(max_workers=8, progress_interval=25),
            observers=[progress],
            progress_callback=checkpoint,
            post_processor=jsonl_writer(out),
        ) as processor:
            for row in rows:
                await processor.add_work(
                    LLMWorkItem(
                        item_id=f"row-{row['line']}",
                        strategy=strategy,
                        prompt=row["text"],
                        context=row,
                    )
                )
            result = await processor.process_all()
    progress.console.print(f"{result.succeeded} succeeded, {result.failed} failed")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out) if args.out else Path(tmp) / "results.jsonl"
        with path.open("w", encoding="utf-8") as out:
            asyncio.run(run(args, out))
        saved = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    print(f"{len(saved)} lines saved to {path if args.out else path.name}, e.g.")
    for ok in (True, False):
        print("  " + json.dumps(next(record for record in saved if record["ok"] is ok)))


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="the JSON Lines file to write (a temporary one)")


if __name__ == "__main__":
    # Each permanent failure is also logged as one ERROR line; this example prints its own.
    logging.basicConfig(level=logging.CRITICAL)
    main(parse_args(__doc__ or "", "openai", configure=options))
