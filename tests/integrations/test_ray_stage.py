"""`LLMStage` in a real local Ray cluster, against the provider simulator over HTTP.

Ray's worker processes call a `ThreadedSimulator` served from this process, through the
real SDKs: pydantic-ai's OpenAI model (the library's `PydanticAIStrategy`) for most tests,
and the bare openai SDK for the 10,000-row test, where pydantic-ai's own CPU cost per call
would make the test take minutes on a 2-core machine. Strategies are built by module-level
factories, inside the actors.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

# Ray Data warns about its own deprecated settings whenever it copies its context.
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*")

import httpx2  # noqa: E402 - after the skip: nothing here runs without Ray
import openai  # noqa: E402
import pyarrow as pa  # noqa: E402
from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402

from async_batch_llm import (  # noqa: E402
    LLMCallStrategy,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.checkpoint import (  # noqa: E402
    CheckpointEntry,
    CheckpointMismatchError,
    EntryState,
    ResumePolicy,
    SQLiteCheckpointReader,
)
from async_batch_llm.integrations.ray import (  # noqa: E402
    RESULT_COLUMNS,
    LLMStage,
    _ShardedCheckpointStore,
    llm_stage_options,
)
from async_batch_llm.rate_control import RateScope, httpx_event_hooks  # noqa: E402
from async_batch_llm.testing.simulator import (  # noqa: E402
    ProviderRequest,
    ProviderSimulator,
    RawReply,
)

from .conftest import ThreadedSimulator  # noqa: E402

# Ray's workers cannot import this test module (pytest put its directory on this process's
# path only): its strategy factories travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODEL = "gpt-4o-mini"
API_KEY = "sk-ray-test"
#: Small retry waits: a rejected request is retried at once.
FAST_RETRIES = RetryConfig(max_attempts=3, initial_wait=0.01, max_wait=0.05, jitter=False)


class SimulatorPydanticAIStrategy(PydanticAIStrategy[str]):
    """The library's pydantic-ai strategy; `cleanup` (when the actor's processor shuts
    down) closes the HTTP client the factory made for it."""

    def __init__(self, agent: Agent[None, str], http_client: httpx2.AsyncClient) -> None:
        super().__init__(agent)
        self.http_client = http_client

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.http_client.aclose()


def pydantic_ai_strategy(base_url: str) -> PydanticAIStrategy[str]:
    """A pydantic-ai OpenAI model at `base_url`, built in the actor (the httpx hook lets rate
    control read the simulator's rate-limit headers)."""
    http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks(), timeout=30.0)
    provider = OpenAIProvider(base_url=base_url, api_key=API_KEY, http_client=http_client)
    agent = Agent(OpenAIChatModel(MODEL, provider=provider))
    return SimulatorPydanticAIStrategy(agent, http_client)


class OpenAISDKStrategy(LLMCallStrategy[str]):
    """One chat completion per attempt through the openai SDK (no SDK retries)."""

    def __init__(self, base_url: str) -> None:
        self.http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks(), timeout=30.0)
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=API_KEY, max_retries=0, http_client=self.http_client
        )

    async def cleanup(self) -> None:
        await self.http_client.aclose()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        completion = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
        usage = completion.usage
        assert usage is not None
        text = completion.choices[0].message.content or ""
        return text, {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }

    def rate_limit_scope(self) -> RateScope | None:
        return RateScope.from_api_key(provider="openai", api_key=API_KEY, model=MODEL)


def sdk_strategy(base_url: str) -> OpenAISDKStrategy:
    return OpenAISDKStrategy(base_url)


def refuse_bad_prompts(request: ProviderRequest) -> RawReply | None:
    """The simulator's reply hook: a 400 for every prompt marked ``[bad]``."""
    if "[bad]" not in request.prompt:
        return None
    error = {"message": "refused", "type": "invalid_request_error", "param": None, "code": None}
    return RawReply({"error": error}, status=400)


def redis_budget_class() -> Any:
    """``async_batch_llm.rate_control.RedisBudget``, or ``None`` while it does not exist."""
    return getattr(importlib.import_module("async_batch_llm.rate_control"), "RedisBudget", None)


