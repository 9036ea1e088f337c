"""Memory, per-item cost and resume speed of ``stream()`` and the SQLite checkpoint.

Every scenario runs one strategy that only awaits ``asyncio.sleep(latency)`` (``0`` for
"zero latency", as in ``benchmarks/overhead.py``) with 100 workers and default settings,
and compares against a baseline measured in the same run:

1. **memory** — peak RSS of a child process that streams N items from a generator and
   drops each result, at the small and at the large size (without and with an SQLite
   checkpoint): one fresh subprocess per configuration, so runs do not share a heap. The
   peak is ``ru_maxrss`` (``VmHWM``) at the end of the child. Target: the large run's peak
   within 16 MiB of the small run's;
2. **stream vs process_all** — the same pre-built items through ``stream(items)`` and
   through ``add_work()`` for each plus ``process_all()``. Target: ``stream`` at most 1.2x
   the time per item;
3. **checkpoint cost** — ``stream(items)`` without and with a fresh SQLite store (in a
   temporary directory) per run: at zero latency (target: at most 25 µs more per item) and
   at 5 ms (target: at least 95% of the throughput without). A fresh
   ``MemoryCheckpointStore`` is measured alongside, for reference only: the engine's own
   checkpoint bookkeeping without SQLite. The CPU time of the event loop's thread is
   reported too; the rest of the wall time is spent waiting (for the store's thread);
4. **resume** — commit N items into a store once, then stream the same items again: every
   result is replayed without a call. Target: at least 50,000 replayed items/s.

Timed sides alternate and the median of each is reported, so a noisy neighbour slows
both. ``--quick`` compares 10k with 100k items for the memory target; the SQLite page cache
(16 MiB) fills during the first 100k items, so there the growth with a checkpoint is
mostly that cache, which the full sizes (100k vs 1M) leave out. Usage::

    python benchmarks/streaming.py            # the issue's sizes (several minutes)
    python benchmarks/streaming.py --quick    # a tenth of the sizes, fewer rounds (< 1 min)
    python benchmarks/streaming.py --only 2 --only 3   # some scenarios
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The same stand-in call as the overhead benchmark (this directory is on sys.path when a
# benchmark runs as a script, and for its child processes).
from overhead import SleepStrategy

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
)
from async_batch_llm.checkpoint import CheckpointStore, MemoryCheckpointStore

WORKERS = 100
MiB = 1024 * 1024


Item = LLMWorkItem[str, str, None]


def generate(count: int, strategy: SleepStrategy) -> Iterator[Item]:
    """Items made one at a time, as a generator over a file or a query would give them."""
    for i in range(count):
        yield Item(item_id=f"item-{i}", strategy=strategy, prompt=f"prompt {i}")


def build(count: int, strategy: SleepStrategy) -> list[Item]:
    return list(generate(count, strategy))


def processor(
    checkpoint: str | CheckpointStore | None = None,
) -> ParallelBatchProcessor[str, str, None]:
    config = ProcessorConfig(max_workers=WORKERS)
    return ParallelBatchProcessor[str, str, None](config=config, checkpoint=checkpoint)


async def consume(stream: AsyncIterator[Any]) -> tuple[int, int]:
    """``(results, replayed results)``, keeping none of them."""
    done = replayed = 0
    async for result in stream:
        if not result.success:
            msg = f"item {result.item_id} failed: {result.error}"
            raise RuntimeError(msg)
        done += 1
        replayed += result.replayed
    return done, replayed


async def run_stream(
    items: Iterable[Item], checkpoint: str | CheckpointStore | None = None
) -> tuple[int, int]:
    async with processor(checkpoint) as p:
        return await consume(p.stream(items))


async def run_process_all(items: Sequence[Item]) -> int:
    async with processor() as p:
        for item in items:
            await p.add_work(item)
        result = await p.process_all()
    if result.succeeded != len(items):
        msg = f"process_all lost items: {result.succeeded}/{len(items)} succeeded"
        raise RuntimeError(msg)
    return result.succeeded


async def timed(run: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of the event loop's thread)`` of one run."""
    gc.collect()
    start, cpu = time.perf_counter(), time.thread_time()
    await run()
    return time.perf_counter() - start, time.thread_time() - cpu


