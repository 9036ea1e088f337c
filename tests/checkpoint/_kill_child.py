"""The run that `test_kill_resume.py` kills: a checkpointed stream over the simulator.

Started as ``python _kill_child.py '<json settings>'`` (see `main`). It runs ``items`` items
through `ParallelBatchProcessor.stream` with an SQLite checkpoint; the calls go through the
openai SDK over HTTP to the parent's `ProviderSimulator`, with the API key ``sk-run<run>`` so
that the simulator can tell the runs apart. Everything the parent reads is written with
``os.write`` on ``O_APPEND`` descriptors (no user-space buffer), so a ``kill -9`` loses none
of it:

- ``control-<run>``: ``ready`` before the processor starts, ``paused`` when a pause point
  (below) is reached;
- ``calls-<run>``: ``start <id>`` before each provider call, ``end <id>`` when it returned;
- ``out-<run>``: ``<id> <replayed> <ok>`` for each result the stream yielded, where ``ok``
  says that it succeeded with the output its prompt asks for;
- ``report-<run>.json``: the run's `CheckpointReport`, once the stream is done.

With ``ordered`` the stream yields in input order; with ``post`` the processor has a
post-processor (which changes how outcomes reach the store and replays reach the output).

A pause point stops the store's thread inside an SQLite commit, for the parent to kill the
process there: ``before`` (the transaction written, ``COMMIT`` not yet run: a transaction
in progress) or ``after`` (``COMMIT`` done, the store call not yet returned: durable but
not acted on), at the first commit of ``state`` entries (``"pending"``: claims,
``"succeeded"``: outcomes) that brings this run's count of them to ``threshold``; for
``"meta"``, at commit number ``threshold`` among those without entries (1: the store's
open, which creates the schema in a new file; 2: the run's session number).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import openai

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)

STATE_CODES = {"pending": 0, "succeeded": 1}
# How long a pause point waits for the kill before the child gives up on its parent.
PAUSE_LIMIT = 60.0


def prompt_for(item_id: str) -> str:
    return f"Item {item_id}: repeat this line"


def expected_output(item_id: str) -> str:
    # The simulator's default reply.
    return f"Echo: {prompt_for(item_id)}"


def append_fd(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def write_line(fd: int, line: str) -> None:
    os.write(fd, f"{line}\n".encode())


class EchoStrategy(LLMCallStrategy[str]):
    """One chat completion per attempt; logs the start and the end of each call."""

    def __init__(self, client: openai.AsyncOpenAI, calls_fd: int) -> None:
        self.client = client
        self.calls_fd = calls_fd

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        item_id = prompt.split()[1].rstrip(":")
        write_line(self.calls_fd, f"start {item_id}")
        response = await self.client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], timeout=timeout
        )
        write_line(self.calls_fd, f"end {item_id}")
        usage = response.usage
        tokens: TokenUsage = {
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
        }
        return response.choices[0].message.content or "", tokens


async def post_process(result: WorkItemResult[str, None]) -> None:
    # With a post-processor, outcomes are committed from the workers (each waits for its
    # commit) and replayed results go through the workers too.
    await asyncio.sleep(0)


def _state_of(row: Any) -> int:
    return int(row[4]) if len(row) > 4 else STATE_CODES["pending"]


def install_pause(pause: dict[str, Any], control_fd: int) -> None:
    """Make the store's connection stop at the pause point (see the module docstring).

    The store opens its connection with `sqlite3.connect`, writes entries with
    ``executemany("INSERT INTO entries ...")`` or a multi-row ``execute`` and commits
    with ``execute("COMMIT")``; a connection subclass sees all three without touching
    the store.
    """
    kind = pause["state"]
    threshold = int(pause["threshold"])
    where = pause["where"]
    assert kind in (*STATE_CODES, "meta"), kind
    assert where in ("before", "after"), where

    class PausingConnection(sqlite3.Connection):
        entry_rows = 0  # in the open transaction
        wanted_rows = 0  # of those, rows in the state the pause counts
        total = 0  # what the pause counts, in this run's commits so far
        fired = False

        def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
            rows = list(parameters)
            if sql.lstrip().upper().startswith("INSERT INTO ENTRIES"):
                self.entry_rows += len(rows)
                if kind in STATE_CODES:
                    # A claim's row binds 4 values (its state is in the statement).
                    self.wanted_rows += sum(
                        1 for row in rows if _state_of(row) == STATE_CODES[kind]
                    )
            return super().executemany(sql, rows)

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            command = sql.strip().upper()
            if command.startswith("INSERT INTO ENTRIES") and parameters:
                # Many rows per statement: 4 values per claim, 11 per other entry.
                values = list(parameters)
                count = command.count("), (") + 1
                width = len(values) // count
                rows = [values[i * width : (i + 1) * width] for i in range(count)]
                self.entry_rows += count
                if kind in STATE_CODES:
                    self.wanted_rows += sum(
                        1 for row in rows if _state_of(row) == STATE_CODES[kind]
                    )
            if command in ("COMMIT", "ROLLBACK"):
                # "meta" counts the commits without entries: the store's open, then the
                # processor's metadata.
                counted = int(self.entry_rows == 0) if kind == "meta" else self.wanted_rows
                self.entry_rows = self.wanted_rows = 0
                if command == "COMMIT" and counted:
                    self.total += counted
                    if not self.fired and self.total >= threshold:
                        self.fired = True
                        if where == "before":
                            self._wait_for_kill()  # never returns
                        super().execute(sql, parameters)
                        self._wait_for_kill()
            return super().execute(sql, parameters)

        def _wait_for_kill(self) -> None:
            write_line(control_fd, "paused")
            time.sleep(PAUSE_LIMIT)
            os._exit(3)  # the parent never killed us: it is gone or broken

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", PausingConnection)
        return real_connect(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]


async def run(settings: dict[str, Any]) -> None:
    work = Path(settings["work"])
    number = settings["run"]
    control_fd = append_fd(work / f"control-{number}")
    calls_fd = append_fd(work / f"calls-{number}")
    out_fd = append_fd(work / f"out-{number}")
    if settings.get("pause"):
        install_pause(settings["pause"], control_fd)
    config = ProcessorConfig(
        max_workers=settings["workers"],
        timeout_per_item=30.0,
        retry=RetryConfig(max_attempts=1),
    )
    ids = [f"item-{i:04d}" for i in range(settings["items"])]
    async with openai.AsyncOpenAI(
        base_url=settings["base_url"], api_key=f"sk-run{number}", max_retries=0
    ) as client:
        strategy = EchoStrategy(client, calls_fd)
        items = [LLMWorkItem(item_id=i, strategy=strategy, prompt=prompt_for(i)) for i in ids]
        write_line(control_fd, "ready")
        async with ParallelBatchProcessor[str, str, None](
            config=config,
            checkpoint=settings["db"],
            post_processor=post_process if settings["post"] else None,
        ) as processor:
            async for result in processor.stream(items, ordered=settings["ordered"]):
                ok = result.success and result.output == expected_output(result.item_id)
                write_line(out_fd, f"{result.item_id} {int(result.replayed)} {int(ok)}")
            report = processor.checkpoint_report
    assert report is not None
    target = work / f"report-{number}.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(dataclasses.asdict(report)))
    partial.replace(target)


def main() -> None:
    asyncio.run(run(json.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