def prompts_dataset(count: int, *, blocks: int, bad_every: int = 0) -> Any:
    rows = [
        {
            "id": f"row-{i}",
            "prompt": f"prompt {i}" + (" [bad]" if bad_every and i % bad_every == 0 else ""),
        }
        for i in range(count)
    ]
    return ray.data.from_items(rows, override_num_blocks=blocks)


# -- without a cluster ---------------------------------------------------------------------------


def test_llm_stage_options_suit_an_io_bound_stage() -> None:
    options = llm_stage_options(actors=3, batch_size=128, batches_per_actor=4, max_restarts=2)

    compute = options.pop("compute")
    assert isinstance(compute, ray.data.ActorPoolStrategy)
    assert (compute.min_size, compute.max_size) == (3, 3)
    assert compute.max_concurrent_calls_per_actor == 4
    assert options == {
        "num_cpus": 0.25,
        "batch_size": 128,
        "batch_format": "pyarrow",
        "max_restarts": 2,
    }
    autoscaling = llm_stage_options(actors=(1, 4))["compute"]
    assert (autoscaling.min_size, autoscaling.max_size) == (1, 4)
    for bad in ({"actors": 0}, {"actors": (3, 2)}, {"batch_size": 0}, {"num_cpus": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            llm_stage_options(**bad)


def test_the_stage_and_its_constructor_kwargs_survive_cloudpickle(tmp_path: Path) -> None:
    cloudpickle = ray.cloudpickle
    kwargs: dict[str, Any] = {
        "strategy": functools.partial(pydantic_ai_strategy, "http://127.0.0.1:9/v1"),
        "id_column": "id",
        "config": ProcessorConfig(max_workers=7, retry=FAST_RETRIES),
        "rate_limit": {"rpm": 600, "window_seconds": 6.0},
        "checkpoint": str(tmp_path / "checkpoint"),
        "checkpoint_version": "v1",
    }
    budget_class = redis_budget_class()
    if budget_class is not None:
        kwargs["budget"] = budget_class("redis://127.0.0.1:9/0", namespace="pickle-test")

    stage_class = cloudpickle.loads(cloudpickle.dumps(LLMStage))
    copied = cloudpickle.loads(cloudpickle.dumps(kwargs))
    stage = stage_class(**copied)
    again = cloudpickle.loads(cloudpickle.dumps(stage))

    assert stage_class is LLMStage  # pickled by reference: the actors import the module
    for built in (stage, again):
        assert built.id_column == "id"
        assert built.config == kwargs["config"]
        assert built.rate_limit == kwargs["rate_limit"]
        assert built.checkpoint == kwargs["checkpoint"]
        # A copy of the factory (this module is pickled by value for the workers).
        assert built.strategy.func.__qualname__ == "pydantic_ai_strategy"
        assert built.strategy.args == ("http://127.0.0.1:9/v1",)
        strategy = built.strategy()
        assert isinstance(strategy, PydanticAIStrategy)
        asyncio.run(strategy.cleanup())
        if budget_class is not None:
            assert type(built.budget) is budget_class


def test_constructor_refuses_what_cannot_work() -> None:
    with pytest.raises(TypeError, match="strategy must be"):
        LLMStage("not a strategy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="collides"):
        LLMStage(sdk_strategy, output_column="error")
    with pytest.raises(ValueError, match="processor_options must not set checkpoint"):
        LLMStage(sdk_strategy, processor_options={"checkpoint": "x"})
    with pytest.raises(ValueError, match="new checkpoint directory"):
        LLMStage(sdk_strategy, checkpoint="dir", resume=ResumePolicy.NONE)


def test_import_without_ray_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "try:\n"
        "    import async_batch_llm.integrations.ray\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without ray')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "async-batch-llm[ray]" in done.stdout
    assert "pip install 'ray[data]'" in done.stdout


async def test_batches_run_concurrently_on_one_processor() -> None:
    """Called directly (as Ray's async actor calls it): one processor for every batch, a
    row in flight twice is one call, invalid rows are errors, not exceptions."""
    async with ProviderSimulator() as sim:
        stage = LLMStage(
            functools.partial(pydantic_ai_strategy, sim.openai_base_url),
            id_column="id",
            max_workers=8,
        )
        assert stage._runtime is None  # nothing is built before the first batch
        batches = [
            pa.table(
                {"id": [f"{b}-{i}" for i in range(20)], "prompt": [f"p{b}{i}" for i in range(20)]}
            )
            for b in range(3)
        ]
        odd = pa.table({"id": ["0-1", "0-1", None, "x"], "prompt": ["p01", "p01", "p", None]})
        try:
            outputs = await asyncio.gather(*(stage(batch) for batch in [*batches, odd]))
            runtime = stage._runtime
            assert runtime is not None
            second = await stage(batches[0])
            assert stage._runtime is runtime  # still the same processor
        finally:
            await stage.aclose()

        for batch, output in zip(batches, outputs, strict=False):
            assert output.column_names == ["id", "prompt", "output", *RESULT_COLUMNS]
            rows = output.to_pylist()
            assert [row["id"] for row in rows] == batch.column("id").to_pylist()
            assert all(row["output"] == f"Echo: {row['prompt']}" for row in rows)
            assert all(row["error"] is None for row in rows)
            assert all(row["attempts"] == 1 for row in rows)
            assert all(row["total_tokens"] > 0 for row in rows)
        odd_rows = outputs[3].to_pylist()
        assert [row["output"] for row in odd_rows[:2]] == ["Echo: p01", "Echo: p01"]
        assert [row["error_category"] for row in odd_rows[2:]] == ["invalid_input"] * 2
        assert "id is null" in odd_rows[2]["error"]
        assert "prompt is null" in odd_rows[3]["error"]
        assert second.column("output").to_pylist() == outputs[0].column("output").to_pylist()
        # "0-1" was asked for again while in flight: one call, shared. The second run of
        # the first batch calls again (there is no checkpoint).
        assert sim.stats.successes == 3 * 20 + 20


async def test_a_block_sent_again_to_the_same_actor_is_replayed(tmp_path: Path) -> None:
    """Ray sends a block again to a restarted actor, or to the same one: with a checkpoint,
    rows committed before are replayed, not called (and not reported as duplicates)."""
    async with ProviderSimulator() as sim:
        stage = LLMStage(
            functools.partial(pydantic_ai_strategy, sim.openai_base_url),
            id_column="id",
            max_workers=4,
            checkpoint=tmp_path / "checkpoint",
        )
        block = pa.table(
            {"id": [f"r{i}" for i in range(10)], "prompt": [f"p{i}" for i in range(10)]}
        )
        try:
            first = await stage(block)
            again = await stage(block)
        finally:
            await stage.aclose()
        restarted = LLMStage(
            functools.partial(pydantic_ai_strategy, sim.openai_base_url),
            id_column="id",
            checkpoint=tmp_path / "checkpoint",
        )
        try:
            after_restart = await restarted(block)
        finally:
            await restarted.aclose()

    assert first.column("replayed").to_pylist() == [False] * 10
    for table in (again, after_restart):
        assert table.column("replayed").to_pylist() == [True] * 10
        assert table.column("output").to_pylist() == first.column("output").to_pylist()
    assert sim.stats.successes == 10


async def test_each_store_of_the_directory_is_read_and_one_is_written(tmp_path: Path) -> None:
    """The sharded checkpoint: one writer per shard, lookups across all of them, and a
    shard written under another ``checkpoint_version`` refused."""
    first, second = _ShardedCheckpointStore(tmp_path), _ShardedCheckpointStore(tmp_path)
    await first.open()
    await second.open()
    try:
        assert (first.shard, second.shard) == (
            tmp_path / "actor-0.sqlite",
            tmp_path / "actor-1.sqlite",
        )
        await first.save_meta({"session": "1", "version": "v1"})
        await second.save_meta({"session": "1", "version": "v1"})
        done = CheckpointEntry("a", "hash", "strategy", 1, EntryState.SUCCEEDED, "text", b"A")
        claimed = CheckpointEntry("b", "hash", "strategy", 1, EntryState.PENDING)
        await first.record([done, claimed])
        await second.record([CheckpointEntry("a", "hash", "strategy", 1, EntryState.FAILED)])

        found = await second.lookup(["a", "b", "c"])
        # A success in another shard wins over this shard's failure; sessions of entries
        # from another shard, or from this session, never look like this session's.
        assert found[0] is not None
        assert (found[0].state, found[0].payload, found[0].session) == (
            EntryState.SUCCEEDED,
            b"A",
            0,
        )
        assert found[1] is not None
        assert found[1].state is EntryState.PENDING
        assert found[2] is None
        own = await first.lookup(["a"])
        assert own[0] is not None
        assert own[0].session == 0
    finally:
        await first.close()
        await second.close()

    other_version = _ShardedCheckpointStore(tmp_path)
    await other_version.open()  # takes actor-0 again, the first free one
    try:
        assert other_version.shard == tmp_path / "actor-0.sqlite"
        await other_version.save_meta({"session": "2", "version": "v2"})
        with pytest.raises(CheckpointMismatchError, match="checkpoint_version='v1'"):
            await other_version.lookup(["b"])
    finally:
        await other_version.close()


# -- in a Ray cluster ----------------------------------------------------------------------------


def run_stage(dataset: Any, **stage_kwargs: Any) -> list[dict[str, Any]]:
    """Run `dataset` through `LLMStage` on 2 actors and return its rows."""
    staged = dataset.map_batches(
        LLMStage,
        fn_constructor_kwargs={"id_column": "id", **stage_kwargs},
        **llm_stage_options(actors=2, batch_size=25),
    )
    rows: list[dict[str, Any]] = staged.take_all()
    return rows


@pytest.mark.timeout(180)
def test_row_errors_are_values_and_a_rerun_replays_the_successes(
    ray_cluster: Any, threaded_simulator: Any, tmp_path: Path
) -> None:
    """Rows the provider refuses come back with ``error`` set (the job goes on); a rerun
    with the checkpoint replays every success, whichever actor committed it, and calls the
    failed rows again."""
    sim: ThreadedSimulator = threaded_simulator(reply=refuse_bad_prompts)
    checkpoint = tmp_path / "checkpoint"
    stage_kwargs = {
        "strategy": functools.partial(pydantic_ai_strategy, sim.openai_base_url),
        "config": ProcessorConfig(max_workers=8, retry=FAST_RETRIES),
        "checkpoint": str(checkpoint),
        "checkpoint_version": "v1",
    }
    expected = sorted(f"row-{i}" for i in range(200))

    first = run_stage(prompts_dataset(200, blocks=8, bad_every=10), **stage_kwargs)

    assert sorted(row["id"] for row in first) == expected
    bad = [row for row in first if "[bad]" in row["prompt"]]
    good = [row for row in first if "[bad]" not in row["prompt"]]
    assert len(bad) == 20
    for row in bad:
        assert row["output"] is None
        assert "400" in row["error"]
        assert row["error_category"]
        assert row["attempts"] == FAST_RETRIES.max_attempts
    for row in good:
        assert row["error"] is None
        assert row["error_category"] is None
        assert row["output"] == f"Echo: {row['prompt']}"
        assert row["attempts"] == 1
        assert row["total_tokens"] > 0
    assert not any(row["replayed"] for row in first)
    assert sim.stats.by_status[200] == 180
    assert sim.stats.by_status[400] == 20 * FAST_RETRIES.max_attempts

    second = run_stage(prompts_dataset(200, blocks=8, bad_every=10), **stage_kwargs)

    assert sorted(row["id"] for row in second) == expected
    outputs = {row["id"]: row["output"] for row in good}
    for row in second:
        if "[bad]" in row["prompt"]:
            assert not row["replayed"]  # a failure is called again
            assert "400" in row["error"]
        else:
            assert row["replayed"]
            assert row["output"] == outputs[row["id"]]
    assert sim.stats.by_status[200] == 180  # no success was paid for twice
    assert sim.stats.by_status[400] == 2 * 20 * FAST_RETRIES.max_attempts
    # One store per actor. Together they hold every row, each success once; a failure
    # called again by another actor is in that actor's store too.
    shards = sorted(checkpoint.glob("actor-*.sqlite"))
    assert shards
    entries = []
    for shard in shards:
        with SQLiteCheckpointReader(shard) as reader:
            entries.extend(reader.entries())
    assert sorted({entry.item_id for entry in entries}) == expected
    succeeded = [entry.item_id for entry in entries if entry.state is EntryState.SUCCEEDED]
    assert sorted(succeeded) == sorted(row["id"] for row in good)


@pytest.mark.timeout(180)
def test_two_actors_pace_against_one_shared_budget(
    ray_cluster: Any, threaded_simulator: Any
) -> None:
    """The account allows 40 calls a second; each actor alone could make more, so without
    sharing the budget they would overrun it. With one `RedisBudget` they stay under it."""
    budget_class = redis_budget_class()
    if budget_class is None:
        pytest.skip("async_batch_llm.rate_control.RedisBudget does not exist yet")
    from redis_support import running_redis

    count, rpm, window = 400, 80, 2.0
    sim: ThreadedSimulator = threaded_simulator(rpm=rpm, window_seconds=window)
    with running_redis() as redis:
        start = time.monotonic()
        rows = run_stage(
            prompts_dataset(count, blocks=16),
            strategy=functools.partial(pydantic_ai_strategy, sim.openai_base_url),
            max_workers=8,
            rate_limit={"rpm": rpm, "window_seconds": window},
            budget=budget_class(redis.url, namespace="ray-stage-pace"),
        )
        elapsed = time.monotonic() - start

    assert sorted(row["id"] for row in rows) == sorted(f"row-{i}" for i in range(count))
    assert all(row["error"] is None for row in rows), Counter(row["error"] for row in rows)
    stats = sim.stats
    assert stats.successes == count
    assert stats.rate_limited < 0.01 * stats.requests_total, (stats, elapsed)
    # The account's limit was what set the pace: a full bucket, then 40 a second.
    assert elapsed >= 0.8 * (count - rpm) / (rpm / window)


@pytest.mark.timeout(300)
def test_ten_thousand_rows_two_actors_share_one_budget(
    ray_cluster: Any, threaded_simulator: Any
) -> None:
    """At scale: every row exactly once, and under 1% of the calls rejected although two
    actors call the same account (they pace against one budget in Redis)."""
    budget_class = redis_budget_class()
    if budget_class is None:
        pytest.skip("async_batch_llm.rate_control.RedisBudget does not exist yet")
    from redis_support import running_redis

    count, rpm, window = 10_000, 400, 2.0  # 200 requests a second for the account
    sim: ThreadedSimulator = threaded_simulator(rpm=rpm, window_seconds=window)
    with running_redis() as redis:
        dataset = prompts_dataset(count, blocks=40).map_batches(
            LLMStage,
            fn_constructor_kwargs={
                "strategy": functools.partial(sdk_strategy, sim.openai_base_url),
                "id_column": "id",
                "max_workers": 16,
                "rate_limit": {"rpm": rpm, "window_seconds": window},
                "budget": budget_class(redis.url, namespace="ray-stage-test"),
            },
            **llm_stage_options(actors=2, batch_size=250),
        )
        start = time.monotonic()
        rows = dataset.take_all()
        elapsed = time.monotonic() - start

    ids = [row["id"] for row in rows]
    assert len(ids) == count
    assert set(ids) == {f"row-{i}" for i in range(count)}
    assert all(row["error"] is None for row in rows), Counter(row["error"] for row in rows)
    assert all(row["output"] == f"Echo: {row['prompt']}" for row in rows)
    stats = sim.stats
    assert stats.successes == count
    assert stats.rate_limited < 0.01 * stats.requests_total, (stats, elapsed)
