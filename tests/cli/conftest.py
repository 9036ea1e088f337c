"""Fixtures of the ``abl`` command-line tests (the helpers are in ``test_cli_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_support import Cli, SimulatorHost, StartSimulator, simulators


@pytest.fixture(scope="session")
def simulator_host() -> Iterator[SimulatorHost]:
    """One event loop in a thread, serving every simulator of the session."""
    host = SimulatorHost()
    yield host
    host.close()


@pytest.fixture
def start_simulator(simulator_host: SimulatorHost) -> Iterator[StartSimulator]:
    """Start simulators (``SimulatorConfig`` options, plus ``answer``); stopped at teardown."""
    with simulators(simulator_host) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_simulator(simulator_host: SimulatorHost) -> Iterator[StartSimulator]:
    """`start_simulator` for module-scoped fixtures."""
    with simulators(simulator_host) as start:
        yield start


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command line, run in the test's own directory."""
    return Cli(tmp_path)


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The command line, run in a directory shared by one module's tests."""
    return Cli(tmp_path_factory.mktemp("abl"))
