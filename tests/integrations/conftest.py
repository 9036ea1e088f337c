"""Fixtures for the Ray integration: a local Ray cluster and a provider simulator that Ray's
worker processes can reach.

The cluster (2 CPUs, no dashboard, its sessions and logs in a temporary directory) is shared
by the tests of a module and shut down after them. The simulator serves from a thread of the
test process on 127.0.0.1, so actors in other processes call it over HTTP while the test
reads its statistics directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from async_batch_llm.testing.simulator import (
    ProviderSimulator,
    ReplyHook,
    SimulatorConfig,
    SimulatorStats,
)


class ThreadedSimulator:
    """A `ProviderSimulator` running on an event loop of its own, in a daemon thread.

    Its statistics are plain counters, read from the test's thread while it serves.
    """

    def __init__(self, config: SimulatorConfig, reply: ReplyHook | None = None) -> None:
        self._config = config
        self._reply = reply
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="provider-simulator", daemon=True
        )
        self._simulator: ProviderSimulator | None = None

    def start(self) -> None:
        self._thread.start()
        self._simulator = self.call(self._start)

    async def _start(self) -> ProviderSimulator:
        simulator = ProviderSimulator(self._config, reply=self._reply)
        await simulator.start()
        return simulator

    def call(self, make: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run the coroutine `make()` on the simulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    @property
    def simulator(self) -> ProviderSimulator:
        assert self._simulator is not None
        return self._simulator

    @property
    def openai_base_url(self) -> str:
        return self.simulator.openai_base_url

    @property
    def stats(self) -> SimulatorStats:
        return self.simulator.stats

    def stop(self) -> None:
        simulator = self._simulator
        if simulator is not None:
            with contextlib.suppress(Exception):
                self.call(simulator.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def threaded_simulator() -> Iterator[Callable[..., ThreadedSimulator]]:
    """Start `ThreadedSimulator`s with ``SimulatorConfig`` options; all stop after the test."""
    started: list[ThreadedSimulator] = []

    def launch(reply: ReplyHook | None = None, **options: Any) -> ThreadedSimulator:
        simulator = ThreadedSimulator(SimulatorConfig(**options), reply=reply)
        simulator.start()
        started.append(simulator)
        return simulator

    yield launch
    for simulator in started:
        simulator.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster with 2 CPUs for the module's tests (the ``ray`` module)."""
    ray = pytest.importorskip("ray")
    # Short: Ray puts unix sockets under it, and their paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="abl-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
