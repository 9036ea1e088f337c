"""Events: the order they fire in, what each payload holds, and who receives them."""

from __future__ import annotations

from typing import Any

from async_batch_llm import (
    BaseMiddleware,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    RateLimitConfig,
    RetryConfig,
    WorkItemResult,
)
from support import (
    EchoStrategy,
    RateLimitError,
    RecordingObserver,
    ScriptedStrategy,
    TransientError,
    fast_config,
    items_for,
    run_batch,
)

Processor = ParallelBatchProcessor[str, Any, Any]
E = ProcessingEvent

PAYLOAD_KEYS: dict[ProcessingEvent, set[str]] = {
    E.BATCH_STARTED: {"total", "max_workers", "start_time"},
    E.WORKER_STARTED: {"worker_id"},
    E.ITEM_STARTED: {"item_id", "worker_id"},
    E.ITEM_COMPLETED: {"item_id", "duration", "tokens"},
    E.ITEM_FAILED: {"item_id", "error_type"},
    E.RATE_LIMIT_HIT: {"item_id", "worker_id"},
    E.COOLDOWN_STARTED: {"worker_id", "duration", "consecutive"},
    E.COOLDOWN_ENDED: {"duration"},
    E.WORKER_STOPPED: {"worker_id"},
    E.BATCH_COMPLETED: {
        "processed",
        "succeeded",
        "failed",
        "total",
        "total_tokens",
        "cached_input_tokens",
        "duration",
    },
}


def _config(**overrides: Any) -> Any:
    overrides.setdefault("max_workers", 1)
    overrides.setdefault(
        "rate_limit",
        RateLimitConfig(
            cooldown_seconds=0.001,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )
    overrides.setdefault(
        "retry", RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False)
    )
    return fast_config(**overrides)


async def _observe(
    strategy: Any, count: int = 1, **config: Any
) -> tuple[RecordingObserver, Any, Processor]:
    observer = RecordingObserver()
    processor = Processor(config=_config(**config), observers=[observer])
    async with processor:
        batch = await run_batch(processor, items_for(strategy, count))
    return observer, batch, processor


def _names(observer: RecordingObserver) -> list[ProcessingEvent]:
    return [event for event, _ in observer.events]


def _item_events(observer: RecordingObserver) -> list[ProcessingEvent]:
    ignored = {E.BATCH_STARTED, E.BATCH_COMPLETED, E.WORKER_STARTED, E.WORKER_STOPPED}
    return [event for event, _ in observer.events if event not in ignored]


class TestTimeline:
    async def test_single_successful_item(self) -> None:
        """One item on one worker gives exactly the API.md 4.11 timeline."""
        observer, batch, _ = await _observe(EchoStrategy())
        assert batch.succeeded == 1
        assert _names(observer) == [
            E.BATCH_STARTED,
            E.WORKER_STARTED,
            E.ITEM_STARTED,
            E.ITEM_COMPLETED,
            E.WORKER_STOPPED,
            E.BATCH_COMPLETED,
        ]

    async def test_every_worker_starts_and_stops(self) -> None:
        """Each worker emits WORKER_STARTED and WORKER_STOPPED once, inside the batch events."""
        observer, _, _ = await _observe(EchoStrategy(), count=6, max_workers=3)
        names = _names(observer)
        assert names[0] is E.BATCH_STARTED
        assert names[-1] is E.BATCH_COMPLETED
        started = sorted(d["worker_id"] for d in observer.of(E.WORKER_STARTED))
        stopped = sorted(d["worker_id"] for d in observer.of(E.WORKER_STOPPED))
        assert started == stopped == [0, 1, 2]
        assert len(observer.of(E.ITEM_STARTED)) == len(observer.of(E.ITEM_COMPLETED)) == 6

    async def test_empty_batch_still_has_batch_and_worker_events(self) -> None:
        """With no items the batch events still fire, and one worker starts and stops."""
        observer, batch, _ = await _observe(EchoStrategy(), count=0, max_workers=2)
        assert batch.total_items == 0
        assert _item_events(observer) == []
        assert _names(observer).count(E.WORKER_STARTED) == 1
        assert _names(observer).count(E.WORKER_STOPPED) == 1

    async def test_item_started_once_per_attempt(self) -> None:
        """Each retry adds an ITEM_STARTED for the same item."""
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b")])
        observer, _, _ = await _observe(strategy)
        assert _item_events(observer) == [
            E.ITEM_STARTED,
            E.ITEM_STARTED,
            E.ITEM_STARTED,
            E.ITEM_COMPLETED,
        ]
        assert {d["item_id"] for d in observer.of(E.ITEM_STARTED)} == {"item-0"}

    async def test_rate_limit_sequence(self) -> None:
        """A 429 adds RATE_LIMIT_HIT, COOLDOWN_STARTED, COOLDOWN_ENDED before the retry."""
        observer, _, _ = await _observe(ScriptedStrategy([RateLimitError()]))
        assert _item_events(observer) == [
            E.ITEM_STARTED,
            E.RATE_LIMIT_HIT,
            E.COOLDOWN_STARTED,
            E.COOLDOWN_ENDED,
            E.ITEM_STARTED,
            E.ITEM_COMPLETED,
        ]

    async def test_permanent_failure_sequence(self) -> None:
        """A permanent failure ends the item with ITEM_FAILED and no ITEM_COMPLETED."""
        observer, _, _ = await _observe(ScriptedStrategy([ValueError("bad")]))
        assert _item_events(observer) == [E.ITEM_STARTED, E.ITEM_FAILED]

    async def test_exhausted_failure_sequence(self) -> None:
        """Exhausted retries end with one ITEM_FAILED after the last ITEM_STARTED (D7)."""
        observer, _, _ = await _observe(
            ScriptedStrategy([TransientError(str(n)) for n in range(3)])
        )
        assert _item_events(observer) == [
            E.ITEM_STARTED,
            E.ITEM_STARTED,
            E.ITEM_STARTED,
            E.ITEM_FAILED,
        ]


