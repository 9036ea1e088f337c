"""`SQLiteCheckpointStore`: a checkpoint store in one SQLite file that survives the process.

Why it is built this way:

- **One worker thread.** SQLite calls block (disk writes, `fsync`, a busy foreign writer), and
  a blocked event loop stalls every request in flight. Each store owns a single thread that
  opens the connection and runs every statement, so the loop only awaits futures, and the
  calls of one store run in the order they were made without any locking of our own.
- **WAL journal.** A commit appends to the write-ahead log instead of rewriting pages, so
  writes are cheap and readers (the `sqlite3` command-line tool, `SQLiteCheckpointReader`)
  can read a consistent snapshot while the writer keeps going.
- **Group commit by batch.** The processor hands over outcomes in batches; each `record` is
  one transaction, so the cost of a commit is paid once per batch, not once per item.
- **A lock file.** SQLite would happily let two runs write interleaved outcomes into one file.
  An exclusive `flock` on `<path>.lock`, taken before the database is touched, makes a second
  writer fail at once with `CheckpointLockedError`; the kernel drops the lock when the holder
  dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from async_batch_llm.checkpoint.base import (
    CheckpointEntry,
    CheckpointError,
    CheckpointLockedError,
    EntryState,
)

if TYPE_CHECKING:
    from types import TracebackType

    from filelock import BaseFileLock

__all__ = ["SQLiteCheckpointReader", "SQLiteCheckpointStore"]

SCHEMA_VERSION = 1
"""The `PRAGMA user_version` this module writes and reads."""

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Long enough to ride out a reader's checkpoint or a brief foreign transaction, short enough
# that a writer stuck behind a foreign lock fails while someone is still watching.
_BUSY_TIMEOUT_S = 5.0
# SQLite's default bound on host parameters was 999 before 3.32; staying well under it keeps
# every supported build happy and the per-chunk statements few enough to stay cached.
_LOOKUP_CHUNK = 500
_WRITER_KEY = "_writer"
_THREAD_PREFIX = "async-batch-llm-checkpoint"

_COLUMNS = (
    "item_id, prompt_hash, strategy, session, state, codec, payload, error, usage, attempts, "
    "category"
)
# An ordinary (rowid) table, not WITHOUT ROWID: that layout keeps whole rows in the b-tree
# and pays for it with multi-kilobyte outputs (each interior cell holds a row) and with ids
# that arrive in random order (every row insert dirties a full-size leaf page). Measured with
# 2 KB payloads, record and lookup ran 1.5-4 times faster this way; the primary key index
# stays small. NOT NULL: a rowid table's primary key would accept NULL otherwise.
_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE entries (
    item_id TEXT PRIMARY KEY NOT NULL,
    prompt_hash TEXT NOT NULL,
    strategy TEXT NOT NULL,
    session INTEGER NOT NULL,
    state INTEGER NOT NULL,
    codec TEXT,
    payload BLOB,
    error TEXT,
    usage TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    category TEXT
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_UPSERT_ENTRY = (
    f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(item_id) DO UPDATE SET prompt_hash = excluded.prompt_hash, "
    "strategy = excluded.strategy, session = excluded.session, state = excluded.state, "
    "codec = excluded.codec, payload = excluded.payload, error = excluded.error, "
    "usage = excluded.usage, attempts = excluded.attempts, category = excluded.category"
)
# A claim (a PENDING entry without output) binds only what varies: binding parameters is
# most of the cost of writing a row, and a run claims every item it calls.
_UPSERT_CLAIM = (
    f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, {EntryState.PENDING.value}, "
    "NULL, NULL, NULL, '{}', 0, NULL) "
    "ON CONFLICT(item_id) DO UPDATE SET prompt_hash = excluded.prompt_hash, "
    "strategy = excluded.strategy, session = excluded.session, state = excluded.state, "
    "codec = NULL, payload = NULL, error = NULL, usage = '{}', attempts = 0, category = NULL"
)
_UPSERT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_STATES = {state.value: state for state in EntryState}
# Keyed by member; equal ints (an `IntEnum` hashes as its value) find the same code.
_STATE_CODES = {state: state.value for state in EntryState}
_json_encoder = json.JSONEncoder(separators=(",", ":"))
try:
    import _json
except ImportError:  # pragma: no cover - an interpreter without CPython's accelerator
    _encode_usage: Callable[[dict[str, int]], str] = _json_encoder.encode
    _decode_usage: Callable[[str], Any] = json.loads
else:
    # For a dict of three counts, `JSONEncoder.encode` and `json.loads` spend more time
    # setting up than converting; the accelerator objects they build on, made once, halve
    # the cost of the usage column on the hot paths of `record` and `lookup`.
    _c_encode = _json.make_encoder(
        None,  # no cycle check: counts cannot refer back to their dict
        _json_encoder.default,
        _json.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    _c_scan = _json.make_scanner(cast(Any, json.JSONDecoder()))

    def _encode_usage(usage: dict[str, int]) -> str:
        return "".join(_c_encode(usage, 0))

    def _decode_usage(text: str) -> Any:
        return _c_scan(text, 0)[0]


_Row = tuple[Any, ...]
_A = TypeVar("_A")
_R = TypeVar("_R")


class SQLiteCheckpointStore:
    """A checkpoint store in an SQLite file: outcomes survive a crash, a `kill -9`, a reboot.

    One process writes a store at a time (a lock file `<path>.lock` enforces it, see `open`);
    any number may read it meanwhile with `SQLiteCheckpointReader` or the `sqlite3` tool.
    All database work runs on one thread the store owns, never on the event loop.

    Durability: `record` and `save_meta` return after their transaction committed. With the
    default `synchronous="NORMAL"` a commit is in the operating system's hands when it
    returns: it survives the process being killed at any point, but a power loss or kernel
    crash may lose the last commits (never corrupt the file: WAL mode keeps it consistent).
    `synchronous="FULL"` also waits for the disk (`fsync`) at each commit, so committed
    outcomes survive a power loss too, at the cost of one flush per batch.

    Metadata keys that start with `_` are the store's own (the writer's identity is kept under
    `_writer`); `open` does not return them and `save_meta` refuses them.

    Args:
        path: The database file. Its directory must exist; the file is created on the first
            `open`. The lock file `<path>.lock` is created next to it and left in place.
        synchronous: SQLite's `PRAGMA synchronous` for the connection: `"NORMAL"` (survives
            process kills) or `"FULL"` (survives power loss as well).

    Raises:
        TypeError: `path` is not a `str` or `os.PathLike[str]`, or `synchronous` not a `str`.
        ValueError: `path` is empty or `":memory:"`, or `synchronous` is not one of the two.

    Example:
        ```python
        from async_batch_llm.checkpoint import CheckpointEntry, EntryState, SQLiteCheckpointStore

        async def main() -> None:
            store = SQLiteCheckpointStore("run.sqlite")
            meta = await store.open()
            try:
                await store.record([CheckpointEntry("a", "h", "s", 1, EntryState.PENDING)])
                print(await store.lookup(["a", "b"]))
            finally:
                await store.close()
        ```
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self._path = _validate_path(path)
        # Checked at run time too: the annotation does not stop untyped callers.
        if not isinstance(cast(object, synchronous), str):
            msg = f"synchronous must be 'NORMAL' or 'FULL', not {type(synchronous).__name__}"
            raise TypeError(msg)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            msg = f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}"
            raise ValueError(msg)
        self._synchronous = synchronous.upper()
        self._lock_path = Path(f"{self._path}.lock")
        # Set while open or opening; None once closed (or never opened).
        self._executor: ThreadPoolExecutor | None = None
        self._is_open = False
        # Only ever touched on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._lock: BaseFileLock | None = None

    @property
    def path(self) -> Path:
        """The database file (made absolute when the store was created)."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The `PRAGMA synchronous` level commits use: `"NORMAL"` or `"FULL"`."""
        return self._synchronous

    async def open(self, *, reset: bool = False) -> dict[str, str]:
        """Take the store for writing and return its metadata (empty for a new store).

        The lock file is taken before the database is read, so a second writer fails here
        without having touched anything. A new or empty file gets the schema; an existing
        one must be a store of this library with the same schema version.

        Args:
            reset: Delete every entry and metadata key first (in one transaction).

        Returns:
            The metadata keys saved with `save_meta`, without the store's own `_` keys.

        Raises:
            CheckpointLockedError: Another process, or another store object in this
                process, has the file open for writing (or this object is open already).
            CheckpointError: The path is a directory or its directory does not exist; the
                file is not an SQLite database, is another program's database, or has a
                different schema version; or SQLite failed.
        """
        if self._executor is not None:
            msg = (
                f"This SQLiteCheckpointStore ({self._path}) is already open; close it "
                "before opening it again"
            )
            raise CheckpointLockedError(msg)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_THREAD_PREFIX)
        self._executor = executor
        job = executor.submit(self._open_sync, reset)
        try:
            meta = await asyncio.wrap_future(job)
        except BaseException:
            self._executor = None
            if not job.done():
                # Cancelled while the open runs on: whatever it takes is released after it.
                executor.submit(self._close_sync)
            executor.shutdown(wait=False)
            raise
        if self._executor is not executor:  # `close` ran while this open was in flight
            msg = f"The SQLiteCheckpointStore for {self._path} was closed while it opened"
            raise CheckpointError(msg)
        self._is_open = True
        return meta

    async def save_meta(self, meta: Mapping[str, str]) -> None:
        """Set these metadata keys (others are kept) in one commit; durable when it returns.

        Raises:
            TypeError: A key or value is not a `str`.
            ValueError: A key starts with `_` (those are the store's own).
            CheckpointError: The store is not open, or SQLite failed.
        """
        items = list(meta.items())
        for key, value in cast("list[tuple[object, object]]", items):
            if not isinstance(key, str) or not isinstance(value, str):
                msg = f"Checkpoint metadata maps str to str, got {key!r}: {value!r}"
                raise TypeError(msg)
            if key.startswith("_"):
                msg = f"Checkpoint metadata keys starting with '_' are reserved, got {key!r}"
                raise ValueError(msg)
        await self._run(self._save_meta_sync, items)

    async def lookup(self, item_ids: Sequence[str]) -> list[CheckpointEntry | None]:
        """The stored entry of each id, in the same order (`None` where there is none).

        An id given twice gets an entry (a separate object) at both positions.

        Raises:
            CheckpointError: The store is not open, or SQLite failed.
        """
        return await self._run(self._lookup_sync, list(item_ids))

    async def record(self, entries: Sequence[CheckpointEntry]) -> None:
        """Insert or replace the entries (by item id) in one commit; durable when it returns.

        Of two entries with the same id in one call, the later one is kept. A call that is
        cancelled once its transaction has started still commits it.

        Raises:
            ValueError: An entry's state is not an `EntryState` (nothing is recorded).
            TypeError: An entry's usage holds something JSON cannot encode.
            CheckpointError: The store is not open, or SQLite failed (the transaction is
                rolled back: none of the entries is recorded).
        """
        await self._run(self._record_sync, list(entries))

    async def close(self) -> None:
        """Release the store: close the database, the lock and the thread.

        Calling it twice, or after an `open` that failed, is harmless.

        Raises:
            CheckpointError: SQLite failed to close the database (the lock is released
                and the thread stopped anyway).
        """
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        self._is_open = False
        job = executor.submit(self._close_sync)
        # No new work after this one; queued calls still run first, in order.
        executor.shutdown(wait=False)
        # Shielded: a cancelled close must still release the lock.
        await asyncio.shield(asyncio.wrap_future(job))
        # The thread is idle now, so joining it takes no time.
        executor.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "open" if self._is_open else "closed"
        return f"<SQLiteCheckpointStore {str(self._path)!r} {state}>"

    async def _run(self, func: Callable[[_A], _R], arg: _A) -> _R:
        executor = self._executor
        if executor is None or not self._is_open:
            msg = f"The SQLiteCheckpointStore for {self._path} is not open"
            raise CheckpointError(msg)
        return await asyncio.get_running_loop().run_in_executor(executor, func, arg)

    # Everything below runs on the worker thread.

    def _open_sync(self, reset: bool) -> dict[str, str]:
        path = self._path
        if path.is_dir():
            msg = f"Checkpoint path {path} is a directory, not a database file"
            raise CheckpointError(msg)
        if not path.parent.is_dir():
            msg = f"Cannot create checkpoint store {path}: directory {path.parent} does not exist"
            raise CheckpointError(msg)
        self._lock = _take_lock(self._lock_path, path)
        try:
            _check_file_header(path)
            with self._sqlite_errors("open"):
                conn = sqlite3.connect(
                    path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
                )
            self._conn = conn
            with self._sqlite_errors("open"):
                new = _check_schema(conn, path)
                # WAL is a property of the file; it must be set before any write.
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    msg = (
                        f"Checkpoint store {path}: SQLite cannot use WAL mode on this "
                        f"filesystem (journal_mode is {mode!r}); use a local disk"
                    )
                    raise CheckpointError(msg)
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                # The default 2 MB page cache makes lookups in a large store go to disk.
                conn.execute("PRAGMA cache_size=-16384")
                # Each checkpoint (copying the log into the database) syncs both files, even
                # with synchronous=NORMAL; at the default of every 1000 pages (4 MB) that was
                # a third to a half of the time `record` took. The log is reused, not grown,
                # so this caps it near 40 MB; the last connection to close empties it.
                conn.execute("PRAGMA wal_autocheckpoint=10000")
                writer = f"{os.getpid()}@{socket.gethostname()}"

                def prepare(conn: sqlite3.Connection) -> None:
                    if new:
                        _create_schema(conn)
                    if reset:
                        conn.execute("DELETE FROM entries")
                        conn.execute("DELETE FROM meta")
                    conn.execute(_UPSERT_META, (_WRITER_KEY, writer))

                _transaction(conn, prepare)
                return _read_meta(conn)
        except BaseException:
            self._close_sync()
            raise

    def _save_meta_sync(self, items: list[tuple[str, str]]) -> None:
        conn = self._connection()
        if not items:
            return
        with self._sqlite_errors("saving metadata"):
            _transaction(conn, lambda conn: conn.executemany(_UPSERT_META, items))

    def _lookup_sync(self, item_ids: list[str]) -> list[CheckpointEntry | None]:
        return _lookup(self._connection(), item_ids, self._path)

    def _record_sync(self, entries: list[CheckpointEntry]) -> None:
        conn = self._connection()
        if not entries:
            return
        encode, codes = _encode_usage, _STATE_CODES
        pending = EntryState.PENDING
        # Runs of consecutive claims and of other entries, in order (the last entry of an
        # id wins), each written with its own statement.
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        row: tuple[Any, ...]
        try:
            for e in entries:
                if (
                    e.state is pending
                    and e.codec is None
                    and e.payload is None
                    and e.error is None
                    and not e.usage
                    and not e.attempts
                ):
                    sql, row = _UPSERT_CLAIM, (e.item_id, e.prompt_hash, e.strategy, e.session)
                else:
                    sql = _UPSERT_ENTRY
                    row = (
                        e.item_id,
                        e.prompt_hash,
                        e.strategy,
                        e.session,
                        codes[e.state],
                        e.codec,
                        e.payload,
                        e.error,
                        encode(e.usage) if e.usage else "{}",
                        e.attempts,
                        e.category,
                    )
                if runs and runs[-1][0] is sql:
                    runs[-1][1].append(row)
                else:
                    runs.append((sql, [row]))
        except KeyError as exc:
            msg = f"A checkpoint entry's state must be an EntryState, got {exc.args[0]!r}"
            raise ValueError(msg) from None

        def write(conn: sqlite3.Connection) -> None:
            for sql, rows in runs:
                _write_rows(conn, sql, rows)

        with self._sqlite_errors("recording entries"):
            _transaction(conn, write)

    def _close_sync(self) -> None:
        conn, lock = self._conn, self._lock
        self._conn = self._lock = None
        try:
            if conn is not None:
                with self._sqlite_errors("close"):
                    conn.close()
        finally:
            if lock is not None:
                lock.release()

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:  # closed while this call was queued behind `close`
            msg = f"The SQLiteCheckpointStore for {self._path} is not open"
            raise CheckpointError(msg)
        return conn

    @contextmanager
    def _sqlite_errors(self, action: str) -> Iterator[None]:
        with _sqlite_errors(self._path, action):
            yield


