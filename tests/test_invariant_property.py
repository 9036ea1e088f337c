"""The invariant, checked by hypothesis over random schedules of faults, configs and cancels.

Every accepted item ends in exactly one `WorkItemResult`; ``process_all()`` returns a
`BatchResult` whose counts equal ``get_stats()`` and the `MetricsObserver`'s; each prepared
strategy is cleaned up once; no task is left running. That holds whatever the strategy, the
hooks, the observers and the callbacks do: return, raise any exception, raise a
``CancelledError`` nobody asked for, hang, hang while ignoring cancellation, return garbage.
Only cancelling ``process_all()`` itself propagates, and then the cleanup still happens.

Every example runs on a virtual clock (`virtual_time`), so deadlines, hangs and retry waits
take no real time. A failure prints the example and a ``@reproduce_failure`` blob; run with
``HYPOTHESIS_PROFILE=ci`` (what the suite uses) for the fixed, derandomized sequence.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from virtual_time import run_virtual

#: What one call of a strategy does.
CALL_OUTCOMES = (
    "ok",
    "ok_bad_usage",
    "permanent",
    "transient",
    "rate_limit_hint",
    "rate_limit",
    "hang",
    "stubborn_hang",
    "own_timeout",
    "stray_cancel",
    "base_exception",
    "bad_return",
    "tracked_permanent",
)
#: What a hook (observer, middleware, callback, lifecycle method) does.
HOOK_BEHAVIOURS = ("ok", "raise", "hang", "stubborn_hang", "stray_cancel")


class CustomBase(BaseException):
    """A BaseException subclass that is not an error, raised by user code."""


class RateLimited(Exception):
    def __init__(self, hint: float | None) -> None:
        super().__init__("429 Too Many Requests")
        if hint is not None:
            self.retry_after = hint


@dataclass
class World:
    """State shared by the fakes of one example."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    thread_release: threading.Event = field(default_factory=threading.Event)
    stubborn_running: int = 0

    async def release_all(self, before: set[asyncio.Task[Any]]) -> None:
        """Let user code that ignored cancellation finish, then check that no task started
        since `before` is left."""
        self.release.set()
        self.thread_release.set()
        leftover = asyncio.all_tasks() - before
        if leftover:
            await asyncio.wait(leftover, timeout=60)
        assert not (asyncio.all_tasks() - before)

    async def hang(self, stubborn: bool) -> None:
        if not stubborn:
            await asyncio.sleep(3600)
            return
        self.stubborn_running += 1
        try:
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    continue
        finally:
            self.stubborn_running -= 1

    async def behave(self, behaviour: str) -> None:
        if behaviour == "raise":
            raise RuntimeError("hook failed")
        if behaviour == "hang":
            await self.hang(stubborn=False)
        elif behaviour == "stubborn_hang":
            await self.hang(stubborn=True)
        elif behaviour == "stray_cancel":
            raise asyncio.CancelledError


class ScheduledStrategy(LLMCallStrategy[str]):
    """Each call of an item takes the next outcome of that item's schedule ("ok" after)."""

    def __init__(self, world: World, schedules: dict[str, list[str]], prepare: str) -> None:
        self.world = world
        self.schedules = schedules
        self.prepare_behaviour = prepare
        self.prepared = 0
        self.cleaned = 0

    async def prepare(self) -> None:
        self.prepared += 1
        await self.world.behave(self.prepare_behaviour)

    async def cleanup(self) -> None:
        self.cleaned += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        schedule = self.schedules[prompt]
        outcome = schedule.pop(0) if schedule else "ok"
        await asyncio.sleep(0.001)
        usage: Any = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        if outcome == "ok":
            return prompt, usage
        if outcome == "ok_bad_usage":
            return prompt, {"input_tokens": None, "output_tokens": "2", "total_tokens": -1}
        if outcome == "permanent":
            raise ValueError("bad input")
        if outcome == "transient":
            raise ConnectionError("reset")
        if outcome == "rate_limit_hint":
            raise RateLimited(0.01)
        if outcome == "rate_limit":
            raise RateLimited(None)
        if outcome in ("hang", "stubborn_hang"):
            await self.world.hang(stubborn=outcome == "stubborn_hang")
            return prompt, usage
        if outcome == "own_timeout":
            raise TimeoutError("read timed out")
        if outcome == "stray_cancel":
            raise asyncio.CancelledError
        if outcome == "base_exception":
            raise CustomBase
        if outcome == "keyboard_interrupt":
            raise KeyboardInterrupt
        if outcome == "bad_return":
            return (prompt, usage, "extra")  # type: ignore[return-value]
        assert outcome == "tracked_permanent"
        try:
            raise ValueError("bad input, paid for")
        except ValueError as exc:
            raise TokenTrackingError(str(exc), token_usage=usage) from exc


