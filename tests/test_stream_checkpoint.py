"""Runs with a checkpoint: durable before published, replay instead of paying twice,
identity and resume policies, and a failing store that stops the run cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    RetryConfig,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.checkpoint import (
    CheckpointEntry,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    DuplicateItemError,
    EntryState,
    MemoryCheckpointStore,
    ResumePolicy,
    SQLiteCheckpointReader,
)
from support import USAGE, BlockingStrategy, RecordingObserver, fast_config

Item = LLMWorkItem[str, Any, Any]


async def collect(stream: AsyncIterator[WorkItemResult[Any, Any]], ids: list[str]) -> None:
    """Take every result of `stream`, noting its id in `ids` (kept when the stream fails)."""
    async for result in stream:
        ids.append(result.item_id)


class ModelStrategy(LLMCallStrategy[str]):
    """Answers ``<model>:<prompt>``; prompts starting with ``fail`` raise ``fail_with``."""

    def __init__(self, model: str = "m1", fail_with: type[Exception] = ValueError) -> None:
        self.model = model
        self.fail_with = fail_with
        self.calls: list[str] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append(prompt)
        await asyncio.sleep(0)
        if prompt.startswith("fail"):
            raise self.fail_with(f"cannot do {prompt}")
        return f"{self.model}:{prompt}", dict(USAGE)  # type: ignore[return-value]

    def checkpoint_identity(self) -> object:
        return {"model": self.model}


def make_items(strategy: LLMCallStrategy[Any], count: int, **prompts: str) -> list[Item]:
    return [
        LLMWorkItem(item_id=f"id{i}", strategy=strategy, prompt=prompts.get(f"id{i}", f"p{i}"))
        for i in range(count)
    ]


async def run(
    checkpoint: Any, items: Sequence[Item] | Iterator[Item], **options: Any
) -> tuple[list[WorkItemResult[Any, Any]], Any]:
    config = options.pop("config", None) or fast_config(max_workers=4)
    async with ParallelBatchProcessor(config=config, checkpoint=checkpoint, **options) as p:
        results = [r async for r in p.stream(items)]
    return results, p.checkpoint_report


def terminal(store: MemoryCheckpointStore) -> dict[str, EntryState]:
    return {k: e.state for k, e in store.entries.items() if e.state is not EntryState.PENDING}


async def test_a_rerun_replays_instead_of_calling() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    first, report = await run(store, make_items(strategy, 30))
    assert report.new == 30
    assert report.recorded == 30
    assert not any(r.replayed for r in first)
    strategy.calls.clear()
    second, report = await run(store, make_items(strategy, 30))
    assert strategy.calls == []
    assert all(r.replayed for r in second)
    assert report.replayed == 30
    assert report.session == 2
    assert {r.item_id: r.output for r in second} == {r.item_id: r.output for r in first}


async def test_a_rerun_after_break_runs_only_what_was_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    strategy = ModelStrategy()
    items = make_items(strategy, 200)
    yielded: list[str] = []
    async with ParallelBatchProcessor(config=fast_config(max_workers=4), checkpoint=path) as p:
        stream = p.stream(items)
        async for result in stream:
            yielded.append(result.item_id)
            if len(yielded) == 50:
                break
        await stream.aclose()
    first_calls = set(strategy.calls)
    with SQLiteCheckpointReader(path) as reader:
        committed = {e.item_id for e in reader.entries() if e.state is EntryState.SUCCEEDED}
    assert set(yielded) <= committed  # everything handed out was durable first
    strategy.calls.clear()
    second, report = await run(path, items)
    assert sorted(r.item_id for r in second) == sorted(i.item_id for i in items)
    replayed = {r.item_id for r in second if r.replayed}
    assert replayed == committed
    called_again = set(strategy.calls) & first_calls
    assert len(called_again) <= report.unfinished  # only what was taken, not committed
    assert {f"p{i[2:]}" for i in committed}.isdisjoint(strategy.calls)
    assert report.replayed + report.unfinished + report.new == 200


async def test_an_edited_prompt_reruns_only_that_item() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    await run(store, make_items(strategy, 10))
    strategy.calls.clear()
    second, report = await run(store, make_items(strategy, 10, id3="edited"))
    assert strategy.calls == ["edited"]
    assert report.replayed == 9
    assert report.run_again == 1
    assert next(r for r in second if r.item_id == "id3").output == "m1:edited"


async def test_another_model_is_refused_without_touching_the_store() -> None:
    store = MemoryCheckpointStore()
    await run(store, make_items(ModelStrategy("m1"), 5))
    before = dict(store.entries)
    other = ModelStrategy("m2")
    with pytest.raises(CheckpointMismatchError, match="different strategy") as caught:
        await run(store, make_items(other, 5))
    message = str(caught.value)
    assert '"m1"' in message
    assert '"m2"' in message
    assert "ResumePolicy.NONE" in message
    assert "new checkpoint path" in message
    assert other.calls == []
    assert store.entries == before


async def test_another_version_is_refused() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    await run(store, make_items(strategy, 5), checkpoint_version="v1")
    strategy.calls.clear()
    with pytest.raises(CheckpointMismatchError, match="checkpoint_version='v1'"):
        await run(store, make_items(strategy, 5), checkpoint_version="v2")
    assert strategy.calls == []
    _second, report = await run(store, make_items(strategy, 5), checkpoint_version="v1")
    assert report.replayed == 5


async def test_resume_none_starts_over() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    await run(store, make_items(strategy, 5))
    strategy.calls.clear()
    second, report = await run(store, make_items(ModelStrategy("m2"), 5), resume=ResumePolicy.NONE)
    assert not any(r.replayed for r in second)
    assert report.session == 1
    assert report.new == 5
    assert {e.strategy for e in store.entries.values()} == {
        next(iter(store.entries.values())).strategy
    }


async def test_permanent_failures_replay_only_with_reuse_all() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    items = make_items(strategy, 4, id1="fail-1")
    first, _ = await run(store, items)
    assert [r.success for r in first if r.item_id == "id1"] == [False]
    assert store.entries["id1"].state is EntryState.FAILED
    strategy.calls.clear()
    _, report = await run(store, items)  # REUSE_SUCCESSES: the failure runs again
    assert strategy.calls == ["fail-1"]
    assert report.run_again == 1
    strategy.calls.clear()
    again, report = await run(store, items, resume=ResumePolicy.REUSE_ALL)
    assert strategy.calls == []
    failed = next(r for r in again if r.item_id == "id1")
    assert failed.replayed
    assert not failed.success
    assert "cannot do fail-1" in (failed.error or "")


class TransientError(Exception):
    """Retryable by the default classifier."""


@pytest.mark.parametrize("policy", [ResumePolicy.REUSE_SUCCESSES, ResumePolicy.REUSE_ALL])
async def test_transient_and_timeout_failures_never_replay(policy: ResumePolicy) -> None:
    store = MemoryCheckpointStore()
    flaky = ModelStrategy(fail_with=TransientError)
    slow = BlockingStrategy()
    items: list[Item] = [
        LLMWorkItem(item_id="flaky", strategy=flaky, prompt="fail-net"),
        LLMWorkItem(item_id="slow", strategy=slow, prompt="p"),
    ]
    config = fast_config(
        timeout_per_item=0.01, retry=RetryConfig(max_attempts=2, initial_wait=0.001, jitter=False)
    )
    first, _ = await run(store, items, config=config)
    assert not any(r.success for r in first)
    assert store.entries["flaky"].state is EntryState.INTERRUPTED
    assert store.entries["slow"].state is EntryState.INTERRUPTED
    flaky.calls.clear()
    slow.release.set()
    second, report = await run(store, items, config=config, resume=policy)
    assert not any(r.replayed for r in second)
    assert flaky.calls == ["fail-net", "fail-net"]
    assert report.run_again == 2


class Malformed(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return "no usage"  # type: ignore[return-value]


async def test_configuration_errors_never_replay() -> None:
    store = MemoryCheckpointStore()
    items: list[Item] = [LLMWorkItem(item_id="x", strategy=Malformed(), prompt="p")]
    first, _ = await run(store, items)
    assert not first[0].success
    assert store.entries["x"].state is EntryState.INTERRUPTED
    second, _ = await run(store, items, resume=ResumePolicy.REUSE_ALL)
    assert not second[0].replayed


@pytest.mark.parametrize("gap", [1, 700])
async def test_duplicate_ids_are_rejected(gap: int) -> None:
    """Within one lookup batch or across batches."""
    strategy = ModelStrategy()
    items = [*make_items(strategy, gap), make_items(strategy, 1)[0]]
    got: list[str] = []
    async with ParallelBatchProcessor(
        config=fast_config(), checkpoint=MemoryCheckpointStore()
    ) as p:
        with pytest.raises(DuplicateItemError, match="'id0'"):
            await collect(p.stream(items), got)
    assert sorted(got) == sorted(i.item_id for i in items[:gap])


async def test_without_a_checkpoint_duplicate_ids_run() -> None:
    strategy = ModelStrategy()
    items = make_items(strategy, 1) * 2
    async with ParallelBatchProcessor(config=fast_config()) as p:
        results = [r async for r in p.stream(items)]
    assert len(results) == 2


class FailingStore(MemoryCheckpointStore):
    """A memory store whose ``record`` fails from its `fail_at`-th outcome commit on."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.commits = 0

    async def record(self, entries: Sequence[CheckpointEntry]) -> None:
        if any(e.state is not EntryState.PENDING for e in entries):
            self.commits += 1
            if self.commits >= self.fail_at:
                raise OSError("disk full")
        await super().record(entries)


