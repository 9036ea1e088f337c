"""Helpers of the shared-budget tests: a simulator on a background loop, spawned processes.

Every process is a fresh interpreter (``subprocess``, not ``fork``) running ``_child.py``
against the simulator over HTTP through the OpenAI SDK. They all start on the same signal
(a line on stdin) once each has imported everything, so start-up time is not measured.
The simulator's request records carry the system-wide monotonic clock, which the
processes' clocks share, so a test can line up what each sent with what the provider saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

import async_batch_llm
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

CHILD = Path(__file__).with_name("_child.py")
#: A process that takes longer than this fails the test instead of hanging it.
PROCESS_TIMEOUT = 120.0
MODEL = "gpt-4o-mini"


class SimulatorThread:
    """A `ProviderSimulator` serving from an event loop in a daemon thread."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("recent_requests", 200_000)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.simulator = ProviderSimulator(SimulatorConfig(**config))
        self._call(self.simulator.start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    @property
    def base_url(self) -> str:
        return f"{self.simulator.base_url}/v1"

    def fail_next(self, **kwargs: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: self.simulator.fail_next(**kwargs))

    def successes(self) -> int:
        """Generation requests answered 200 so far."""
        return int(self.simulator.stats.by_status.get(200, 0))

    def tokens_per_call(self, model: str, prompt: str) -> int:
        """Total tokens the simulator charges for one chat completion of `prompt`."""
        reply = httpx2.post(
            f"{self.base_url}/chat/completions",
            headers={"Authorization": "Bearer sk-calibrate"},
            json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        )
        reply.raise_for_status()
        return int(reply.json()["usage"]["total_tokens"])

    def tokens_used(self) -> int:
        """Prompt and output tokens of every answered request so far."""

        async def total() -> int:
            stats = self.simulator.stats
            return int(stats.prompt_tokens + stats.output_tokens)

        return self._call(total())  # type: ignore[no-any-return]

    def records(self) -> list[Any]:
        """Generation requests finished so far (time, status, api_key), oldest first."""

        async def copy() -> list[Any]:
            return [r for r in self.simulator.stats.recent if r.path.endswith("/completions")]

        return self._call(copy())  # type: ignore[no-any-return]

    def close(self) -> None:
        self._call(self.simulator.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k.upper()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    source = str(Path(async_batch_llm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


@dataclass
class Outcome:
    """What one process reported."""

    results: list[dict[str, Any]]
    summary: dict[str, Any] | None
    returncode: int


@dataclass
class Fleet:
    """Processes started from `specs`, released together by `go`."""

    specs: list[dict[str, Any]]
    directory: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    released_at: float = 0.0

    def start(self) -> None:
        env = child_env()
        for number, spec in enumerate(self.specs):
            spec_path = self.directory / f"spec-{number}.json"
            spec["out"] = str(self.directory / f"out-{number}.jsonl")
            spec_path.write_text(json.dumps(spec))
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, str(CHILD), str(spec_path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == "ready", f"child did not start: {line!r}"

    def go(self) -> None:
        self.released_at = time.monotonic()
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()

    def wait(self) -> list[Outcome]:
        outcomes = []
        deadline = time.monotonic() + PROCESS_TIMEOUT
        for number, process in enumerate(self.processes):
            try:
                process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in self.processes:
                    other.kill()
                raise
            out = Path(self.specs[number]["out"])
            results: list[dict[str, Any]] = []
            summary = None
            if out.exists():
                for line in out.read_text().splitlines():
                    record = json.loads(line)
                    if record.get("summary"):
                        summary = record
                    else:
                        results.append(record)
            outcomes.append(Outcome(results, summary, process.returncode))
        return outcomes

    def kill_all(self) -> None:
        """Kill what still runs and close every pipe."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()


def run_fleet(
    directory: Path,
    specs: list[dict[str, Any]],
    during: Callable[[Fleet], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Run the processes of `specs` together (their files in `directory`); `during` runs
    in the caller while they work. Returns what each reported and the wall time."""
    fleet = Fleet(specs, directory)
    try:
        fleet.start()
        fleet.go()
        if during is not None:
            during(fleet)
        outcomes = fleet.wait()
    finally:
        fleet.kill_all()
    finished = max(o.summary["finished"] for o in outcomes if o.summary)
    return outcomes, finished - fleet.released_at


def split(items: int, processes: int) -> Iterable[tuple[int, int]]:
    """(first, count) of each process's share of `items`."""
    base, extra = divmod(items, processes)
    first = 0
    for number in range(processes):
        count = base + (1 if number < extra else 0)
        yield first, count
        first += count


def rates(
    times: list[float], start: float, end: float, width: float, step: float | None = None
) -> list[float]:
    """Events per second in windows of `width` seconds from `start` to `end`, every `step`."""
    found = []
    edge = start
    while edge + width <= end + 1e-9:
        count = sum(1 for t in times if edge <= t < edge + width)
        found.append(count / width)
        edge += width if step is None else step
    return found


def call_starts(outcomes: list[Outcome]) -> list[float]:
    """When each call of every process began (the system-wide monotonic clock), in order:
    what the processes let go, rejected calls included."""
    return sorted(t for o in outcomes if o.summary for t in o.summary["began"])


def poll(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Wait until `condition()` is true (checked every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.01)