async def alternate(
    sides: dict[str, Callable[[], Awaitable[Any]]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Median wall and loop-thread CPU seconds of each side over ``rounds`` runs, the sides
    taking turns."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            times[name].append(await timed(run))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in times.items()
    }


@dataclass
class Row:
    """One line of the table: what was measured, against which target, and the verdict."""

    target: str
    measured: str
    goal: str
    passed: bool
    detail: str

    def render(self) -> str:
        verdict = "**PASS**" if self.passed else "**MISS**"
        return f"| {self.target} | {self.measured} | {self.goal} | {verdict} | {self.detail} |"


def per_item(seconds: float, items: int) -> str:
    return f"{seconds / items * 1e6:.2f} µs ({items / seconds:,.0f}/s)"


# -- 1. memory --------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (``VmHWM``; ``ru_maxrss`` as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def rss_child(count: int, with_checkpoint: bool) -> None:
    """Run in a fresh interpreter: stream `count` generated items, print the peak RSS."""
    strategy = SleepStrategy(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(Path(tmp, "run.sqlite")) if with_checkpoint else None
        start = time.perf_counter()
        done, _ = asyncio.run(run_stream(generate(count, strategy), checkpoint))
        elapsed = time.perf_counter() - start
    assert done == count, (done, count)
    print(json.dumps({"peak": peak_rss_bytes(), "seconds": elapsed}))


def measure_rss(count: int, with_checkpoint: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--rss-child", str(count)]
    if with_checkpoint:
        command.append("--checkpoint")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def scenario_memory(small: int, large: int) -> list[Row]:
    rows = []
    for with_checkpoint in (False, True):
        # Small and large alternate with the other configuration's runs in between.
        small_run = measure_rss(small, with_checkpoint)
        large_run = measure_rss(large, with_checkpoint)
        growth = large_run["peak"] - small_run["peak"]
        name = "SQLite checkpoint" if with_checkpoint else "no checkpoint"
        rows.append(
            Row(
                f"1. peak RSS, {large:,} vs {small:,} items, {name}",
                f"{growth / MiB:+.1f} MiB",
                "<= +16 MiB",
                growth <= 16 * MiB,
                f"{small_run['peak'] / MiB:.1f} MiB at {small:,} "
                f"({small_run['seconds']:.1f} s), {large_run['peak'] / MiB:.1f} MiB at "
                f"{large:,} ({large_run['seconds']:.1f} s)",
            )
        )
    return rows


# -- 2. stream vs process_all -----------------------------------------------------------------


async def scenario_stream_vs_process_all(count: int, rounds: int) -> list[Row]:
    items = build(count, SleepStrategy(0.0))
    await run_stream(items[:1000])  # warm-up
    await run_process_all(items[:1000])
    seconds = await alternate(
        {"process_all": lambda: run_process_all(items), "stream": lambda: run_stream(items)},
        rounds,
    )
    wall = {name: value[0] for name, value in seconds.items()}
    ratio = wall["stream"] / wall["process_all"]
    return [
        Row(
            f"2. stream() / process_all() time, zero latency, {count:,} items",
            f"{ratio:.2f}x",
            "<= 1.20x",
            ratio <= 1.2,
            f"process_all (add_work + process_all) {per_item(wall['process_all'], count)}, "
            f"stream {per_item(wall['stream'], count)}; median of {rounds}",
        )
    ]


# -- 3. checkpoint cost -----------------------------------------------------------------------


async def checkpoint_sides(items: list[Item], rounds: int) -> dict[str, tuple[float, float]]:
    """Without a checkpoint, with a fresh SQLite store, and (for reference: the engine's
    own checkpoint bookkeeping, without SQLite) with a fresh `MemoryCheckpointStore`."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**9))

        async def with_sqlite() -> None:
            # A fresh store each run: nothing is replayed, every item is claimed and
            # committed.
            _, replayed = await run_stream(items, str(Path(tmp, f"run-{next(runs)}.sqlite")))
            assert replayed == 0

        async def with_memory() -> None:
            _, replayed = await run_stream(items, MemoryCheckpointStore())
            assert replayed == 0

        await run_stream(items[:1000])  # warm-up
        await run_stream(items[:1000], str(Path(tmp, "warm-up.sqlite")))
        await run_stream(items[:1000], MemoryCheckpointStore())
        return await alternate(
            {"none": lambda: run_stream(items), "sqlite": with_sqlite, "memory": with_memory},
            rounds,
        )


def sides_detail(seconds: dict[str, tuple[float, float]], count: int, rounds: int) -> str:
    names = {"none": "without", "sqlite": "SQLite", "memory": "memory store"}
    return (
        "; ".join(
            f"{names[name]} {per_item(wall, count)}, loop thread CPU {cpu / count * 1e6:.1f} µs"
            for name, (wall, cpu) in seconds.items()
        )
        + f"; median of {rounds}"
    )


async def scenario_checkpoint_cost(zero_items: int, slow_items: int, rounds: int) -> list[Row]:
    zero = await checkpoint_sides(build(zero_items, SleepStrategy(0.0)), rounds)
    added = (zero["sqlite"][0] - zero["none"][0]) / zero_items * 1e6
    slow = await checkpoint_sides(build(slow_items, SleepStrategy(0.005)), rounds)
    share = slow["none"][0] / slow["sqlite"][0]
    return [
        Row(
            f"3a. SQLite checkpoint, added time per item, zero latency, {zero_items:,} items",
            f"{added:+.1f} µs",
            "<= +25 µs",
            added <= 25,
            sides_detail(zero, zero_items, rounds),
        ),
        Row(
            f"3b. SQLite checkpoint, throughput vs without, 5 ms latency, {slow_items:,} items",
            f"{share:.1%}",
            ">= 95%",
            share >= 0.95,
            sides_detail(slow, slow_items, rounds),
        ),
    ]


# -- 4. resume --------------------------------------------------------------------------------


def file_size(path: str) -> int:
    return Path(path).stat().st_size


async def replay_rate(count: int, rounds: int) -> Row:
    strategy = SleepStrategy(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp, "resume.sqlite"))
        start = time.perf_counter()
        done, replayed = await run_stream(generate(count, strategy), path)
        first = time.perf_counter() - start
        assert (done, replayed) == (count, 0), (done, replayed)
        times = []
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter()
            done, replayed = await run_stream(generate(count, strategy), path)
            times.append(time.perf_counter() - start)
            assert done == replayed == count, (done, replayed, count)
        size = file_size(path)
    replay = statistics.median(times)
    rate = count / replay
    return Row(
        f"4. resume, replayed items/s, {count:,} items",
        f"{rate:,.0f}/s",
        ">= 50,000/s",
        rate >= 50_000,
        f"replay {replay:.2f} s ({replay / count * 1e6:.1f} µs per item, median of {rounds}); "
        f"first run {first:.1f} s ({count / first:,.0f}/s); store {size / MiB:.0f} MiB",
    )


async def scenario_resume(sizes: Sequence[int], rounds: int) -> list[Row]:
    return [await replay_rate(count, rounds if count <= 100_000 else 1) for count in sizes]


# -- the table --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, 3 rounds")
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        choices=(1, 2, 3, 4),
        help="run only this scenario (repeat for more)",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per side (default 5; 3 quick)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.checkpoint)
        return
    scale = 10 if args.quick else 1
    rounds = args.rounds or (3 if args.quick else 5)
    only = set(args.only or (1, 2, 3, 4))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}, "
        f"{os.cpu_count()} CPUs (load average {load}), SQLite {sqlite3.sqlite_version}; "
        f"{WORKERS} workers" + (" (--quick: a tenth of the sizes)" if args.quick else "")
    )
    print("| target | measured | goal | result | details |")
    print("|---|---|---|---|---|")
    rows: list[Row] = []

    def show(new: list[Row]) -> None:
        for row in new:
            print(row.render(), flush=True)
        rows.extend(new)

    if 1 in only:
        show(scenario_memory(100_000 // scale, 1_000_000 // scale))
    if 2 in only:
        show(asyncio.run(scenario_stream_vs_process_all(100_000 // scale, rounds)))
    if 3 in only:
        show(asyncio.run(scenario_checkpoint_cost(100_000 // scale, 20_000 // scale, rounds)))
    if 4 in only:
        sizes = (10_000,) if args.quick else (100_000, 1_000_000)
        show(asyncio.run(scenario_resume(sizes, rounds)))
    missed = sum(not row.passed for row in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} targets met.")


if __name__ == "__main__":
    main()