@pytest.mark.parametrize("fail_at", [1, 3])
async def test_a_failing_store_stops_the_run_and_publishes_nothing_unrecorded(
    fail_at: int,
) -> None:
    store = FailingStore(fail_at)
    strategy = ModelStrategy()
    observer = RecordingObserver()
    got: list[str] = []
    async with ParallelBatchProcessor(
        config=fast_config(max_workers=2), checkpoint=store, observers=[observer]
    ) as p:
        with pytest.raises(CheckpointError, match="disk full") as caught:
            await collect(p.stream(make_items(strategy, 100)), got)
    assert "record()" in str(caught.value)
    recorded = set(terminal(store))
    assert set(got) <= recorded
    assert {d["item_id"] for d in observer.of(ProcessingEvent.ITEM_COMPLETED)} <= recorded
    assert len(strategy.calls) < 100  # the run stopped


async def test_a_failing_store_stops_process_all_too() -> None:
    store = FailingStore(1)
    strategy = ModelStrategy()
    async with ParallelBatchProcessor(config=fast_config(), checkpoint=store) as p:
        for item in make_items(strategy, 20):
            await p.add_work(item)
        with pytest.raises(CheckpointError, match="disk full"):
            await p.process_all()


async def test_durable_before_published_to_every_consumer() -> None:
    """When the post-processor, an observer, the progress callback and the consumer see an
    item's result, its outcome is already in the store."""
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    violations: list[str] = []

    def stored(item_id: str) -> bool:
        entry = store.entries.get(item_id)
        return entry is not None and entry.state is not EntryState.PENDING

    async def post(result: WorkItemResult[Any, Any]) -> None:
        if not stored(result.item_id):
            violations.append(f"post:{result.item_id}")

    class Checker(RecordingObserver):
        async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
            final = event in (ProcessingEvent.ITEM_COMPLETED, ProcessingEvent.ITEM_FAILED)
            if final and not stored(str(data["item_id"])):
                violations.append(f"event:{data['item_id']}")

    def progress(done: int, total: int, item_id: str | None) -> None:
        if item_id is not None and not stored(item_id):
            violations.append(f"progress:{item_id}")

    items = make_items(strategy, 60, id7="fail-7")
    async with ParallelBatchProcessor(
        config=fast_config(max_workers=6),
        checkpoint=store,
        post_processor=post,
        observers=[Checker()],
        progress_callback=progress,
    ) as p:
        async for result in p.stream(items):
            if not stored(result.item_id):
                violations.append(f"yield:{result.item_id}")
    assert violations == []