class SQLiteCheckpointReader:
    """Reads a store's file without taking it: works while a writer has it open.

    The connection is read-only and takes no lock file. Each call sees the transactions
    committed when it starts.

    Args:
        path: The database file of an `SQLiteCheckpointStore`.

    Raises:
        TypeError: `path` is not a `str` or `os.PathLike[str]`.
        CheckpointError: There is no file, or it is not a store of this schema version.

    Example:
        ```python
        from async_batch_llm.checkpoint import SQLiteCheckpointReader

        with SQLiteCheckpointReader("run.sqlite") as reader:
            print(reader.count_by_state(), reader.meta())
            failed = [e.item_id for e in reader.entries() if e.error is not None]
        ```
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = _validate_path(path)
        if not self._path.is_file():
            msg = f"No checkpoint store at {self._path}"
            raise CheckpointError(msg)
        conn = _connect_reader(self._path)
        if conn is None:
            msg = f"{self._path} is an empty database, not a checkpoint store"
            raise CheckpointError(msg)
        self._conn = conn

    @classmethod
    def _if_written(cls, path: Path) -> SQLiteCheckpointReader | None:
        """A reader of the store at `path`, or ``None`` while it was created (by a writer
        opening it) but holds no store yet; raises as the constructor does otherwise."""
        if not path.is_file():
            return None
        conn = _connect_reader(path)
        if conn is None:
            return None
        reader = cls.__new__(cls)
        reader._path, reader._conn = path, conn
        return reader

    def meta(self) -> dict[str, str]:
        """The metadata keys saved with `save_meta` (without the store's own `_` keys)."""
        with _sqlite_errors(self._path, "reading metadata"):
            return _read_meta(self._conn)

    @property
    def writer(self) -> str | None:
        """`"<pid>@<host>"` of the last process that opened the store for writing."""
        with _sqlite_errors(self._path, "reading metadata"):
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = ?", (_WRITER_KEY,)
            ).fetchone()
        return None if row is None else str(row[0])

    def lookup(self, item_ids: Sequence[str]) -> list[CheckpointEntry | None]:
        """The entry of each of `item_ids` (``None`` for an id the store does not hold)."""
        return _lookup(self._conn, list(item_ids), self._path)

    def entries(self, *, outputs: bool = True) -> Iterator[CheckpointEntry]:
        """Every entry, in item id order.

        Args:
            outputs: Read the stored outputs too; ``False`` leaves `CheckpointEntry.codec`
                and `CheckpointEntry.payload` ``None`` and reads much less (a report).
        """
        columns = _COLUMNS if outputs else _COLUMNS.replace("codec, payload", "NULL, NULL")
        with _sqlite_errors(self._path, "reading entries"):
            cursor = self._conn.execute(f"SELECT {columns} FROM entries ORDER BY item_id")
            while rows := cursor.fetchmany(_LOOKUP_CHUNK):
                for entry in _to_entries(rows, self._path):
                    assert entry is not None
                    yield entry

    def count_by_state(self) -> dict[EntryState, int]:
        """How many entries are in each state (every state is a key, possibly with 0)."""
        counts = dict.fromkeys(EntryState, 0)
        with _sqlite_errors(self._path, "counting entries"):
            for state, count in self._conn.execute(
                "SELECT state, count(*) FROM entries GROUP BY state"
            ):
                counts[_state(state, self._path)] = count
        return counts

    def close(self) -> None:
        """Close the connection; calling it twice is harmless."""
        self._conn.close()

    def __enter__(self) -> SQLiteCheckpointReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLiteCheckpointReader {str(self._path)!r}>"


