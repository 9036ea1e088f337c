"""Fixtures for the checkpoint store tests: a fresh store of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from async_batch_llm.checkpoint import (
    CheckpointStore,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    """A new, unopened store (closed again after the test)."""
    made: CheckpointStore
    if request.param == "memory":
        made = MemoryCheckpointStore()
    else:
        made = SQLiteCheckpointStore(tmp_path / "run.sqlite")
    yield made
    await made.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where an SQLite store's file goes (nothing there yet)."""
    return tmp_path / "run.sqlite"