class MisbehavingObserver(BaseObserver):
    def __init__(self, world: World, behaviour: str) -> None:
        self.world = world
        self.behaviour = behaviour
        self.calls = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls % 3 == 1:  # misbehave now and then, not on every event
            await self.world.behave(self.behaviour)


class MisbehavingMiddleware(BaseMiddleware[str, str, None]):
    def __init__(self, world: World, hooks: dict[str, str]) -> None:
        self.world = world
        self.hooks = hooks

    async def before_process(self, work_item: LLMWorkItem[str, str, None]) -> Any:
        await self.world.behave(self.hooks["before"])
        return work_item

    async def after_process(self, result: WorkItemResult[str, None]) -> Any:
        await self.world.behave(self.hooks["after"])
        return result

    async def on_error(self, work_item: LLMWorkItem[str, str, None], error: Exception) -> Any:
        await self.world.behave(self.hooks["on_error"])
        return None


def sync_callback(world: World, behaviour: str) -> Any:
    def callback(*_args: Any) -> None:
        if behaviour == "raise":
            raise RuntimeError("callback failed")
        if behaviour in ("hang", "stubborn_hang"):
            world.thread_release.wait(30)

    return callback


def async_callback(world: World, behaviour: str) -> Any:
    async def callback(*_args: Any) -> None:
        await world.behave(behaviour)

    return callback


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    items = draw(st.integers(min_value=0, max_value=12))
    return {
        "items": items,
        "strategies": draw(st.integers(min_value=1, max_value=3)),
        "schedules": [
            draw(st.lists(st.sampled_from(CALL_OUTCOMES), max_size=4)) for _ in range(items)
        ],
        "prepare": draw(st.sampled_from(("ok", "ok", "ok", "raise", "hang", "stray_cancel"))),
        "workers": draw(st.integers(min_value=1, max_value=6)),
        "max_attempts": draw(st.integers(min_value=1, max_value=3)),
        "cooldown": draw(st.booleans()),
        "rate_limit_retries": draw(st.integers(min_value=0, max_value=3)),
        "observer": draw(st.sampled_from(HOOK_BEHAVIOURS)),
        "middleware": draw(
            st.none()
            | st.fixed_dictionaries(
                {
                    "before": st.sampled_from(HOOK_BEHAVIOURS),
                    "after": st.sampled_from(HOOK_BEHAVIOURS),
                    "on_error": st.sampled_from(HOOK_BEHAVIOURS),
                }
            )
        ),
        "progress": draw(st.none() | st.tuples(st.booleans(), st.sampled_from(HOOK_BEHAVIOURS))),
        "post": draw(st.none() | st.tuples(st.booleans(), st.sampled_from(HOOK_BEHAVIOURS))),
        "cancel_after": draw(st.none() | st.floats(min_value=0.0, max_value=0.3)),
        # Now and then one call is interrupted (Ctrl-C reaching user code).
        "interrupt_item": draw(st.none() | st.integers(min_value=0, max_value=40)),
    }


def config_for(scenario: dict[str, Any]) -> ProcessorConfig:
    rate_limit = (
        RateLimitConfig(
            cooldown_seconds=0.01,
            slow_start_items=2,
            slow_start_initial_delay=0.002,
            slow_start_final_delay=0.001,
            max_rate_limit_retries=scenario["rate_limit_retries"],
        )
        if scenario["cooldown"]
        else RateLimitConfig(max_rate_limit_retries=scenario["rate_limit_retries"])
    )
    return ProcessorConfig(
        max_workers=scenario["workers"],
        timeout_per_item=0.05,
        post_processor_timeout=0.05,
        progress_interval=2,
        progress_callback_timeout=0.05,
        retry=RetryConfig(
            max_attempts=scenario["max_attempts"], initial_wait=0.001, max_wait=0.002
        ),
        rate_limit=rate_limit,
        hook_timeout=0.05,
        prepare_timeout=0.05,
        cleanup_timeout=0.05,
        observer_timeout=0.05,
        observer_drain_timeout=0.5,
        cancellation_grace=0.02,
    )


