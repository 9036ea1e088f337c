"""Checkpoint stores: durable outcomes, so that a rerun replays instead of paying again.

Pass ``checkpoint="run.sqlite"`` (or a store object) to `ParallelBatchProcessor`; see the
guide *Streaming and checkpoints*.
"""

from __future__ import annotations

from async_batch_llm.checkpoint.base import (
    CheckpointEntry,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    CheckpointReport,
    CheckpointStore,
    DuplicateItemError,
    EntryState,
    ResumePolicy,
)
from async_batch_llm.checkpoint.memory import MemoryCheckpointStore
from async_batch_llm.checkpoint.sqlite import SQLiteCheckpointReader, SQLiteCheckpointStore

__all__ = [
    "CheckpointEntry",
    "CheckpointReport",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointStore",
    "DuplicateItemError",
    "EntryState",
    "MemoryCheckpointStore",
    "SQLiteCheckpointReader",
    "SQLiteCheckpointStore",
    "ResumePolicy",
]