class TestPayloads:
    async def test_every_event_has_exactly_its_keys(self) -> None:
        """Each event's payload has exactly the keys of API.md 8.4."""
        strategy = ScriptedStrategy([RateLimitError(), "ok", ValueError("permanent")])
        observer, _, _ = await _observe(strategy, count=3)
        seen = {event for event, _ in observer.events}
        assert seen == set(PAYLOAD_KEYS)
        for event, data in observer.events:
            assert set(data) == PAYLOAD_KEYS[event], event

    async def test_payload_values(self) -> None:
        """Payload values describe the batch, the worker, the item and its tokens."""
        observer, _, _ = await _observe(EchoStrategy(), count=2, max_workers=1)
        (batch_started,) = observer.of(E.BATCH_STARTED)
        assert batch_started["total"] == 2
        assert batch_started["max_workers"] == 1
        assert isinstance(batch_started["start_time"], float)
        assert observer.of(E.WORKER_STARTED) == [{"worker_id": 0}]
        assert observer.of(E.ITEM_STARTED) == [
            {"item_id": "item-0", "worker_id": 0},
            {"item_id": "item-1", "worker_id": 0},
        ]
        completed = observer.of(E.ITEM_COMPLETED)
        assert [(d["item_id"], d["tokens"]) for d in completed] == [("item-0", 15), ("item-1", 15)]
        assert all(d["duration"] >= 0 for d in completed)

    async def test_item_completed_tokens_default_to_zero(self) -> None:
        """ITEM_COMPLETED reports tokens 0 when the usage has no total_tokens."""
        observer, _, _ = await _observe(EchoStrategy({"input_tokens": 3}))
        assert observer.of(E.ITEM_COMPLETED)[0]["tokens"] == 0

    async def test_rate_limit_payloads(self) -> None:
        """RATE_LIMIT_HIT names the item and worker; COOLDOWN_STARTED the length and count."""
        observer, _, _ = await _observe(ScriptedStrategy([RateLimitError()]))
        assert observer.of(E.RATE_LIMIT_HIT) == [{"item_id": "item-0", "worker_id": 0}]
        assert observer.of(E.COOLDOWN_STARTED) == [
            {"worker_id": 0, "duration": 0.001, "consecutive": 1}
        ]
        (ended,) = observer.of(E.COOLDOWN_ENDED)
        assert ended["duration"] >= 0
        assert "error" not in ended

    async def test_batch_completed_counts(self) -> None:
        """BATCH_COMPLETED reports the final counts and token totals."""
        strategy = ScriptedStrategy(
            ["a", ValueError("x"), "b", KeyError("y"), "c"],
            usage={"input_tokens": 4, "total_tokens": 6, "cached_input_tokens": 2},
        )
        observer, batch, _ = await _observe(strategy, count=5)
        (completed,) = observer.of(E.BATCH_COMPLETED)
        assert completed["processed"] == completed["total"] == 5
        assert (completed["succeeded"], completed["failed"]) == (3, 2)
        assert (batch.succeeded, batch.failed) == (3, 2)
        assert completed["total_tokens"] == 18
        assert completed["cached_input_tokens"] == 6
        assert completed["duration"] >= 0