def scheduled_items(
    world: World, scenario: dict[str, Any], kind: type[ScheduledStrategy] = ScheduledStrategy
) -> tuple[list[Any], list[LLMWorkItem[str, str, None]]]:
    """The scenario's strategies (of type `kind`) and items ``i0``, ``i1``, ...: item ``n``
    has prompt ``pn`` and follows its schedule."""
    strategies = [kind(world, {}, scenario["prepare"]) for _ in range(scenario["strategies"])]
    items = []
    for index, schedule in enumerate(scenario["schedules"]):
        strategy = strategies[index % len(strategies)]
        strategy.schedules[f"p{index}"] = list(schedule)
        if scenario["interrupt_item"] == index:
            strategy.schedules[f"p{index}"].insert(0, "keyboard_interrupt")
        items.append(LLMWorkItem(item_id=f"i{index}", strategy=strategy, prompt=f"p{index}"))
    return strategies, items


async def check(scenario: dict[str, Any]) -> None:
    world = World()
    strategies, items = scheduled_items(world, scenario)
    metrics = MetricsObserver()
    observers: list[Any] = [metrics, MisbehavingObserver(world, scenario["observer"])]
    middlewares: list[Any] = (
        [MisbehavingMiddleware(world, scenario["middleware"])] if scenario["middleware"] else []
    )
    progress = post = None
    if scenario["progress"] is not None:
        is_async, behaviour = scenario["progress"]
        progress = (async_callback if is_async else sync_callback)(world, behaviour)
    if scenario["post"] is not None:
        is_async, behaviour = scenario["post"]
        post = (async_callback if is_async else sync_callback)(world, behaviour)

    before = asyncio.all_tasks()
    processor = ParallelBatchProcessor[str, str, None](
        config=config_for(scenario),
        observers=observers,
        middlewares=middlewares,
        progress_callback=progress,
        post_processor=post,
    )
    cancelled = interrupted = False
    batch = stats = None
    try:
        async with processor:
            for item in items:
                await processor.add_work(item)
            try:
                # The caller's own task is cancelled, as a user's timeout would do it.
                async with asyncio.timeout(scenario["cancel_after"]):
                    batch = await processor.process_all()
            except TimeoutError:
                cancelled = True
            stats = await processor.get_stats()
    except KeyboardInterrupt:
        # Only a call that raised it interrupts the batch, and it reaches the caller.
        interrupted = True
        assert scenario["interrupt_item"] is not None

    for strategy in strategies:
        # prepare() succeeds at most once and every prepared strategy is cleaned up once.
        assert strategy.cleaned in (0, 1)
        if strategy.cleaned:
            assert strategy.prepared >= 1
    if not (cancelled or interrupted):
        assert batch is not None
        assert sorted(result.item_id for result in batch.results) == sorted(
            item.item_id for item in items
        ), "every accepted item ends in exactly one result"
        assert (batch.total_items, batch.succeeded, batch.failed) == (
            stats["processed"],
            stats["succeeded"],
            stats["failed"],
        )
        assert batch.total_input_tokens == stats["total_input_tokens"]
        exported = await metrics.get_metrics()
        assert (exported["items_succeeded"], exported["items_failed"]) == (
            batch.succeeded,
            batch.failed,
        ), "the metrics observer counts what the batch counts"
        for result in batch.results:
            usage = result.token_usage
            assert all(type(count) is int and count >= 0 for count in usage.values())

    # Nothing of ours keeps running: only user code that ignores cancellation may still be
    # busy, and it ends once released.
    leftover = asyncio.all_tasks() - before
    assert len(leftover) <= world.stubborn_running
    await world.release_all(before)


@settings(
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_every_item_ends_in_exactly_one_result(scenario: dict[str, Any]) -> None:
    """Whatever the fakes do, the invariant holds (see the module docstring)."""
    run_virtual(check(scenario))


@settings(
    max_examples=10,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_the_invariant_holds_on_a_real_clock(scenario: dict[str, Any]) -> None:
    """The same on a real event loop, where threads and timers run in real time."""
    asyncio.run(check(scenario))
