"""Helpers of the ``abl`` command-line tests: simulators on a background loop, and a runner.

(A module named ``test_cli_*`` so that it sits with the tests; it holds no test.)

The command line runs in a subprocess, exactly as a user runs it
(``python -m async_batch_llm.cli ...``), so the provider simulator cannot share its event
loop: `SimulatorHost` runs one loop in a daemon thread for the whole session and starts
`RecordingSimulator`s on it. Each of those records the prompt of every generation request it
admits, and can hold requests at a gate so that a test decides when they are answered
(instead of guessing with sleeps).

The subprocesses get an environment without any provider API key and without proxies, with
``PYTHONPATH`` pointing at the package the tests import, and ``cwd`` in the test's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import async_batch_llm
from async_batch_llm.testing.simulator import (
    ProviderRequest,
    ProviderSimulator,
    Reply,
    SimulatorConfig,
)

#: Every CLI subprocess is killed after this long (a hang fails the test, not the suite).
SUBPROCESS_TIMEOUT = 90.0
#: How long a poll for a condition may take before the test fails.
POLL_TIMEOUT = 60.0

_SECRET_MARKERS = ("API_KEY", "APIKEY", "CREDENTIALS", "TOKEN", "SECRET")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy"}


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: no API keys, no proxies, this package."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not any(marker in name.upper() for marker in _SECRET_MARKERS)
        and name.lower() not in _PROXY_VARIABLES
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    source = str(Path(async_batch_llm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


def poll(condition: Callable[[], Any], what: str, *, timeout: float = POLL_TIMEOUT) -> Any:
    """Wait until `condition()` is truthy (checked every 20 ms) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# -- simulators -----------------------------------------------------------------------------