async def test_process_all_with_a_checkpoint_replays() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    for round_ in range(2):
        async with ParallelBatchProcessor(config=fast_config(), checkpoint=store) as p:
            for item in make_items(strategy, 12):
                await p.add_work(item)
            batch = await p.process_all()
        assert batch.total_items == 12
        assert batch.succeeded == 12
        assert sum(r.replayed for r in batch.results) == (12 if round_ else 0)
    assert len(strategy.calls) == 12


async def test_replayed_results_count_without_tokens_and_are_observed_apart() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    await run(store, make_items(strategy, 8))
    metrics = MetricsObserver()
    recorder = RecordingObserver()
    async with ParallelBatchProcessor(
        config=fast_config(), checkpoint=store, observers=[metrics, recorder]
    ) as p:
        results = [r async for r in p.stream(make_items(strategy, 10))]
        stats = await p.get_stats()
    assert sum(r.replayed for r in results) == 8
    assert stats["succeeded"] == 10
    assert stats["total_tokens"] == 2 * USAGE["total_tokens"]
    snapshot = await metrics.get_metrics()
    assert snapshot["items_replayed"] == 8
    assert snapshot["items_processed"] == 2
    assert "async_batch_llm_items_replayed 8" in await metrics.export_prometheus()
    assert len(recorder.of(ProcessingEvent.ITEM_REPLAYED)) == 8
    assert len(recorder.of(ProcessingEvent.ITEM_COMPLETED)) == 2


