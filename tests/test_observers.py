"""Observer base classes, ProcessingEvent, and EventDispatcher.emit."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from async_batch_llm._internal.event_dispatcher import EventDispatcher
from async_batch_llm.observers import (
    BaseObserver,
    ProcessingEvent,
    ProcessorObserver,
)
from async_batch_llm.observers import base as observers_base
from async_batch_llm.observers import metrics as observers_metrics

DISPATCHER_LOGGER = "async_batch_llm._internal.event_dispatcher"


class Recorder(BaseObserver):
    """Records ``(name, event, data)`` into a shared list."""

    def __init__(self, name: str, calls: list[tuple[str, ProcessingEvent, dict[str, Any]]]):
        self.name = name
        self.calls = calls

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.calls.append((self.name, event, data))


class Hanging(BaseObserver):
    """Blocks until cancelled; ``started`` is set once it is waiting."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.started.set()
        await asyncio.Event().wait()


class RaisingObserver(BaseObserver):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        raise self.exc


class TestPublicNames:
    def test_module_exports(self) -> None:
        """The observers package exports the four names, as the defining modules' objects."""
        import async_batch_llm.observers as pkg

        assert pkg.__all__ == [
            "ProcessorObserver",
            "BaseObserver",
            "ProcessingEvent",
            "MetricsObserver",
        ]
        assert pkg.ProcessingEvent is observers_base.ProcessingEvent
        assert pkg.ProcessorObserver is observers_base.ProcessorObserver
        assert pkg.BaseObserver is observers_base.BaseObserver
        assert pkg.MetricsObserver is observers_metrics.MetricsObserver

    def test_processing_event_members(self) -> None:
        """ProcessingEvent has 0.7.2's ten members plus ITEM_REPLAYED (checkpoint replays) and
        the shared budget's two."""
        assert {member.name: member.value for member in ProcessingEvent} == {
            "ITEM_STARTED": "item_started",
            "ITEM_COMPLETED": "item_completed",
            "ITEM_FAILED": "item_failed",
            "ITEM_REPLAYED": "item_replayed",
            "RATE_LIMIT_HIT": "rate_limit_hit",
            "COOLDOWN_STARTED": "cooldown_started",
            "COOLDOWN_ENDED": "cooldown_ended",
            "WORKER_STARTED": "worker_started",
            "WORKER_STOPPED": "worker_stopped",
            "BATCH_STARTED": "batch_started",
            "BATCH_COMPLETED": "batch_completed",
            "SHARED_BUDGET_DEGRADED": "shared_budget_degraded",
            "SHARED_BUDGET_RESTORED": "shared_budget_restored",
            "BATCH_JOB_UPDATED": "batch_job_updated",
        }

    def test_processor_observer_is_abstract(self) -> None:
        """ProcessorObserver cannot be instantiated without on_event."""
        with pytest.raises(TypeError, match="abstract"):
            ProcessorObserver()  # type: ignore[abstract]

    async def test_base_observer_ignores_events(self) -> None:
        """BaseObserver accepts any event and leaves the payload untouched."""
        data = {"item_id": "a"}

        await BaseObserver().on_event(ProcessingEvent.ITEM_STARTED, data)

        assert data == {"item_id": "a"}


