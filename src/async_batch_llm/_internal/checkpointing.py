"""The processor's side of a checkpoint: what an entry means, and what is written when.

A `CheckpointSession` is one run's use of a `CheckpointStore`. For every batch of items
taken from the source it looks their entries up and decides, item by item: replay the
stored result, run the item (claiming it first, so that a rerun after a crash knows it
was taken), or stop the run (a duplicate id, or an entry written by another strategy).
Outcomes are turned into entries here and committed by the stream in groups.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from async_batch_llm._internal.values import BATCH_USAGE_KEY, WorkItemResult
from async_batch_llm.checkpoint._codec import UNSTORABLE, decode_output, encode_output
from async_batch_llm.checkpoint._identity import describe_strategy, fingerprint, prompt_hash
from async_batch_llm.checkpoint.base import (
    CheckpointEntry,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointReport,
    CheckpointStore,
    DuplicateItemError,
    EntryState,
    ResumePolicy,
)

__all__ = [
    "Admitted",
    "CheckpointSession",
    "Decision",
    "check_resume_options",
    "checkpoint_factory",
]

logger = logging.getLogger(__name__)

#: Metadata keys the processor writes.
SESSION_KEY: Final = "session"
VERSION_KEY: Final = "version"
STRATEGIES_KEY: Final = "strategies"
FORMAT_KEY: Final = "format"
FORMAT: Final = "async-batch-llm/1"

#: A decision for one item: the stored result to replay, or ``None`` to run it.
Decision = tuple[int, Any, WorkItemResult[Any, Any] | None]


class Admitted(NamedTuple):
    """What `CheckpointSession.admit` decided for a batch of items."""

    decisions: list[Decision]
    """Per item, in batch order: replay the stored result, or run it."""
    dropped: list[tuple[int, Any]]
    """The items after a duplicate id, which stopped the batch."""
    stop: Exception | None
    """The `DuplicateItemError` that stopped the batch, if one did."""
    claims: list[CheckpointEntry]
    """Entries claiming the items to run, to commit before they are queued."""


class CheckpointSession:
    """One run's use of a checkpoint store.

    Args:
        store: The store (not open yet).
        label: How messages name the store (its path).
        policy: Which stored outcomes are replayed.
        version: The user's version of the run; a store written with another one is
            refused.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        label: str,
        policy: ResumePolicy,
        version: str | None,
    ) -> None:
        self.store = store
        self.label = label
        self.policy = policy
        self.version = version or ""
        self.session = 0
        self.report = CheckpointReport(store=label, session=0)
        # Fingerprints by strategy object (held, so that an id is not reused), and the
        # descriptions of every fingerprint the store has seen, for mismatch messages.
        self._fingerprints: dict[int, tuple[object, str]] = {}
        self._last_fingerprint: tuple[object, str] = (None, "")
        self._described: dict[str, Any] = {}
        self._new_described = False
        self._opened = False
        # Prompt hash and fingerprint of each claimed item (by object), for its outcome.
        self._keys: dict[int, tuple[str, str]] = {}
        #: The store's metadata when it was opened (batch job records among them).
        self.meta: dict[str, str] = {}
        #: Ids of the items this run admitted whose entry a previous run left pending (taken
        #: but never finished): the ones a recorded batch job may still answer.
        self.unfinished_ids: set[str] = set()

    async def open(self) -> None:
        """Open the store and start a new session in it.

        Raises:
            CheckpointMismatchError: The store was written with another ``version``.
            CheckpointError: The store cannot be opened (locked, not a store, unreadable).
        """
        reset = self.policy is ResumePolicy.NONE
        meta = await _guarded(self.store.open(reset=reset), self.label, "open")
        self._opened = True
        self.meta = meta
        stored_format = meta.get(FORMAT_KEY)
        if stored_format not in (None, FORMAT):
            msg = (
                f"The checkpoint {self.label} was written in format {stored_format!r}; this "
                f"version of async-batch-llm reads {FORMAT!r}. Use a new checkpoint path."
            )
            raise CheckpointError(msg)
        previous = _int(meta.get(SESSION_KEY))
        stored_version = meta.get(VERSION_KEY, "")
        if previous and stored_version != self.version:
            msg = (
                f"The checkpoint {self.label} holds the results of a run with "
                f"checkpoint_version={stored_version or None!r}; this run has "
                f"checkpoint_version={self.version or None!r}. Nothing was replayed or "
                "overwritten. To start fresh, use a new checkpoint path, delete the file, or "
                "pass resume=ResumePolicy.NONE (which empties it); to reuse these results, "
                "run with the version they were made with."
            )
            raise CheckpointMismatchError(msg)
        try:
            self._described = json.loads(meta.get(STRATEGIES_KEY, "{}"))
        except ValueError:
            self._described = {}
        self.session = previous + 1
        self.report = CheckpointReport(store=self.label, session=self.session)
        await _guarded(
            self.store.save_meta(
                {
                    FORMAT_KEY: FORMAT,
                    SESSION_KEY: str(self.session),
                    VERSION_KEY: self.version,
                }
            ),
            self.label,
            "save_meta",
        )

    async def admit(self, batch: Sequence[tuple[int, Any]]) -> Admitted:
        """Decide for each ``(seq, item)`` whether to replay or run it.

        The items to run must be claimed (`Admitted.claims` committed, see `commit`)
        before they are queued, so that a rerun after a crash knows they were taken.

        Raises:
            CheckpointMismatchError: An item's entry was written by a different strategy.
            CheckpointError: The store failed.
        """
        ids = [item.item_id for _, item in batch]
        entries = await _guarded(self.store.lookup(ids), self.label, "lookup")
        decisions: list[Decision] = []
        claims: list[CheckpointEntry] = []
        seen: set[str] = set()
        report = self.report
        session = self.session
        policy = self.policy
        keys = self._keys
        stop: Exception | None = None
        dropped: list[tuple[int, Any]] = []
        for position, ((seq, item), entry) in enumerate(zip(batch, entries, strict=True)):
            item_id = item.item_id
            if item_id in seen or (entry is not None and entry.session == session):
                stop = DuplicateItemError(item_id)
                dropped = list(batch[position:])
                break
            seen.add(item_id)
            strategy_print = self.fingerprint_of(item.strategy)
            digest = prompt_hash(item.prompt)
            replay = None
            if entry is None:
                report.new += 1
            else:
                if entry.strategy != strategy_print:
                    raise self._mismatch(item, entry.strategy, strategy_print)
                replay = self._replay(entry, digest, item, policy)
                if replay is not None:
                    report.replayed += 1
                elif entry.state is EntryState.PENDING:
                    report.unfinished += 1
                    self.unfinished_ids.add(item_id)
                else:
                    report.run_again += 1
            if replay is None:
                claims.append(
                    CheckpointEntry(item_id, digest, strategy_print, session, EntryState.PENDING)
                )
                keys[id(item)] = (digest, strategy_print)
            decisions.append((seq, item, replay))
        if self._new_described:
            self._new_described = False
            described = json.dumps(self._described, sort_keys=True, separators=(",", ":"))
            await _guarded(
                self.store.save_meta({STRATEGIES_KEY: described}), self.label, "save_meta"
            )
        return Admitted(decisions, dropped, stop, claims)

    def entry_for(
        self, item: Any, result: WorkItemResult[Any, Any], replayable_failure: bool
    ) -> CheckpointEntry:
        """The entry that records `result` as the outcome of `item`."""
        usage: Any = result.token_usage
        known = self._keys.pop(id(item), None)
        digest, strategy_print = (
            known
            if known is not None
            else (prompt_hash(item.prompt), self.fingerprint_of(item.strategy))
        )
        # Positional: this runs for every outcome, and keywords cost more.
        entry = CheckpointEntry(
            item.item_id,
            digest,
            strategy_print,
            self.session,
            EntryState.SUCCEEDED,
            None,
            None,
            None,
            dict(usage) if type(usage) is dict else {},
            result.attempts,
        )
        if result.via == "batch":
            entry.usage[BATCH_USAGE_KEY] = 1
        if result.success:
            entry.codec, entry.payload = encode_output(result.output)
        else:
            entry.state = EntryState.FAILED if replayable_failure else EntryState.INTERRUPTED
            entry.error = result.error
            entry.category = result.error_category
        return entry

    async def save_meta(self, meta: dict[str, str]) -> None:
        """Write metadata keys (batch job records) durably."""
        await _guarded(self.store.save_meta(meta), self.label, "save_meta")

    async def commit(
        self, outcomes: Sequence[CheckpointEntry], claims: Sequence[CheckpointEntry] = ()
    ) -> None:
        """Record outcomes and claims durably, in one commit."""
        entries = [*outcomes, *claims] if claims and outcomes else (outcomes or claims)
        await _guarded(self.store.record(entries), self.label, "record")
        self.report.recorded += len(outcomes)

    async def close(self) -> None:
        """Release the store (errors are logged: every outcome was committed already)."""
        if not self._opened:
            return
        self._opened = False
        try:
            await self.store.close()
        except Exception:
            logger.warning("Closing the checkpoint %s failed", self.label, exc_info=True)

    def fingerprint_of(self, strategy: object) -> str:
        """The fingerprint of `strategy` (computed once per strategy object)."""
        last = self._last_fingerprint
        if last[0] is strategy:  # most runs have one strategy: no lookup per item
            return last[1]
        known = self._fingerprints.get(id(strategy))
        if known is not None and known[0] is strategy:
            self._last_fingerprint = known
            return known[1]
        description = describe_strategy(strategy)
        digest = fingerprint(description)
        self._fingerprints[id(strategy)] = self._last_fingerprint = (strategy, digest)
        if digest not in self._described:
            self._described[digest] = description
            self._new_described = True
        return digest

    def log_report(self) -> None:
        """One INFO line: what was replayed and what ran."""
        report = self.report
        logger.info(
            "Checkpoint %s (run %d): %d replayed, %d unfinished by the previous run and run "
            "again, %d stored outcome(s) run again, %d new; %d outcome(s) recorded",
            report.store,
            report.session,
            report.replayed,
            report.unfinished,
            report.run_again,
            report.new,
            report.recorded,
        )

    def _replay(
        self, entry: CheckpointEntry, digest: str, item: Any, policy: ResumePolicy
    ) -> WorkItemResult[Any, Any] | None:
        if entry.prompt_hash != digest or policy is ResumePolicy.NONE:
            return None
        state = entry.state
        if state is EntryState.SUCCEEDED:
            output = decode_output(entry.codec, entry.payload)
            if output is UNSTORABLE:
                return None
            usage: Any = dict(entry.usage)
            via = "batch" if usage.pop(BATCH_USAGE_KEY, 0) else "online"
            return WorkItemResult(
                item.item_id,
                True,
                output,
                None,
                item.context,
                usage,
                None,
                True,
                entry.attempts,
                None,
                via,
            )
        if state is EntryState.FAILED and policy is ResumePolicy.REUSE_ALL:
            failed_usage: Any = dict(entry.usage)
            failed_usage.pop(BATCH_USAGE_KEY, None)
            return WorkItemResult(
                item.item_id,
                False,
                None,
                entry.error,
                item.context,
                failed_usage,
                None,
                True,
                entry.attempts,
                entry.category,
            )
        return None

    def _mismatch(self, item: Any, stored: str, current: str) -> CheckpointMismatchError:
        before = self._described.get(stored)
        now = self._described.get(current)
        msg = (
            f"The checkpoint {self.label} holds a result for item {item.item_id!r} made by a "
            f"different strategy: stored {_describe(before, stored)}, now "
            f"{_describe(now, current)}. Nothing was replayed or overwritten. To start fresh, "
            "use a new checkpoint path, delete the file, or pass resume=ResumePolicy.NONE "
            "(which empties it); to reuse these results, run with the strategy settings "
            "they were made with."
        )
        return CheckpointMismatchError(msg)


