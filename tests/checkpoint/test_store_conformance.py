"""What every checkpoint store does, run against the memory and the SQLite store alike."""

from __future__ import annotations

import pytest
from checkpoint_cases import make_entries, make_entry

from async_batch_llm.checkpoint import (
    CheckpointEntry,
    CheckpointError,
    CheckpointLockedError,
    CheckpointStore,
    EntryState,
)


def test_store_satisfies_the_protocol(store: CheckpointStore) -> None:
    assert isinstance(store, CheckpointStore)


class TestOpenAndMeta:
    async def test_new_store_opens_with_empty_metadata(self, store: CheckpointStore) -> None:
        assert await store.open() == {}

    async def test_metadata_is_kept_across_close_and_open(self, store: CheckpointStore) -> None:
        await store.open()
        await store.save_meta({"session": "1", "fingerprint": "abc"})
        await store.save_meta({"session": "2"})
        await store.close()
        assert await store.open() == {"session": "2", "fingerprint": "abc"}

    async def test_entries_are_kept_across_close_and_open(self, store: CheckpointStore) -> None:
        await store.open()
        await store.record([make_entry("a")])
        await store.close()
        await store.open()
        assert await store.lookup(["a"]) == [make_entry("a")]

    async def test_reset_empties_entries_and_metadata(self, store: CheckpointStore) -> None:
        await store.open()
        await store.save_meta({"session": "3"})
        await store.record(make_entries("x", 3))
        await store.close()
        assert await store.open(reset=True) == {}
        assert await store.lookup(["x-00000", "x-00002"]) == [None, None]
        await store.close()
        assert await store.open() == {}

    async def test_reset_store_records_again(self, store: CheckpointStore) -> None:
        await store.open()
        await store.record([make_entry("a", session=1)])
        await store.close()
        await store.open(reset=True)
        await store.record([make_entry("a", session=2)])
        assert await store.lookup(["a"]) == [make_entry("a", session=2)]

    async def test_second_open_is_refused_and_the_first_keeps_working(
        self, store: CheckpointStore
    ) -> None:
        await store.open()
        with pytest.raises(CheckpointLockedError):
            await store.open()
        await store.record([make_entry("a")])
        assert await store.lookup(["a"]) == [make_entry("a")]

    async def test_close_twice_and_close_unopened_are_harmless(
        self, store: CheckpointStore
    ) -> None:
        await store.close()
        await store.open()
        await store.close()
        await store.close()

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s: s.lookup(["a"]), id="lookup"),
            pytest.param(lambda s: s.record([make_entry("a")]), id="record"),
            pytest.param(lambda s: s.save_meta({"k": "v"}), id="save_meta"),
        ],
    )
    async def test_use_before_open_and_after_close_fails(
        self, store: CheckpointStore, call: object
    ) -> None:
        assert callable(call)
        with pytest.raises(CheckpointError):
            await call(store)
        await store.open()
        await store.close()
        with pytest.raises(CheckpointError):
            await call(store)


class TestRoundTrip:
    @pytest.mark.parametrize(
        "entry",
        [
            pytest.param(make_entry("full"), id="all-fields"),
            pytest.param(
                CheckpointEntry("bare", "h", "s", 0, EntryState.PENDING), id="defaults-and-none"
            ),
            pytest.param(
                make_entry("binary", payload=bytes(range(256)) * 4, codec="pickle"), id="binary"
            ),
            pytest.param(make_entry("empty-bytes", payload=b""), id="empty-payload"),
            pytest.param(
                make_entry(
                    "failed",
                    state=EntryState.FAILED,
                    codec=None,
                    payload=None,
                    error="ValueError: bad input\nline two",
                ),
                id="failed",
            ),
            pytest.param(
                make_entry("ünï-cødé 🚀", prompt_hash="é" * 64, strategy="模型", error="ø"),
                id="unicode",
            ),
            pytest.param(make_entry("big-session", session=2**62), id="large-session"),
            pytest.param(make_entry("no-usage", usage={}), id="empty-usage"),
            pytest.param(
                make_entry("usage", usage={"z_tokens": 1, "a_tokens": 0, "big": 10**15}),
                id="usage-order-and-size",
            ),
        ],
    )
    async def test_entry_comes_back_equal(
        self, store: CheckpointStore, entry: CheckpointEntry
    ) -> None:
        await store.open()
        await store.record([entry])
        [found] = await store.lookup([entry.item_id])
        assert found == entry
        assert found is not None
        assert type(found.payload) is type(entry.payload)
        assert list(found.usage) == list(entry.usage)

    @pytest.mark.parametrize("state", list(EntryState))
    async def test_state_comes_back_as_the_enum_member(
        self, store: CheckpointStore, state: EntryState
    ) -> None:
        await store.open()
        await store.record([make_entry("a", state=state)])
        [found] = await store.lookup(["a"])
        assert found is not None
        assert found.state is state

    async def test_lookup_keeps_order_with_missing_and_repeated_ids(
        self, store: CheckpointStore
    ) -> None:
        await store.open()
        await store.record([make_entry("a"), make_entry("b"), make_entry("c")])
        found = await store.lookup(["c", "missing", "a", "c", "b", "a", "gone"])
        assert found == [
            make_entry("c"),
            None,
            make_entry("a"),
            make_entry("c"),
            make_entry("b"),
            make_entry("a"),
            None,
        ]
        # A repeated id gets entries of its own: changing one changes nothing else.
        assert found[0] is not found[3]
        assert found[0] is not None
        found[0].usage["input_tokens"] = -1
        assert found[3] == make_entry("c")

    async def test_lookup_of_many_ids_crosses_batches_in_order(
        self, store: CheckpointStore
    ) -> None:
        await store.open()
        stored = make_entries("n", 1200)
        await store.record(stored[::2])  # every other id is missing
        ids = [entry.item_id for entry in reversed(stored)] + ["n-00000", "n-00000"]
        expected = [None if i % 2 else entry for i, entry in enumerate(stored)]
        expected = [*reversed(expected), stored[0], stored[0]]
        assert await store.lookup(ids) == expected

    async def test_empty_batches(self, store: CheckpointStore) -> None:
        await store.open()
        await store.record([])
        await store.save_meta({})
        assert await store.lookup([]) == []

    async def test_record_replaces_by_id(self, store: CheckpointStore) -> None:
        await store.open()
        await store.record([make_entry("a", state=EntryState.PENDING, payload=None)])
        await store.record([make_entry("a", state=EntryState.SUCCEEDED, session=2)])
        assert await store.lookup(["a"]) == [make_entry("a", state=EntryState.SUCCEEDED, session=2)]

    async def test_last_entry_wins_within_a_batch(self, store: CheckpointStore) -> None:
        await store.open()
        await store.record(
            [
                make_entry("a", session=1),
                make_entry("b"),
                make_entry("a", session=2, error="second"),
                make_entry("a", session=3, usage={}),
            ]
        )
        assert await store.lookup(["a", "b"]) == [
            make_entry("a", session=3, usage={}),
            make_entry("b"),
        ]

    async def test_store_keeps_what_it_was_given_not_the_callers_objects(
        self, store: CheckpointStore
    ) -> None:
        await store.open()
        entry = make_entry("a")
        await store.record([entry])
        entry.usage["input_tokens"] = 999
        entry.session = 42
        [found] = await store.lookup(["a"])
        assert found == make_entry("a")
        assert found is not None
        found.usage.clear()
        assert await store.lookup(["a"]) == [make_entry("a")]
