"""What a checkpoint store holds and the protocol every store implements.

A store keeps one `CheckpointEntry` per item id and a small string-to-string metadata
table. The processor decides what an entry means (replay it, run the item again, report a
duplicate); a store only has to keep what it is given, durably, and hand it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol, runtime_checkable

__all__ = [
    "CheckpointEntry",
    "CheckpointReport",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointStore",
    "DuplicateItemError",
    "EntryState",
    "ResumePolicy",
]


class ResumePolicy(Enum):
    """Which stored outcomes a run with a checkpoint reuses instead of calling the provider."""

    REUSE_SUCCESSES = "reuse_successes"
    """Replay stored successes; run failed items again (the default)."""
    REUSE_ALL = "reuse_all"
    """Replay successes and the failures that say something about the item (a permanent
    error the provider gave for it). Timeouts, cancellations, rate-limit and quota failures,
    and configuration errors always run again."""
    NONE = "none"
    """Replay nothing: the store is emptied first and the run starts over."""


class EntryState(IntEnum):
    """Where an item stands in a store."""

    PENDING = 0
    """Taken from the source and handed to a worker; no outcome recorded yet. An entry
    still pending when a run starts belongs to a run that stopped before the item ended."""
    SUCCEEDED = 1
    """The item succeeded; `CheckpointEntry.payload` holds its output."""
    FAILED = 2
    """The item failed for a reason that concerns the item itself (replayed by
    `ResumePolicy.REUSE_ALL`)."""
    INTERRUPTED = 3
    """The item ended without an outcome that says anything about it (a timeout, a
    cancellation, a rate limit or quota that never let up, a configuration error): it
    always runs again."""


@dataclass(slots=True)
class CheckpointEntry:
    """One item's row in a store.

    Stores keep every field as given and return equal entries from `CheckpointStore.lookup`.
    """

    item_id: str
    prompt_hash: str
    """Hex digest of the prompt: an edited prompt does not match its old entry."""
    strategy: str
    """Fingerprint of the strategy that ran the item (provider, model, options)."""
    session: int
    """Number of the run that wrote the entry (the store's ``session`` metadata)."""
    state: EntryState
    codec: str | None = None
    """How `payload` encodes the output (``None``: there is none, or it could not be
    stored, and the item runs again)."""
    payload: bytes | None = None
    error: str | None = None
    """The failed result's error text."""
    usage: dict[str, int] = field(default_factory=dict)
    """Token counts of the item's attempts."""
    attempts: int = 0
    """Calls made for the item (`WorkItemResult.attempts`)."""
    category: str | None = None
    """The failed result's `WorkItemResult.error_category`."""


@dataclass
class CheckpointReport:
    """What a run with a checkpoint reused and what it ran (`ParallelBatchProcessor.
    checkpoint_report`, also logged at INFO when the run ends)."""

    store: str
    """The store (its path, for an SQLite store)."""
    session: int
    """Number of this run in the store (1 for the first)."""
    replayed: int = 0
    """Results read back instead of calling the provider."""
    unfinished: int = 0
    """Items the previous run had taken but not finished (queued, in flight, or finished
    but not yet committed when it stopped): called again now. After a crash these are the
    only items that may be paid for twice."""
    run_again: int = 0
    """Items with a stored outcome that is not reused: a failure (or, with
    `ResumePolicy.REUSE_ALL`, an interrupted one), an edited prompt, an output that could
    not be stored."""
    new: int = 0
    """Items the store had never seen."""
    recorded: int = 0
    """Outcomes this run committed."""


@runtime_checkable
class CheckpointStore(Protocol):
    """Where a run's outcomes are kept so that a rerun replays them.

    The processor calls `open` once per run, then `lookup` and `record` from a single task,
    never concurrently, each with batches of entries, and `close` at the end. Every method
    may raise; the run then stops with a `CheckpointError` and publishes nothing that was
    not recorded.
    """

    async def open(self, *, reset: bool = False) -> dict[str, str]:
        """Take the store for writing and return its metadata (empty for a new store).

        `reset` empties it first (entries and metadata). A store that another writer holds
        raises `CheckpointLockedError`.
        """
        ...

    async def save_meta(self, meta: Mapping[str, str]) -> None:
        """Set these metadata keys (others are kept); durable when it returns.

        Values can be large: in batch mode each provider job is recorded under a key of
        its own (``batch_job:<id>``), with the id and prompt hash of each of its requests.
        """
        ...

    async def lookup(self, item_ids: Sequence[str]) -> list[CheckpointEntry | None]:
        """The stored entry of each id, in the same order (``None`` where there is none)."""
        ...

    async def record(self, entries: Sequence[CheckpointEntry]) -> None:
        """Insert or replace the entries (by item id) in one commit; durable when it returns."""
        ...

    async def close(self) -> None:
        """Release the store; records nothing more. Calling it twice is harmless."""
        ...


class CheckpointError(RuntimeError):
    """The checkpoint store failed, or cannot be used for this run."""


class CheckpointLockedError(CheckpointError):
    """Another writer (process or store object) has the store open."""


class CheckpointMismatchError(CheckpointError):
    """The store holds the outcomes of a different run (another strategy, model, options or
    version); nothing is replayed or overwritten silently."""


class DuplicateItemError(ValueError):
    """An item id appeared twice in a run with a checkpoint (its entries would collide)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(
            f"Item id {item_id!r} appears more than once in this run; with a checkpoint every "
            "item needs an id of its own (its stored outcome is found by id)"
        )
        self.item_id = item_id
