"""What ``abl run`` costs on top of the provider calls it makes.

A simulator (zero latency, no limits) runs as its own process. The same requests are sent
two ways, in the same run:

* **bare**: one Python process, the openai SDK's ``AsyncOpenAI`` client, ``concurrency``
  tasks sharing an iterator of prompts (the least a script can do: no retries, no state,
  no output file);
* **abl**: ``abl run INPUT OUTPUT -m openai:gpt-4o-mini --base-url ...`` on a JSONL file of
  the same prompts (validation pass, pydantic-ai, checkpoint, pricing, output file).

It reports lines per second of each, their ratio, and the peak RSS of the ``abl`` process
for a small and a large file: the peak must not grow with the file. Usage::

    python benchmarks/cli.py              # 10,000 and 100,000 lines
    python benchmarks/cli.py --quick      # 2,000 and 20,000 lines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CONCURRENCY = 64


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "async_batch_llm.testing.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    if not url.startswith("http://"):
        process.kill()
        msg = f"simulator did not start: {line!r}"
        raise RuntimeError(msg)
    return process, url


def write_input(path: Path, lines: int) -> None:
    with path.open("w") as file:
        for i in range(lines):
            file.write(json.dumps({"id": f"item-{i}", "prompt": f"Summarize item {i}"}) + "\n")


async def bare(url: str, lines: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    prompts = iter(range(lines))
    start = time.perf_counter()

    async def worker() -> None:
        for i in prompts:
            response = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize item {i}"}],
            )
            assert response.choices[0].message.content

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def run_abl(url: str, input_path: Path, output: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one ``abl run`` process."""
    command = [
        sys.executable,
        "-c",
        # Report the child's own peak RSS: RUSAGE_CHILDREN would mix in earlier children.
        "import resource, sys, runpy; sys.argv = ['abl', *sys.argv[1:]];\n"
        "try:\n    runpy.run_module('async_batch_llm.cli', run_name='__main__')\n"
        "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
        "run",
        str(input_path),
        str(output),
        "-m",
        "openai:gpt-4o-mini",
        "--base-url",
        f"{url}/v1",
        "-c",
        str(CONCURRENCY),
        "--no-progress",
        "--fresh",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        msg = f"abl exited {done.returncode}: {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return elapsed, peak_kib / 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files")
    args = parser.parse_args(argv)
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000)
    simulator, url = start_simulator()
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"{os.cpu_count()} CPUs; simulator and client share them; concurrency {CONCURRENCY}")
    print("| lines | bare SDK loop | abl run | abl / bare time | abl peak RSS |")
    print("|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as directory:
            for lines in sizes:
                input_path = Path(directory) / f"in-{lines}.jsonl"
                write_input(input_path, lines)
                bare_seconds = asyncio.run(bare(url, lines))
                abl_seconds, peak = run_abl(url, input_path, Path(directory) / "out.jsonl")
                print(
                    f"| {lines:,} | {lines / bare_seconds:,.0f} lines/s "
                    f"| {lines / abl_seconds:,.0f} lines/s | {abl_seconds / bare_seconds:.2f}x "
                    f"| {peak:.0f} MiB |",
                    flush=True,
                )
    finally:
        simulator.terminate()
        simulator.wait()


if __name__ == "__main__":
    main()
