"""Durable runs, checked by hypothesis over random faults, hooks, windows and early exits.

A first run streams the items with a checkpoint, through the misbehaving fakes of
`test_invariant_property` (calls that fail, hang, cancel themselves; hooks that raise or
hang), and is left early: by ``break`` after a random number of results, by cancelling
the consumer, or by a call raising ``KeyboardInterrupt``. A second run, with calls that
all succeed, then streams the same items. What must hold:

- durable before published: every result the first run handed out was already committed;
- never paid twice: the second run calls exactly the items without a committed success,
  and replays every committed success;
- the second run ends every item in exactly one result, and leaves all of them succeeded
  in the store;
- neither run leaves a task of ours running.
"""

from __future__ import annotations

import asyncio
import copy
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_batch_llm import MetricsObserver, ParallelBatchProcessor
from async_batch_llm.checkpoint import EntryState, MemoryCheckpointStore
from test_invariant_property import (
    MisbehavingObserver,
    ScheduledStrategy,
    World,
    async_callback,
    config_for,
    scenarios,
    scheduled_items,
    sync_callback,
)
from virtual_time import run_virtual


class CountingStrategy(ScheduledStrategy):
    """A scheduled strategy that records which prompts it was called with."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.called: list[str] = []

    async def execute(self, prompt: str, *args: Any, **kwargs: Any) -> Any:
        self.called.append(prompt)
        return await super().execute(prompt, *args, **kwargs)


@st.composite
def durable_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    scenario = draw(scenarios())
    scenario["middleware"] = None  # covered by the in-memory invariant; keeps runs short
    scenario["ordered"] = draw(st.booleans())
    scenario["window"] = draw(st.none() | st.integers(min_value=1, max_value=8))
    scenario["break_after"] = draw(st.none() | st.integers(min_value=0, max_value=12))
    return scenario


def committed(store: MemoryCheckpointStore, item_id: str) -> bool:
    entry = store.entries.get(item_id)
    return entry is not None and entry.state is not EntryState.PENDING


async def first_run(
    scenario: dict[str, Any], store: MemoryCheckpointStore, items: list[Any], world: World
) -> None:
    progress = post = None
    if scenario["progress"] is not None:
        is_async, behaviour = scenario["progress"]
        progress = (async_callback if is_async else sync_callback)(world, behaviour)
    if scenario["post"] is not None:
        is_async, behaviour = scenario["post"]
        post = (async_callback if is_async else sync_callback)(world, behaviour)
    processor = ParallelBatchProcessor[str, str, None](
        config=config_for(scenario),
        observers=[MisbehavingObserver(world, scenario["observer"])],
        progress_callback=progress,
        post_processor=post,
        checkpoint=store,
    )
    taken = 0
    try:
        async with processor:
            stream = processor.stream(
                iter(items), ordered=scenario["ordered"], window=scenario["window"]
            )
            async with asyncio.timeout(scenario["cancel_after"]), aclosing(stream):
                async for result in stream:
                    assert committed(store, result.item_id), "durable before published"
                    taken += 1
                    if taken == scenario["break_after"]:
                        break
    except TimeoutError:
        pass
    except KeyboardInterrupt:
        assert scenario["interrupt_item"] is not None


async def check(scenario: dict[str, Any]) -> None:
    world = World()
    strategies, items = scheduled_items(world, scenario, CountingStrategy)
    store = MemoryCheckpointStore()
    before = asyncio.all_tasks()

    await first_run(scenario, store, items, world)
    await world.release_all(before)

    succeeded = {
        item_id for item_id, entry in store.entries.items() if entry.state is EntryState.SUCCEEDED
    }
    for strategy in strategies:
        strategy.called.clear()
        strategy.prepare_behaviour = "ok"
        for prompt in strategy.schedules:
            strategy.schedules[prompt] = []
    metrics = MetricsObserver()
    async with ParallelBatchProcessor[str, str, None](
        config=config_for(scenario), observers=[metrics], checkpoint=store
    ) as processor:
        results = [r async for r in processor.stream(items, ordered=scenario["ordered"])]
    ids = [item.item_id for item in items]
    assert sorted(r.item_id for r in results) == sorted(ids), "one result per item"
    assert {r.item_id for r in results if r.replayed} == succeeded, "every success replays"
    called = {f"i{prompt[1:]}" for strategy in strategies for prompt in strategy.called}
    assert called == set(ids) - succeeded, "only what was not committed is paid again"
    assert all(r.success for r in results)
    assert all(store.entries[i].state is EntryState.SUCCEEDED for i in ids)
    exported = await metrics.get_metrics()
    assert exported.get("items_replayed", 0) == len(succeeded)
    assert exported["items_processed"] == len(ids) - len(succeeded)
    assert not (asyncio.all_tasks() - before)


@settings(
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(durable_scenarios())
def test_durable_runs_never_pay_twice(scenario: dict[str, Any]) -> None:
    """See the module docstring."""
    run_virtual(check(scenario))


_SHUT_DOWN_BASE: dict[str, Any] = {
    "strategies": 1, "prepare": "ok", "max_attempts": 1, "cooldown": False,
    "observer": "ok", "middleware": None, "progress": None, "cancel_after": None,
    "ordered": False, "window": 3,
}  # fmt: skip


@pytest.mark.parametrize(
    "scenario",
    [
        # `break` while the store task is admitting items: it queued one more and spawned a
        # worker after the shutdown had cancelled the pool's workers.
        {
            **_SHUT_DOWN_BASE,
            "items": 5,
            "schedules": [[]] * 5,
            "workers": 4,
            "rate_limit_retries": 1,
            "post": (False, "ok"),
            "interrupt_item": None,
            "break_after": 3,
        },
        # KeyboardInterrupt while a call ignores its cancellation: the stuck worker's
        # replacement started during the shutdown's cancellation and waited forever.
        {
            **_SHUT_DOWN_BASE,
            "items": 4,
            "schedules": [[], ["stubborn_hang"], [], []],
            "workers": 3,
            "rate_limit_retries": 0,
            "post": None,
            "interrupt_item": 2,
            "break_after": None,
        },
    ],
    ids=["break-during-admission", "interrupt-with-a-stuck-call"],
)
def test_no_worker_starts_after_a_stream_shuts_down(scenario: dict[str, Any]) -> None:
    run_virtual(check(copy.deepcopy(scenario)))