async def test_metrics_keep_their_keys_without_replays() -> None:
    metrics = MetricsObserver()
    async with ParallelBatchProcessor(config=fast_config(), observers=[metrics]) as p:
        [r async for r in p.stream(make_items(ModelStrategy(), 3))]
    assert "items_replayed" not in await metrics.get_metrics()


async def test_the_post_processor_sees_replayed_results() -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    await run(store, make_items(strategy, 5))
    seen: list[tuple[str, bool]] = []

    async def post(result: WorkItemResult[Any, Any]) -> None:
        seen.append((result.item_id, result.replayed))

    async with ParallelBatchProcessor(
        config=fast_config(), checkpoint=store, post_processor=post
    ) as p:
        results = [r async for r in p.stream(make_items(strategy, 6), ordered=True)]
    assert [r.item_id for r in results] == [f"id{i}" for i in range(6)]
    assert sorted(seen) == [(f"id{i}", i < 5) for i in range(6)]


async def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    blocking = BlockingStrategy()
    blocking.expected = 1
    async with ParallelBatchProcessor(config=fast_config(max_workers=1), checkpoint=path) as p:
        stream = p.stream([LLMWorkItem(item_id="a", strategy=blocking, prompt="p")])
        first = asyncio.ensure_future(anext(stream))
        await blocking.all_started.wait()
        with pytest.raises(CheckpointLockedError):
            await run(path, make_items(ModelStrategy(), 2))
        with SQLiteCheckpointReader(path) as reader:  # readers still work
            assert [e.item_id for e in reader.entries()] == ["a"]
        blocking.release.set()
        await first
        await stream.aclose()


async def test_an_output_that_cannot_be_stored_runs_again() -> None:
    class Unstorable(LLMCallStrategy[object]):
        calls = 0

        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[object, TokenUsage]:
            Unstorable.calls += 1
            return (lambda: None), dict(USAGE)  # type: ignore[return-value]

    store = MemoryCheckpointStore()
    items: list[Any] = [LLMWorkItem(item_id="f", strategy=Unstorable(), prompt="p")]
    await run(store, items)
    second, report = await run(store, items)
    assert Unstorable.calls == 2
    assert second[0].success
    assert not second[0].replayed
    assert report.run_again == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"checkpoint": 42}, TypeError),
        ({"checkpoint": ""}, ValueError),
        ({"checkpoint": MemoryCheckpointStore(), "resume": "all"}, TypeError),
        ({"checkpoint": MemoryCheckpointStore(), "checkpoint_version": 2}, TypeError),
    ],
)
def test_bad_checkpoint_options_fail_at_construction(
    kwargs: Mapping[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ParallelBatchProcessor(**kwargs)


async def test_a_dry_run_neither_reads_nor_writes_the_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryCheckpointStore()
    strategy = ModelStrategy()
    async with ParallelBatchProcessor(config=fast_config(dry_run=True), checkpoint=store) as p:
        for item in make_items(strategy, 3):
            await p.add_work(item)
        batch = await p.process_all()
    assert batch.succeeded == 3
    assert strategy.calls == []
    assert store.entries == {}
    assert store.meta == {}
    warnings = [r for r in caplog.records if "dry_run is set" in r.getMessage()]
    assert len(warnings) == 1
