"""Report progress while a batch runs and save every result as soon as it is final.

* The progress callback gets ``(completed, total, current_item_id)`` every
  ``progress_interval`` results. It runs in the background and never slows the workers.
* The post-processor gets every final :class:`WorkItemResult`, successes and failures
  alike, before ``process_all()`` returns. Here it appends one JSON line per result, so a
  crash half-way still leaves the finished results on disk.
* Each item carries a ``context`` (here: the source row) that comes back on its result.

Run it with ``python examples/progress_postprocessing.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypedDict

from async_batch_llm import (
    BatchResult,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)


class Row(TypedDict):
    """Where a prompt came from; travels with the item as its ``context``."""

    line: int
    text: str


class LengthStrategy(LLMCallStrategy[int]):
    """Counts words; fails (permanently) on rows that are not text."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[int, TokenUsage]:
        await asyncio.sleep(0.001)
        if prompt.isdigit():
            msg = f"expected text, got the number {prompt}"
            raise TypeError(msg)
        return len(prompt.split()), {"input_tokens": 8, "output_tokens": 1, "total_tokens": 9}


# --8<-- [start:callbacks]
async def print_progress(completed: int, total: int, current_item: str) -> None:
    print(f"progress: {completed}/{total} (last finished: {current_item})")


def jsonl_writer(out: IO[str]) -> Callable[[WorkItemResult[int, Row]], None]:
    """A post-processor that appends each final result to ``out`` as one JSON line."""

    def write(result: WorkItemResult[int, Row]) -> None:
        record = {
            "id": result.item_id,
            "line": result.context["line"] if result.context else None,
            "ok": result.success,
            "words": result.output,
            "error": result.error,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()

    return write


# --8<-- [end:callbacks]


async def main(out: IO[str]) -> BatchResult[int, Row]:
    rows = [Row(line=n, text=text) for n, text in enumerate(["a b c", "hello world", "42"] * 10)]
    strategy = LengthStrategy()
    # --8<-- [start:wiring]
    async with ParallelBatchProcessor[str, int, Row](
        config=ProcessorConfig(max_workers=4, progress_interval=10),
        progress_callback=print_progress,
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
    # --8<-- [end:wiring]
    return result


if __name__ == "__main__":
    # Each permanent failure is also logged as one ERROR line; this example prints its own.
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.jsonl"
        with path.open("w") as out:
            result = asyncio.run(main(out))
        saved = path.read_text().splitlines()
    print(f"{len(saved)} lines saved to results.jsonl, e.g. {saved[0]}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")
