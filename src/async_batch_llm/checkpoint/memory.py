"""`MemoryCheckpointStore`: a checkpoint store in a dict, for tests and for one process.

Its outcomes survive a second run with the same store object (a retry loop in one
program, a test), not the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from async_batch_llm.checkpoint.base import CheckpointEntry, CheckpointError, CheckpointLockedError

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore:
    """Keeps entries and metadata in memory; one run may have it open at a time."""

    def __init__(self) -> None:
        self.entries: dict[str, CheckpointEntry] = {}
        self.meta: dict[str, str] = {}
        self._open = False

    async def open(self, *, reset: bool = False) -> dict[str, str]:
        if self._open:
            msg = "This MemoryCheckpointStore is already open in another run"
            raise CheckpointLockedError(msg)
        self._open = True
        if reset:
            self.entries.clear()
            self.meta.clear()
        return dict(self.meta)

    async def save_meta(self, meta: Mapping[str, str]) -> None:
        self._check_open()
        self.meta.update(meta)

    async def lookup(self, item_ids: Sequence[str]) -> list[CheckpointEntry | None]:
        self._check_open()
        get = self.entries.get
        return [None if entry is None else _copy_entry(entry) for entry in map(get, item_ids)]

    async def record(self, entries: Sequence[CheckpointEntry]) -> None:
        self._check_open()
        stored = self.entries
        for entry in entries:
            stored[entry.item_id] = _copy_entry(entry)

    async def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            msg = "The MemoryCheckpointStore is not open"
            raise CheckpointError(msg)

    def __repr__(self) -> str:
        return f"<MemoryCheckpointStore entries={len(self.entries)}>"


def _copy_entry(entry: CheckpointEntry) -> CheckpointEntry:
    # By hand: dataclasses.replace() costs several times more, on every entry of a run.
    return CheckpointEntry(
        entry.item_id,
        entry.prompt_hash,
        entry.strategy,
        entry.session,
        entry.state,
        entry.codec,
        entry.payload,
        entry.error,
        dict(entry.usage),
        entry.attempts,
        entry.category,
    )