class TestDispatch:
    async def test_each_observer_gets_the_callers_dict_in_order(self) -> None:
        """Every observer receives every event, in order, with the caller's dict object."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Recorder("A", calls), Recorder("B", calls)], [])
        first = {"item_id": "x", "worker_id": 0}
        second = {"item_id": "x", "duration": 0.1}

        dispatcher.publish(ProcessingEvent.ITEM_STARTED, first)
        dispatcher.publish(ProcessingEvent.ITEM_COMPLETED, second)
        await dispatcher.drain(5.0)

        for name in ("A", "B"):
            seen = [(event, data) for who, event, data in calls if who == name]
            assert [event for event, _ in seen] == [
                ProcessingEvent.ITEM_STARTED,
                ProcessingEvent.ITEM_COMPLETED,
            ]
            assert seen[0][1] is first
            assert seen[1][1] is second

    async def test_missing_payload_becomes_one_shared_empty_dict(self) -> None:
        """Without a payload every observer receives the same empty dict."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Recorder("A", calls), Recorder("B", calls)], [])

        dispatcher.publish(ProcessingEvent.BATCH_STARTED)
        await dispatcher.drain(5.0)

        assert calls[0][2] == {}
        assert calls[0][2] is calls[1][2]

    async def test_observers_read_at_call_time(self) -> None:
        """With no observers nothing is delivered; observers appended later get later events."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        observers: list[ProcessorObserver] = []
        dispatcher = EventDispatcher(observers, [])

        dispatcher.publish(ProcessingEvent.WORKER_STARTED, {"worker_id": 1})
        observers.append(Recorder("late", calls))
        dispatcher.publish(ProcessingEvent.WORKER_STOPPED, {"worker_id": 1})
        await dispatcher.drain(5.0)

        assert dispatcher.observers is observers
        assert [event for _, event, _ in calls] == [ProcessingEvent.WORKER_STOPPED]

    async def test_publishing_never_waits_for_an_observer(self) -> None:
        """publish() returns before a hung observer has even been called."""
        hanging = Hanging()
        dispatcher = EventDispatcher([hanging], [], observer_timeout=60.0)
        for _ in range(1000):
            dispatcher.publish(ProcessingEvent.ITEM_STARTED, {})
        assert not hanging.started.is_set()
        await dispatcher.drain(0.01)


class TestIsolation:
    async def test_slow_observer_is_timed_out_and_others_still_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer exceeding observer_timeout is skipped with a WARNING; the rest run."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Hanging(), Recorder("B", calls)], [], observer_timeout=0.01)

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            dispatcher.publish(ProcessingEvent.ITEM_COMPLETED, {"item_id": "x"})
            await dispatcher.drain(5.0)

        assert [name for name, _, _ in calls] == ["B"]
        timed_out, missed = caplog.records
        assert timed_out.levelno == logging.WARNING
        assert timed_out.name == DISPATCHER_LOGGER
        assert "timed out" in timed_out.getMessage()
        assert "item_completed" in timed_out.getMessage()
        assert "Hanging" in timed_out.getMessage()
        assert "Hanging missed 1 event" in missed.getMessage()

    async def test_raising_observer_is_isolated(self, caplog: pytest.LogCaptureFixture) -> None:
        """An observer's exception is logged at WARNING with a traceback; the rest still run."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher(
            [Recorder("A", calls), RaisingObserver(ValueError("boom")), Recorder("C", calls)], []
        )

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            dispatcher.publish(ProcessingEvent.RATE_LIMIT_HIT, {"item_id": "x"})
            await dispatcher.drain(5.0)

        assert sorted(name for name, _, _ in calls) == ["A", "C"]
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert "RaisingObserver" in record.getMessage()
        assert "rate_limit_hit" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)

    async def test_observer_raising_timeout_error_is_not_reported_as_timed_out(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A TimeoutError raised by the observer itself is logged as a failure, not a timeout."""
        dispatcher = EventDispatcher([RaisingObserver(TimeoutError("own"))], [])

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            dispatcher.publish(ProcessingEvent.ITEM_FAILED, {"item_id": "x"})
            await dispatcher.drain(5.0)

        [record] = caplog.records
        assert "timed out" not in record.getMessage()
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "own"


class TestStuckObservers:
    async def test_cancelled_error_from_an_observer_is_isolated(self) -> None:
        """A CancelledError an observer raises (nobody cancelled it) fails only that call."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher(
            [RaisingObserver(asyncio.CancelledError()), Recorder("B", calls)], []
        )
        dispatcher.publish(ProcessingEvent.ITEM_STARTED, {})
        dispatcher.publish(ProcessingEvent.ITEM_COMPLETED, {})
        await dispatcher.drain(5.0)
        assert [event for _, event, _ in calls] == [
            ProcessingEvent.ITEM_STARTED,
            ProcessingEvent.ITEM_COMPLETED,
        ]

    async def test_an_observer_ignoring_cancellation_is_abandoned_in_order(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer that swallows the cancellation of an overrun is left behind; the next
        events still reach it, in order, from a fresh delivery task."""
        release = asyncio.Event()
        seen: list[str] = []

        class Stubborn(BaseObserver):
            async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
                seen.append(data["n"])
                if data["n"] == "1":
                    while not release.is_set():
                        try:
                            await release.wait()
                        except asyncio.CancelledError:
                            continue

        dispatcher = EventDispatcher([Stubborn()], [], observer_timeout=0.01, grace=0.01)
        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            for n in "123":
                dispatcher.publish(ProcessingEvent.ITEM_STARTED, {"n": n})
            await dispatcher.drain(5.0)
        assert seen == ["1", "2", "3"]
        assert any("ignored the cancellation" in r.getMessage() for r in caplog.records)
        release.set()
        await asyncio.sleep(0)

    async def test_drain_gives_up_on_a_hung_observer_and_counts_what_it_missed(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer still busy at the end of the drain bound loses the rest, with one
        WARNING that says how many events it missed."""
        hanging = Hanging()
        dispatcher = EventDispatcher([hanging], [], observer_timeout=60.0)
        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            for _ in range(5):
                dispatcher.publish(ProcessingEvent.ITEM_STARTED, {})
            await dispatcher.drain(0.05)
        [record] = caplog.records
        assert "Hanging missed 5 event(s)" in record.getMessage()

    async def test_cancelling_the_draining_task_propagates(self) -> None:
        """Cancelling a task waiting in drain() cancels it rather than logging a timeout."""
        hanging = Hanging()
        dispatcher = EventDispatcher([hanging], [], observer_timeout=60.0)
        dispatcher.publish(ProcessingEvent.BATCH_STARTED, {})
        task = asyncio.create_task(dispatcher.drain(60.0))
        await hanging.started.wait()

        task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await dispatcher.drain(0.01)
