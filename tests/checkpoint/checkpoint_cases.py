"""Entries for the checkpoint store tests."""

from __future__ import annotations

from async_batch_llm.checkpoint import CheckpointEntry, EntryState


def make_entry(item_id: str, **fields: object) -> CheckpointEntry:
    """A succeeded entry for `item_id`; keyword arguments replace its fields."""
    values: dict[str, object] = {
        "prompt_hash": f"hash-of-{item_id}",
        "strategy": "model-a:temperature=0",
        "session": 1,
        "state": EntryState.SUCCEEDED,
        "codec": "json",
        "payload": f'{{"out": "{item_id}"}}'.encode(),
        "error": None,
        "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15},
    }
    values.update(fields)
    return CheckpointEntry(item_id, **values)  # type: ignore[arg-type]


def make_entries(prefix: str, count: int, **fields: object) -> list[CheckpointEntry]:
    return [make_entry(f"{prefix}-{i:05d}", **fields) for i in range(count)]
