"""The SQLite store itself: its file, its refusals, its lock, its reader, its thread, its errors."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import filelock
import pytest
from checkpoint_cases import make_entries, make_entry

from async_batch_llm.checkpoint import (
    CheckpointError,
    CheckpointLockedError,
    EntryState,
    SQLiteCheckpointReader,
    SQLiteCheckpointStore,
)
from async_batch_llm.checkpoint import sqlite as sqlite_module


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own (closed on exit, so no ResourceWarning)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


# Blocking file reads are fine in these tests; the helpers keep ruff's async rules quiet.
def contents(path: Path) -> bytes:
    return path.read_bytes()


def exists(path: Path | str) -> bool:
    return os.path.exists(path)


async def opened(path: Path, **options: Any) -> SQLiteCheckpointStore:
    store = SQLiteCheckpointStore(path, **options)
    await store.open()
    return store


class TestFile:
    async def test_new_file_is_in_wal_mode_with_schema_version_1(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            with connect(db_path) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
                assert {"meta", "entries"} <= tables
        finally:
            await store.close()

    async def test_usage_is_stored_as_compact_json(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            await store.record(
                [
                    make_entry("a", usage={"input_tokens": 5, "output_tokens": 7}),
                    make_entry("b", usage={}),
                ]
            )
            with connect(db_path) as conn:
                rows = dict(conn.execute("SELECT item_id, usage FROM entries"))
            assert rows == {"a": '{"input_tokens":5,"output_tokens":7}', "b": "{}"}
        finally:
            await store.close()

    async def test_writer_is_recorded_but_not_returned_as_metadata(self, db_path: Path) -> None:
        store = await opened(db_path)
        await store.save_meta({"session": "1"})
        await store.close()
        with connect(db_path) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {"session": "1", "_writer": f"{os.getpid()}@{socket.gethostname()}"}
        assert await store.open() == {"session": "1"}
        await store.close()

    async def test_reserved_and_non_string_metadata_are_refused(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            with pytest.raises(ValueError, match="reserved"):
                await store.save_meta({"_writer": "me"})
            with pytest.raises(TypeError):
                await store.save_meta({"session": 1})  # type: ignore[dict-item]
        finally:
            await store.close()

    async def test_entry_with_a_state_that_is_no_entry_state_is_refused(
        self, db_path: Path
    ) -> None:
        store = await opened(db_path)
        try:
            with pytest.raises(ValueError, match="EntryState"):
                await store.record([make_entry("ok"), make_entry("bad", state=7)])
            assert await store.lookup(["ok"]) == [None]
        finally:
            await store.close()

    async def test_empty_existing_file_becomes_a_store(self, db_path: Path) -> None:
        _empty_file(db_path)
        store = await opened(db_path)
        await store.record([make_entry("a")])
        await store.close()
        with SQLiteCheckpointReader(db_path) as reader:
            assert list(reader.entries()) == [make_entry("a")]

    async def test_full_synchronous_records_and_reads_back(self, db_path: Path) -> None:
        store = await opened(db_path, synchronous="FULL")
        assert store.synchronous == "FULL"
        try:
            await store.record(make_entries("f", 10))
            assert await store.lookup(["f-00009"]) == [make_entry("f-00009")]
        finally:
            await store.close()

    async def test_file_is_intact_after_use(self, db_path: Path) -> None:
        store = await opened(db_path)
        for batch in range(5):
            await store.record(make_entries(f"b{batch}", 300))
        await store.close()
        with connect(db_path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1500


class TestPath:
    @pytest.mark.parametrize("path", [b"run.sqlite", 42, None])
    def test_path_of_the_wrong_type_is_a_type_error(self, path: object) -> None:
        with pytest.raises(TypeError, match=r"os\.PathLike"):
            SQLiteCheckpointStore(path)  # type: ignore[arg-type]

    @pytest.mark.parametrize("path", ["", ":memory:"])
    def test_path_that_is_no_file_is_a_value_error(self, path: str) -> None:
        with pytest.raises(ValueError, match="MemoryCheckpointStore"):
            SQLiteCheckpointStore(path)

    @pytest.mark.parametrize(("value", "error"), [("OFF", ValueError), (2, TypeError)])
    def test_synchronous_must_be_normal_or_full(self, value: object, error: type) -> None:
        with pytest.raises(error, match="NORMAL"):
            SQLiteCheckpointStore("run.sqlite", synchronous=value)  # type: ignore[arg-type]

    async def test_path_accepts_str_and_pathlike(self, db_path: Path) -> None:
        assert SQLiteCheckpointStore(str(db_path)).path == db_path
        assert SQLiteCheckpointStore(db_path).path == db_path

    async def test_directory_is_refused_by_name(self, tmp_path: Path) -> None:
        store = SQLiteCheckpointStore(tmp_path)
        with pytest.raises(CheckpointError, match="is a directory") as caught:
            await store.open()
        assert str(tmp_path) in str(caught.value)
        await store.close()

    async def test_missing_directory_is_refused_and_not_created(self, tmp_path: Path) -> None:
        missing = tmp_path / "no" / "such"
        store = SQLiteCheckpointStore(missing / "run.sqlite")
        with pytest.raises(CheckpointError, match="does not exist") as caught:
            await store.open()
        assert str(missing) in str(caught.value)
        assert not (tmp_path / "no").exists()
        await store.close()


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _not_sqlite_text(path: Path) -> None:
    path.write_text("id,name\n1,not a database\n" * 50)


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(8192))


def _sqlite_magic_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)


def _foreign_database(path: Path) -> None:
    with connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")


def _version_one_without_tables(path: Path) -> None:
    with connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
        conn.execute("PRAGMA user_version = 1")


class TestRefusals:
    @pytest.mark.parametrize(
        ("make", "message"),
        [
            pytest.param(_not_sqlite_text, "not an SQLite database", id="text-file"),
            pytest.param(_random_bytes, "not an SQLite database", id="random-bytes"),
            pytest.param(_sqlite_magic_then_garbage, "failed", id="corrupt-header"),
            pytest.param(_foreign_database, "another program", id="foreign-database"),
            pytest.param(
                _version_one_without_tables, "lacks the checkpoint tables", id="no-tables"
            ),
        ],
    )
    async def test_file_that_is_no_store_is_refused_and_left_untouched(
        self, db_path: Path, make: Callable[[Path], None], message: str
    ) -> None:
        make(db_path)
        before = contents(db_path)
        store = SQLiteCheckpointStore(db_path)
        with pytest.raises(CheckpointError, match=message) as caught:
            await store.open()
        assert str(db_path) in str(caught.value)
        await store.close()
        assert contents(db_path) == before
        assert not exists(f"{db_path}-wal")
        # The failed open released the lock.
        with filelock.FileLock(f"{db_path}.lock", timeout=0):
            pass

    async def test_other_schema_version_is_refused_with_what_to_do(self, db_path: Path) -> None:
        with connect(db_path) as conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("PRAGMA user_version = 7")
        before = contents(db_path)
        store = SQLiteCheckpointStore(db_path)
        with pytest.raises(CheckpointError) as caught:
            await store.open()
        await store.close()
        message = str(caught.value)
        assert str(db_path) in message
        assert "schema version 7" in message
        assert "schema version 1" in message
        assert "new path" in message
        assert contents(db_path) == before

    def test_reader_refuses_what_the_store_refuses(self, db_path: Path) -> None:
        with pytest.raises(CheckpointError, match="No checkpoint store"):
            SQLiteCheckpointReader(db_path)
        _foreign_database(db_path)
        with pytest.raises(CheckpointError, match="another program"):
            SQLiteCheckpointReader(db_path)


class TestLock:
    async def test_second_store_object_on_the_same_path_is_locked_out(self, db_path: Path) -> None:
        first = await opened(db_path)
        second = SQLiteCheckpointStore(db_path)
        try:
            with pytest.raises(CheckpointLockedError) as caught:
                await second.open()
            message = str(caught.value)
            assert str(db_path) in message
            assert "another process or another store object in this process" in message
            assert f"pid {os.getpid()}" in message
            assert "SQLiteCheckpointReader" in message
            assert "killed" in message
            await second.close()
        finally:
            await first.close()
        assert await second.open() == {}
        await second.close()

    async def test_locked_out_store_did_not_touch_the_file(self, db_path: Path) -> None:
        first = await opened(db_path)
        await first.record([make_entry("a")])
        try:
            with pytest.raises(CheckpointLockedError):
                await SQLiteCheckpointStore(db_path).open(reset=True)
            assert await first.lookup(["a"]) == [make_entry("a")]
        finally:
            await first.close()

    async def test_lock_held_by_something_else_is_reported_without_a_writer(
        self, db_path: Path
    ) -> None:
        with filelock.FileLock(f"{db_path}.lock", timeout=0):
            store = SQLiteCheckpointStore(db_path)
            with pytest.raises(CheckpointLockedError, match="is locked") as caught:
                await store.open()
            assert "pid" not in str(caught.value)
        await store.close()
        assert not exists(db_path)

    async def test_lock_file_that_cannot_be_created_is_not_reported_as_held(
        self, db_path: Path
    ) -> None:
        # Creating it fails with ENOENT (as under /proc), which filelock reports as held.
        os.symlink(db_path.parent / "missing" / "lock", f"{db_path}.lock")
        store = SQLiteCheckpointStore(db_path)
        with pytest.raises(CheckpointError, match="Cannot take the lock file") as caught:
            await store.open()
        assert not isinstance(caught.value, CheckpointLockedError)
        assert "No such file or directory" in str(caught.value)  # the OS's reason
        await store.close()
        assert not exists(db_path)


class TestReader:
    async def test_reader_sees_commits_while_the_writer_holds_the_lock(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            await store.save_meta({"session": "4"})
            await store.record(
                [make_entry("b"), make_entry("a", state=EntryState.FAILED, error="boom")]
            )
            with SQLiteCheckpointReader(db_path) as reader:
                assert reader.meta() == {"session": "4"}
                assert reader.writer == f"{os.getpid()}@{socket.gethostname()}"
                assert [e.item_id for e in reader.entries()] == ["a", "b"]
                assert reader.count_by_state() == {
                    EntryState.PENDING: 0,
                    EntryState.SUCCEEDED: 1,
                    EntryState.FAILED: 1,
                    EntryState.INTERRUPTED: 0,
                }
                await store.record([make_entry("c", state=EntryState.PENDING)])
                assert reader.count_by_state()[EntryState.PENDING] == 1
                assert list(reader.entries())[2] == make_entry("c", state=EntryState.PENDING)
        finally:
            await store.close()

    async def test_reader_reads_a_closed_store(self, db_path: Path) -> None:
        store = await opened(db_path)
        await store.record(make_entries("r", 1100))
        await store.close()
        with SQLiteCheckpointReader(db_path) as reader:
            assert list(reader.entries()) == make_entries("r", 1100)

    async def test_reader_looks_ids_up_as_the_store_does_while_it_runs(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            stored = [
                *make_entries("l", 1100),
                make_entry("x", payload=b"\x00\xff", codec="pickle"),
            ]
            await store.record(stored)
            # More ids than one lookup statement takes, some twice, some unknown.
            ids = ["missing", "x", *[e.item_id for e in stored[:1050]], "x", "l-01099"]
            with SQLiteCheckpointReader(db_path) as reader:
                assert reader.lookup(ids) == await store.lookup(ids)
                found = reader.lookup(ids)
                assert found[0] is None
                assert found[1] == stored[-1]
                assert found[-2:] == [stored[-1], stored[1099]]
        finally:
            await store.close()

    async def test_a_store_not_written_yet_gives_no_reader_to_the_ray_stage(
        self, db_path: Path
    ) -> None:
        # A writer that just created the file has not written its store: not an error for
        # the Ray stage, which reads the shards of other actors while they start.
        assert SQLiteCheckpointReader._if_written(db_path) is None  # no file
        _empty_file(db_path)
        assert SQLiteCheckpointReader._if_written(db_path) is None
        with pytest.raises(CheckpointError, match="empty database"):
            SQLiteCheckpointReader(db_path)
        store = await opened(db_path)
        await store.record([make_entry("a")])
        await store.close()
        reader = SQLiteCheckpointReader._if_written(db_path)
        assert reader is not None
        with reader:
            assert reader.lookup(["a"]) == [make_entry("a")]

    def test_a_store_created_while_a_reader_checks_it_is_not_another_programs(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The Ray stage reads other actors' shards while they start. A writer committing the
        # schema between the reader's look at the version and its look at the tables once
        # made the new shard look like another program's database and failed the job.
        with connect(db_path) as writer:
            writer.execute("PRAGMA journal_mode=WAL")  # as the store sets it, before writing
            real_connect = sqlite3.connect
            created = False

            def create_between_the_two_reads(sql: str) -> None:
                nonlocal created
                if "sqlite_master" in sql and not created:
                    created = True
                    writer.execute("BEGIN IMMEDIATE")
                    sqlite_module._create_schema(writer)
                    writer.execute("COMMIT")

            def connect_and_trace(*args: Any, **kwargs: Any) -> sqlite3.Connection:
                conn = real_connect(*args, **kwargs)
                conn.set_trace_callback(create_between_the_two_reads)
                return conn

            monkeypatch.setattr(sqlite3, "connect", connect_and_trace)
            # The reader sees the file as it was when it looked: no store yet.
            assert SQLiteCheckpointReader._if_written(db_path) is None
            monkeypatch.undo()
            assert created
            reader = SQLiteCheckpointReader._if_written(db_path)
            assert reader is not None
            with reader:
                assert reader.lookup(["a"]) == [None]


class TestThread:
    async def test_every_statement_runs_on_one_worker_thread(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ran_on: list[threading.Thread] = []
        real_connect = sqlite3.connect

        def connect_and_trace(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real_connect(*args, **kwargs)
            conn.set_trace_callback(lambda _sql: ran_on.append(threading.current_thread()))
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect_and_trace)
        store = await opened(db_path)
        await store.save_meta({"k": "v"})
        await store.record(make_entries("t", 10))
        await store.lookup(["t-00001"])
        await store.close()
        monkeypatch.undo()

        threads = set(ran_on)
        assert len(threads) == 1, threads
        [worker] = threads
        assert worker is not threading.current_thread()
        assert worker.name.startswith("async-batch-llm-checkpoint")
        assert not worker.is_alive()  # close() stopped it

    @pytest.mark.parametrize("operation", ["record", "lookup"])
    async def test_event_loop_runs_while_a_large_batch_is_written_or_read(
        self, db_path: Path, operation: str
    ) -> None:
        entries = make_entries("big", 20_000)
        store = await opened(db_path)
        if operation == "lookup":
            await store.record(entries)
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        ticks_before = ticks
        try:
            if operation == "record":
                await store.record(entries)
            else:
                assert len(await store.lookup([e.item_id for e in entries])) == 20_000
            ticks_during = ticks - ticks_before
        finally:
            stop.set()
            await ticker
            await store.close()
        assert ticks_during > 0


class FailingConnection:
    """Wraps the store's connection; writing entries fails as a full disk would."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def executemany(self, sql: str, params: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT INTO entries"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, params)