class RecordingSimulator(ProviderSimulator):
    """A `ProviderSimulator` that records admitted prompts and can hold replies at a gate.

    ``prompts`` counts the generation requests admitted per prompt (the text of the last user
    message), ``calls`` keeps each admitted `ProviderRequest`. `hold` makes every request after
    the next ``free`` ones wait, after its latency, until `release`; ``waiting`` is how many
    are waiting there now. ``answer`` (a function of the request) may replace the default
    reply, as the simulator's ``reply`` hook.

    The gate overrides the simulator's private ``_wait_latency`` (awaited by every reply
    after the bucket checks, before it is sent): the simulator has no public way to hold a
    reply until told.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        loop: asyncio.AbstractEventLoop,
        answer: Callable[[ProviderRequest], Reply | None] | None = None,
    ) -> None:
        super().__init__(config, reply=self._admitted)
        self._loop = loop
        self._answer = answer
        self._lock = threading.Lock()
        self._prompts: Counter[str] = Counter()
        self._calls: list[ProviderRequest] = []
        self._free: float = math.inf
        self._gate = asyncio.Event()
        self._gate.set()
        self.waiting = 0

    def _admitted(self, call: ProviderRequest) -> Reply | None:
        with self._lock:
            self._prompts[call.prompt] += 1
            self._calls.append(call)
        return self._answer(call) if self._answer is not None else None

    @property
    def prompts(self) -> Counter[str]:
        """Admitted generation requests per prompt (a copy)."""
        with self._lock:
            return Counter(self._prompts)

    @property
    def calls(self) -> list[ProviderRequest]:
        """The admitted generation requests, in order (a copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def requests(self) -> int:
        """Finished requests of every kind, failures included."""
        return self.stats.requests_total

    def hold(self, free: int = 0) -> None:
        """Answer the next `free` requests, then hold the others until `release`."""
        with self._lock:
            self._free = free
        self._loop.call_soon_threadsafe(self._gate.clear)

    def release(self) -> None:
        """Answer the held requests and every later one without waiting."""
        with self._lock:
            self._free = math.inf
        self._loop.call_soon_threadsafe(self._gate.set)

    async def _wait_latency(self, request: Any, call: ProviderRequest) -> None:
        await super()._wait_latency(request, call)
        with self._lock:
            free = self._free > 0
            if free:
                self._free -= 1
        if free:
            return
        self.waiting += 1
        try:
            await self._gate.wait()
        finally:
            self.waiting -= 1


class SimulatorHost:
    """An event loop in a daemon thread that runs `RecordingSimulator`s for the tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="cli-test-simulators", daemon=True
        )
        self._thread.start()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def start(
        self,
        answer: Callable[[ProviderRequest], Reply | None] | None = None,
        **config: Any,
    ) -> RecordingSimulator:
        async def create() -> RecordingSimulator:
            # Built on the host loop: its gate belongs to that loop.
            simulator = RecordingSimulator(SimulatorConfig(**config), self.loop, answer)
            await simulator.start()
            return simulator

        return self._call(create())  # type: ignore[no-any-return]

    def stop(self, simulator: RecordingSimulator) -> None:
        simulator.release()
        self._call(simulator.stop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


StartSimulator = Callable[..., RecordingSimulator]


@contextlib.contextmanager
def simulators(host: SimulatorHost) -> Iterator[StartSimulator]:
    """Start simulators on `host`; every one is stopped on leaving."""
    started: list[RecordingSimulator] = []

    def start(
        answer: Callable[[ProviderRequest], Reply | None] | None = None, **config: Any
    ) -> RecordingSimulator:
        simulator = host.start(answer, **config)
        started.append(simulator)
        return simulator

    try:
        yield start
    finally:
        for simulator in started:
            host.stop(simulator)


@dataclass
class Result:
    """A finished ``abl`` subprocess."""

    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"abl {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def parse_jsonl(text: str, where: str = "output") -> list[dict[str, Any]]:
    """Every line of `text` as JSON (floats as `Decimal`); each must end with a newline."""
    if text and not text.endswith("\n"):
        pytest.fail(f"{where} does not end with a newline: {text[-200:]!r}")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rows.append(json.loads(line, parse_float=Decimal))
        except ValueError as exc:
            pytest.fail(f"{where} line {number} is not JSON ({exc}): {line!r}")
    return rows


class Cli:
    """Runs ``python -m async_batch_llm.cli`` in `directory`, as a user would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = cli_env()

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "async_batch_llm.cli", *args]

    def run(self, *args: str, stdin: str | None = None) -> Result:
        completed = subprocess.run(
            self.command(*args),
            cwd=self.directory,
            env=self.env,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
        return Result(args, completed.returncode, completed.stdout, completed.stderr)

    def run_all(self, *commands: Sequence[str]) -> list[Result]:
        """Run several commands at the same time (two cores: imports overlap)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(commands) or 1) as pool:
            return list(pool.map(lambda args: self.run(*args), commands))

    @contextlib.contextmanager
    def start(self, *args: str, name: str = "background") -> Iterator[Background]:
        """Start ``abl`` in the background (stdout and stderr go to files)."""
        stdout_path = self.directory / f"{name}.stdout"
        stderr_path = self.directory / f"{name}.stderr"
        with (
            stdout_path.open("w") as stdout,
            stderr_path.open("w") as stderr,
            subprocess.Popen(
                self.command(*args),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            ) as process,
        ):
            background = Background(args, process, stdout_path, stderr_path)
            try:
                yield background
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> Path:
        path = self.directory / name
        path.write_text(
            "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
            encoding="utf-8",
        )
        return path

    def read_jsonl(self, name: str | Path) -> list[dict[str, Any]]:
        path = self.directory / name
        return parse_jsonl(path.read_text(encoding="utf-8"), str(path))


@dataclass
class Background:
    """An ``abl`` subprocess started by `Cli.start`."""

    args: Sequence[str]
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self) -> Result:
        returncode = self.process.wait(SUBPROCESS_TIMEOUT)
        return Result(
            self.args,
            returncode,
            self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            self.stderr(),
        )