class TestObserverRegistration:
    async def test_observer_appended_after_construction(self) -> None:
        """An observer appended to processor.observers receives the batch's events."""
        late = RecordingObserver()
        processor = Processor(config=_config())
        processor.observers.append(late)
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 1))
        assert _names(late)[0] is E.BATCH_STARTED
        assert len(late.of(E.ITEM_COMPLETED)) == 1

    async def test_callers_list_is_shared(self) -> None:
        """Appending to the non-empty list passed to the constructor takes effect."""
        first = RecordingObserver()
        observers: list[Any] = [first]
        processor = Processor(config=_config(), observers=observers)
        second = RecordingObserver()
        observers.append(second)
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 2))
        assert first.events == second.events
        assert len(second.of(E.ITEM_COMPLETED)) == 2

    async def test_observers_get_every_event_in_order_with_the_same_payload(self) -> None:
        """Each observer receives every event in order; all receive the same payload dict."""
        calls: list[tuple[str, ProcessingEvent, int]] = []

        class Named(RecordingObserver):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
                calls.append((self.name, event, id(data)))
                await super().on_event(event, data)

        a, b = Named("a"), Named("b")
        processor = Processor(config=_config(), observers=[a, b])
        async with processor:
            await run_batch(processor, items_for(EchoStrategy(), 3))
        seen_by_a = [(event, key) for name, event, key in calls if name == "a"]
        seen_by_b = [(event, key) for name, event, key in calls if name == "b"]
        assert seen_by_a == seen_by_b
        assert [event for event, _ in seen_by_a] == [event for event, _ in a.events]
        assert seen_by_a[0][0] is ProcessingEvent.BATCH_STARTED
        assert seen_by_a[-1][0] is ProcessingEvent.BATCH_COMPLETED

    async def test_failing_observer_does_not_break_the_batch(self) -> None:
        """An observer that raises is isolated: the batch and other observers continue."""

        class Broken(RecordingObserver):
            async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
                raise RuntimeError("observer bug")

        healthy = RecordingObserver()
        processor = Processor(config=_config(), observers=[Broken(), healthy])
        async with processor:
            batch = await run_batch(processor, items_for(EchoStrategy(), 2))
        assert batch.succeeded == 2
        assert len(healthy.of(E.ITEM_COMPLETED)) == 2


class TestMetricsObserverIntegration:
    async def test_prometheus_export_after_a_real_batch(self) -> None:
        """After a batch, MetricsObserver's counts match the BatchResult."""
        metrics = MetricsObserver()
        strategy = ScriptedStrategy([RateLimitError(), ValueError("bad")])
        processor = Processor(config=_config(max_workers=2), observers=[metrics])
        async with processor:
            batch = await run_batch(processor, items_for(strategy, 6))
        text = await metrics.export_prometheus()
        lines = text.split("\n")
        assert f"async_batch_llm_items_processed {batch.total_items}" in lines
        assert f"async_batch_llm_items_succeeded {batch.succeeded}" in lines
        assert f"async_batch_llm_items_failed {batch.failed}" in lines
        assert "async_batch_llm_rate_limits_hit 1" in lines
        assert 'async_batch_llm_errors_total{error_type="ValueError"} 1' in lines
        snapshot = await metrics.get_metrics()
        assert snapshot["items_processed"] == 6
        assert snapshot["success_rate"] == 5 / 6
        assert snapshot["processing_times_count"] == 5
        assert snapshot["total_cooldown_time"] >= 0

    async def test_items_rescued_by_middleware_are_counted_once(self) -> None:
        """A failure replaced by a middleware's result emits ITEM_COMPLETED (recovered_from)."""

        class Rescue(BaseMiddleware[Any, Any, Any]):
            async def on_error(self, work_item: Any, error: Exception) -> Any:
                return WorkItemResult(item_id=work_item.item_id, success=True, output="fallback")

        metrics = MetricsObserver()
        recorder = RecordingObserver()
        strategy = ScriptedStrategy([ValueError("permanent"), TransientError("a")] * 2)
        processor = Processor(
            config=_config(max_workers=1, retry=RetryConfig(max_attempts=1, initial_wait=0.001)),
            observers=[metrics, recorder],
            middlewares=[Rescue()],
        )
        async with processor:
            batch = await run_batch(processor, items_for(strategy, 5))
        assert batch.succeeded == 5
        rescued = [data for data in recorder.of(E.ITEM_COMPLETED) if "recovered_from" in data]
        assert sorted(data["recovered_from"] for data in rescued) == [
            "TransientError",
            "TransientError",
            "ValueError",
            "ValueError",
        ]
        assert recorder.of(E.ITEM_FAILED) == []
        snapshot = await metrics.get_metrics()
        assert snapshot["items_processed"] == batch.total_items == 5
        assert snapshot["items_succeeded"] == 5
