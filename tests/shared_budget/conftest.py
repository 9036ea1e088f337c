"""Fixtures of the shared-budget tests: a real redis-server and the provider simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

redis = pytest.importorskip("redis")

from budget_support import SimulatorThread  # noqa: E402

from redis_support import RedisServer  # noqa: E402


@pytest.fixture(scope="module")
def redis_module() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_server(redis_module: RedisServer) -> RedisServer:
    """A running, empty redis-server (restarted if a test stopped it)."""
    if not redis_module.running:
        redis_module.start()
    client = redis.Redis.from_url(redis_module.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_module


@pytest.fixture
def start_simulator() -> Iterator[object]:
    started: list[SimulatorThread] = []

    def start(**config: object) -> SimulatorThread:
        simulator = SimulatorThread(**config)
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.close()