def _validate_path(path: object) -> Path:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        msg = f"A checkpoint path is a str or os.PathLike[str], not {type(path).__name__}"
        raise TypeError(msg)
    if path in ("", ":memory:"):
        msg = (
            f"{path!r} is not a file path; for a store that lives in memory use "
            "MemoryCheckpointStore"
        )
        raise ValueError(msg)
    return Path(os.path.abspath(path))


def _take_lock(lock_path: Path, path: Path) -> BaseFileLock:
    # Imported here: filelock takes longer to import than the rest of this package.
    import filelock

    # No soft fallback: a soft lock survives a killed writer, which would turn every crash
    # into a manual clean-up. Where flock is missing, WAL (shared memory) fails as well.
    lock = filelock.FileLock(lock_path, timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        # filelock reports a lock file it cannot create as held (a Timeout): find out first.
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644))
        lock.acquire()
    except filelock.Timeout:
        holder = _describe_writer(path)
        msg = (
            f"Checkpoint store {path} is locked: another process or another store object in "
            f"this process has it open for writing{holder}. Readers are fine while it runs "
            "(the sqlite3 command-line tool, or SQLiteCheckpointReader); a writer that was "
            f"killed releases the lock automatically. Lock file: {lock_path}"
        )
        raise CheckpointLockedError(msg) from None
    except OSError as exc:
        msg = f"Cannot take the lock file {lock_path} of checkpoint store {path}: {exc}"
        raise CheckpointError(msg) from exc
    return lock


