"""The SQLite store across processes: the writer lock, and outcomes that survive `kill -9`.

Each test starts a writer in a child process (this interpreter, this checkout's package)
that prints a line whenever it reaches a point the test waits for; the test reads those
lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest

import async_batch_llm
from async_batch_llm.checkpoint import (
    CheckpointLockedError,
    SQLiteCheckpointReader,
    SQLiteCheckpointStore,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

SRC = Path(async_batch_llm.__file__).resolve().parents[1]

HOLD_OPEN = """
import os, sys, asyncio
from async_batch_llm.checkpoint import SQLiteCheckpointStore

async def main():
    store = SQLiteCheckpointStore(sys.argv[1])
    await store.open()
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()  # holds the store until killed

asyncio.run(main())
"""

RECORD_BATCHES = """
import sys, asyncio
from async_batch_llm.checkpoint import CheckpointEntry, EntryState, SQLiteCheckpointStore

async def main():
    path, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = SQLiteCheckpointStore(path)
    await store.open()
    for batch in range(batches):
        await store.record([
            CheckpointEntry(
                f"b{batch:04d}-{i:04d}", "h" * 64, "strategy", 1, EntryState.SUCCEEDED,
                "raw", bytes([batch % 256]) * 100, None, {"total_tokens": i},
            )
            for i in range(size)
        ])
        print("recorded", batch, flush=True)
    print("done", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> str:
        assert self.process.stdout is not None
        line = (await self.process.stdout.readline()).decode()
        if not line:
            _, err = await self.process.communicate()
            pytest.fail(f"the child exited before saying anything more:\n{err.decode()}")
        return line.strip()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        # Drains and closes the pipes (no ResourceWarning) and reaps the child.
        await self.process.communicate()


@asynccontextmanager
async def child(script: str, *args: object) -> AsyncIterator[Child]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        *map(str, args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    running = Child(process)
    try:
        yield running
    finally:
        await running.kill()


async def test_store_held_by_another_process_is_locked_until_that_process_is_killed(
    db_path: Path,
) -> None:
    async with child(HOLD_OPEN, db_path) as writer:
        word, pid = (await writer.line()).split()
        assert word == "ready"
        store = SQLiteCheckpointStore(db_path)
        with pytest.raises(CheckpointLockedError) as caught:
            await store.open()
        message = str(caught.value)
        assert f"pid {pid}" in message
        assert str(db_path) in message
        await writer.kill()
        assert writer.process.returncode == -signal.SIGKILL
    # The kernel dropped the dead writer's lock: no clean-up needed.
    assert await store.open() == {}
    await store.close()


async def test_batches_reported_recorded_survive_kill_9(db_path: Path) -> None:
    batches, size = 400, 200
    seed = random.randrange(2**32)
    kill_after = random.Random(seed).randint(1, batches // 2)
    reported = -1
    async with child(RECORD_BATCHES, db_path, batches, size) as writer:
        while reported + 1 < kill_after:
            word, number = (await writer.line()).split()
            assert word == "recorded"
            reported = int(number)
            if reported == 0:
                # Another process can read while the writer holds the lock.
                with SQLiteCheckpointReader(db_path) as reader:
                    assert sum(reader.count_by_state().values()) >= size
        await writer.kill()

    store = SQLiteCheckpointStore(db_path)
    await store.open()  # recovers the write-ahead log the killed writer left
    await store.close()
    with SQLiteCheckpointReader(db_path) as reader:
        counts: dict[int, int] = {}
        for entry in reader.entries():
            batch = int(entry.item_id[1:5])
            counts[batch] = counts.get(batch, 0) + 1
            assert entry.payload == bytes([batch % 256]) * 100
    context = f"seed {seed}: killed after batch {reported} was reported"
    for batch in range(reported + 1):
        assert counts.get(batch) == size, context
    # Each batch was one transaction: present whole or not at all.
    assert set(counts.values()) == {size}, context
    assert sorted(counts) == list(range(len(counts))), context
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
