"""Throughput of the checkpoint stores: `record` entries/s and warm `lookup` ids/s.

Each store records `--entries` entries (`--payload`-byte payloads, usage counts) in
batches of `--batch`, the way the processor hands them over, into a fresh store, then looks
all of them up again in batches of the same size. Ids are recorded and looked up once in
ascending order (`item-00000000`, `item-00000001`, ...) and once shuffled, as UUIDs or a
run's completion order give them. The SQLite store writes to a temporary directory (on the
disk that holds the system's temp dir), with its default `synchronous="NORMAL"` and with
`"FULL"`. The best of `--rounds` runs is reported. Usage::

    python benchmarks/checkpoint_store.py
    python benchmarks/checkpoint_store.py --payload 2000       # outputs of about 2 KB
    python benchmarks/checkpoint_store.py --entries 5000 --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from async_batch_llm.checkpoint import (
    CheckpointEntry,
    CheckpointStore,
    EntryState,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
)


def make_entries(count: int, payload: int) -> list[CheckpointEntry]:
    return [
        CheckpointEntry(
            item_id=f"item-{i:08d}",
            prompt_hash=f"{i:064x}",
            strategy="gemini-2.5-flash:temperature=0",
            session=1,
            state=EntryState.SUCCEEDED,
            codec="json",
            payload=(b'{"answer": "%08d"}' % i).ljust(payload, b" "),
            usage={"input_tokens": 120, "output_tokens": 40, "total_tokens": 160},
        )
        for i in range(count)
    ]


async def measure(
    store: CheckpointStore, entries: list[CheckpointEntry], batch: int
) -> tuple[float, float]:
    """`(entries recorded per second, ids looked up per second)` for one fresh store."""
    ids = [entry.item_id for entry in entries]
    await store.open(reset=True)
    try:
        start = time.perf_counter()
        for i in range(0, len(entries), batch):
            await store.record(entries[i : i + batch])
        record_s = time.perf_counter() - start
        start = time.perf_counter()
        found = 0
        for i in range(0, len(ids), batch):
            found += sum(entry is not None for entry in await store.lookup(ids[i : i + batch]))
        lookup_s = time.perf_counter() - start
    finally:
        await store.close()
    assert found == len(ids), (found, len(ids))
    return len(entries) / record_s, len(ids) / lookup_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=100, help="bytes per payload")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    ascending = make_entries(args.entries, args.payload)
    shuffled = ascending[:]
    random.Random(0).shuffle(shuffled)
    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{sys.platform}; {args.entries} entries of {args.payload}-byte payloads in batches "
        f"of {args.batch}, best of {args.rounds}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        factories: dict[str, Callable[[], CheckpointStore]] = {
            "memory": MemoryCheckpointStore,
            "sqlite NORMAL": lambda: SQLiteCheckpointStore(Path(tmp, "normal.sqlite")),
            "sqlite FULL": lambda: SQLiteCheckpointStore(
                Path(tmp, "full.sqlite"), synchronous="FULL"
            ),
        }
        for name, factory in factories.items():
            for order, entries in (("ascending", ascending), ("shuffled", shuffled)):
                results = [
                    await measure(factory(), entries, args.batch) for _ in range(args.rounds)
                ]
                record_rate = max(r for r, _ in results)
                lookup_rate = max(lk for _, lk in results)
                print(
                    f"{name:>13}, {order:>9} ids: record {record_rate:>9,.0f} entries/s   "
                    f"lookup {lookup_rate:>9,.0f} ids/s"
                )


if __name__ == "__main__":
    asyncio.run(main())