def _describe_writer(path: Path) -> str:
    """`" (pid N on host H)"` from the holder's `_writer` key, or `""` if it cannot be read."""
    try:
        with open(path, "rb") as file:
            if file.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                return ""
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_WRITER_KEY,)).fetchone()
        finally:
            conn.close()
    except Exception:  # best effort: the message is complete without it
        return ""
    if row is None:
        return ""
    pid, _, host = str(row[0]).partition("@")
    if pid == str(os.getpid()) and host == socket.gethostname():
        return f" (this process, pid {pid}, holds it through another store object)"
    return f" (pid {pid} on host {host})" if host else f" (pid {pid})"


def _connect_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the store at `path`, ``None`` if the database is empty."""
    _check_file_header(path)
    with _sqlite_errors(path, "open for reading"):
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        with _sqlite_errors(path, "open for reading"):
            empty = _check_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    if empty:
        conn.close()
        return None
    return conn


def _lookup(
    conn: sqlite3.Connection, item_ids: list[str], path: Path
) -> list[CheckpointEntry | None]:
    """The entry of each of `item_ids` in the store behind `conn` (``None``: not held)."""
    unique = list(dict.fromkeys(item_ids))
    found: dict[str, _Row] = {}
    with _sqlite_errors(path, "lookup"):
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            # One row holding them all as JSON: SQLite releases the GIL per row fetched,
            # and taking it back from a busy event loop costs up to 5 ms.
            (packed,) = conn.execute(_lookup_sql(len(chunk)), chunk).fetchone()
            try:
                for row in json.loads(packed):
                    payload = row[6]
                    if payload is not None:
                        row[6] = bytes.fromhex(payload)
                    found[row[0]] = row
            except (ValueError, TypeError, IndexError) as exc:
                msg = f"Checkpoint store {path} holds an entry that cannot be read back: {exc!r}"
                raise CheckpointError(msg) from exc
    get = found.get
    rows = [get(item_id) for item_id in item_ids]
    if len(unique) < len(item_ids):
        # An id given twice: each position gets its own entry, usage included.
        rows = [None if row is None else (*row[:8], _copy_usage(row[8]), *row[9:]) for row in rows]
    return _to_entries(rows, path)


def _copy_usage(usage: Any) -> Any:
    return dict(usage) if type(usage) is dict else usage


def _check_file_header(path: Path) -> None:
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"Cannot read checkpoint store {path}: {exc}"
        raise CheckpointError(msg) from exc
    # An empty file is an empty database to SQLite; anything else must say it is one.
    if header and header != _SQLITE_MAGIC:
        msg = (
            f"{path} is not an SQLite database, so it is not a checkpoint store; it was left "
            "untouched. Use another path for the checkpoint"
        )
        raise CheckpointError(msg)


def _check_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the database is empty (new); raises unless it is a store of this version."""
    # One read transaction: a writer creating the store between two separate reads would
    # make a version of 0 meet the new tables, which is how another program's file looks.
    conn.execute("BEGIN")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.execute("COMMIT")
    if version == 0:
        if not tables:
            return True
        msg = (
            f"{path} is an SQLite database of another program (tables: "
            f"{', '.join(sorted(tables))}), not a checkpoint store; it was left untouched. "
            "Use another path for the checkpoint"
        )
        raise CheckpointError(msg)
    if version != SCHEMA_VERSION:
        msg = (
            f"Checkpoint store {path} has schema version {version}, but this version of "
            f"async-batch-llm reads and writes schema version {SCHEMA_VERSION}. Use a new "
            "path for this run (or the async-batch-llm version that wrote the file to "
            "read it)"
        )
        raise CheckpointError(msg)
    if not {"meta", "entries"} <= tables:
        msg = (
            f"{path} says it has schema version {version} but lacks the checkpoint tables; "
            "it is not a checkpoint store. Use another path for the checkpoint"
        )
        raise CheckpointError(msg)
    return False