class TestErrors:
    async def test_sqlite_error_becomes_a_checkpoint_error_and_rolls_back(
        self, db_path: Path
    ) -> None:
        store = await opened(db_path)
        try:
            real = store._conn
            assert real is not None
            store._conn = FailingConnection(real)  # type: ignore[assignment]
            with pytest.raises(CheckpointError) as caught:
                await store.record(make_entries("e", 5))
            store._conn = real
            assert str(db_path) in str(caught.value)
            assert "disk is full" in str(caught.value)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            # Nothing of the failed batch was kept, and the store goes on working.
            assert await store.lookup(["e-00000"]) == [None]
            await store.record([make_entry("after")])
            assert await store.lookup(["after"]) == [make_entry("after")]
        finally:
            await store.close()

    async def test_foreign_writer_past_the_busy_timeout_is_a_checkpoint_error(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_S", 0.0)
        store = await opened(db_path)
        try:
            with connect(db_path) as foreign:
                foreign.execute("BEGIN IMMEDIATE")
                with pytest.raises(CheckpointError, match="locked") as caught:
                    await store.record([make_entry("a")])
                assert str(db_path) in str(caught.value)
                # Readers are not blocked by a writer in WAL mode.
                assert await store.lookup(["a"]) == [None]
                foreign.execute("ROLLBACK")
            await store.record([make_entry("a")])
            assert await store.lookup(["a"]) == [make_entry("a")]
        finally:
            await store.close()

    async def test_unreadable_entry_is_a_checkpoint_error(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            await store.record([make_entry("a")])
            with connect(db_path) as conn:
                conn.execute("UPDATE entries SET state = 9")
            with pytest.raises(CheckpointError, match="cannot be read back"):
                await store.lookup(["a"])
        finally:
            await store.close()

    @pytest.mark.parametrize("usage", ["not json", "5", "[1, 2]"])
    async def test_a_usage_column_that_is_not_an_object_is_unreadable(
        self, db_path: Path, usage: str
    ) -> None:
        store = await opened(db_path)
        try:
            await store.record([make_entry("a")])
            with connect(db_path) as conn:
                conn.execute("UPDATE entries SET usage = ?", (usage,))
            with pytest.raises(CheckpointError, match="cannot be read back"):
                await store.lookup(["a"])
            with SQLiteCheckpointReader(db_path) as reader, pytest.raises(CheckpointError):
                list(reader.entries())
        finally:
            await store.close()

    async def test_an_id_looked_up_twice_gets_two_usage_dicts(self, db_path: Path) -> None:
        store = await opened(db_path)
        try:
            await store.record([make_entry("a")])
            first, second = await store.lookup(["a", "a"])
            assert first == second == make_entry("a")
            assert first is not None
            assert second is not None
            first.usage["input_tokens"] = 0
            assert second.usage == make_entry("a").usage
        finally:
            await store.close()

    async def test_close_releases_the_lock_after_an_error(self, db_path: Path) -> None:
        store = await opened(db_path)
        store._conn = FailingConnection(store._conn)  # type: ignore[arg-type,assignment]
        with pytest.raises(CheckpointError):
            await store.record([make_entry("a")])
        await store.close()
        with filelock.FileLock(f"{db_path}.lock", timeout=0):
            pass