def _describe(description: Any, digest: str) -> str:
    if description is None:
        return f"strategy {digest}"
    return json.dumps(description, sort_keys=True)


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


async def _guarded(awaitable: Any, label: str, operation: str) -> Any:
    """Await a store call; any failure becomes a `CheckpointError` naming the store."""
    try:
        return await awaitable
    except CheckpointError:
        raise
    except Exception as exc:
        msg = f"The checkpoint store {label} failed in {operation}(): {type(exc).__name__}: {exc}"
        raise CheckpointError(msg) from exc


def checkpoint_factory(
    checkpoint: object,
) -> tuple[Callable[[], CheckpointStore], str] | None:
    """How to get the store for each run from the processor's ``checkpoint=`` argument,
    and how messages name it; ``None`` when there is no checkpoint.

    A path gets a new `SQLiteCheckpointStore` per run; a store object is reused (opened
    and closed once per run).

    Raises:
        TypeError: `checkpoint` is neither a path nor a `CheckpointStore`.
    """
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str | os.PathLike):
        path = os.fspath(checkpoint)
        if not path:
            msg = "checkpoint must be a file path or a CheckpointStore, got an empty string"
            raise ValueError(msg)

        def sqlite_store() -> CheckpointStore:
            from async_batch_llm.checkpoint.sqlite import SQLiteCheckpointStore

            store: CheckpointStore = SQLiteCheckpointStore(path)
            return store

        return sqlite_store, str(path)
    if isinstance(checkpoint, CheckpointStore):
        store = checkpoint
        return (lambda: store), f"{type(store).__name__} {store!r}"
    msg = (
        "checkpoint must be a file path (an SQLite store is created there) or a "
        "CheckpointStore (open, save_meta, lookup, record and close methods), got "
        f"{type(checkpoint).__name__}"
    )
    raise TypeError(msg)


def check_resume_options(resume: object, version: object) -> None:
    """Raise TypeError for a `resume` that is not a `ResumePolicy` or a non-string version."""
    if not isinstance(resume, ResumePolicy):
        names = ", ".join(f"ResumePolicy.{policy.name}" for policy in ResumePolicy)
        msg = f"resume must be one of {names}, got {resume!r}"
        raise TypeError(msg)
    if version is not None and not isinstance(version, str):
        msg = f"checkpoint_version must be a string or None, got {type(version).__name__}"
        raise TypeError(msg)