def _create_schema(conn: sqlite3.Connection) -> None:
    # executescript would commit the open transaction first; creating table by table keeps
    # the schema, the version and the writer key in one atomic commit.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], object]) -> None:
    # IMMEDIATE takes the write lock up front, so a foreign writer makes us wait (up to the
    # busy timeout) at BEGIN rather than fail halfway through the batch.
    conn.execute("BEGIN IMMEDIATE")
    try:
        work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error says more; SQLite rolls back on close anyway.
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {
        key: value
        for key, value in conn.execute("SELECT key, value FROM meta ORDER BY key")
        if not key.startswith("_")
    }


_lookup_statements: dict[int, str] = {}


#: Rows per multi-row INSERT (within SQLite's default limit of 32,766 parameters).
_ROWS_PER_INSERT = 2_000
_insert_statements: dict[tuple[str, int], str] = {}


def _write_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Upsert `rows` with `sql` (a one-row upsert), many rows per statement.

    executemany() runs one statement per row, and SQLite releases the GIL around each:
    while the event loop is busy, taking it back costs this thread up to the interpreter's
    switch interval (5 ms) per row. A statement with 2,000 rows gives it up once.
    """
    values_at = sql.index(" VALUES (")
    row_sql_end = sql.index(")", values_at + 9) + 1
    head, row_sql, tail = sql[:values_at], sql[values_at + 8 : row_sql_end], sql[row_sql_end:]
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        key = (sql, len(chunk))
        statement = _insert_statements.get(key)
        if statement is None:
            # "WHERE true" is not needed for VALUES; the ON CONFLICT clause applies per row.
            statement = f"{head} VALUES {', '.join([row_sql] * len(chunk))}{tail}"
            if len(_insert_statements) > 64:
                _insert_statements.clear()
            _insert_statements[key] = statement
        conn.execute(statement, [value for row in chunk for value in row])


def _lookup_sql(count: int) -> str:
    sql = _lookup_statements.get(count)
    if sql is None:
        placeholders = ", ".join("?" * count)
        sql = (
            "SELECT json_group_array(json_array(item_id, prompt_hash, strategy, session, "
            "state, codec, iif(payload IS NULL, NULL, hex(payload)), error, "
            # The usage as an object inside the packed row, decoded with it in one pass;
            # text that is not JSON stays text and fails as an unreadable entry.
            "iif(json_valid(usage), json(usage), usage), attempts, category)) "
            f"FROM entries WHERE item_id IN ({placeholders})"
        )
        _lookup_statements[count] = sql
    return sql


def _to_entries(rows: list[_Row | None], path: Path) -> list[CheckpointEntry | None]:
    """Entries from rows in `_COLUMNS` order (`None` stays `None`)."""
    # One comprehension, no call per row: this is most of the Python time a lookup takes.
    entry, states = CheckpointEntry, _STATES
    try:
        return [
            None
            if row is None
            else entry(
                row[0],
                row[1],
                row[2],
                row[3],
                states[row[4]],
                row[5],
                row[6],
                row[7],
                row[8] if type(row[8]) is dict else _usage_of(row[8]),
                row[9],
                row[10],
            )
            for row in rows
        ]
    except (KeyError, ValueError, StopIteration) as exc:
        msg = f"Checkpoint store {path} holds an entry that cannot be read back: {exc!r}"
        raise CheckpointError(msg) from exc


def _usage_of(stored: Any) -> dict[str, int]:
    """The usage column's text (or a packed lookup's non-object value) as a dict."""
    if stored == "{}":
        return {}
    usage = _decode_usage(stored) if type(stored) is str else stored
    if type(usage) is not dict:
        raise ValueError(f"usage is not a JSON object: {stored!r}")
    return usage


def _state(value: int, path: Path) -> EntryState:
    state = _STATES.get(value)
    if state is None:
        msg = f"Checkpoint store {path} holds an entry in unknown state {value!r}"
        raise CheckpointError(msg)
    return state


@contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", None)
        detail = f"{exc} ({name})" if name else str(exc)
        msg = f"Checkpoint store {path}: {action} failed: {detail}"
        raise CheckpointError(msg) from exc
