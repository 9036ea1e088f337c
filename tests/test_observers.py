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
        """ProcessingEvent has exactly the ten members with their lower-case values."""
        assert {member.name: member.value for member in ProcessingEvent} == {
            "ITEM_STARTED": "item_started",
            "ITEM_COMPLETED": "item_completed",
            "ITEM_FAILED": "item_failed",
            "RATE_LIMIT_HIT": "rate_limit_hit",
            "COOLDOWN_STARTED": "cooldown_started",
            "COOLDOWN_ENDED": "cooldown_ended",
            "WORKER_STARTED": "worker_started",
            "WORKER_STOPPED": "worker_stopped",
            "BATCH_STARTED": "batch_started",
            "BATCH_COMPLETED": "batch_completed",
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
    async def test_calls_observers_in_list_order_with_the_same_dict(self) -> None:
        """Observers are called one by one in list order, all with the caller's dict object."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Recorder("A", calls), Recorder("B", calls)], [])
        payload = {"item_id": "x", "worker_id": 0}

        await dispatcher.emit(ProcessingEvent.ITEM_STARTED, payload)

        assert [(name, event) for name, event, _ in calls] == [
            ("A", ProcessingEvent.ITEM_STARTED),
            ("B", ProcessingEvent.ITEM_STARTED),
        ]
        assert calls[0][2] is payload
        assert calls[1][2] is payload

    async def test_missing_payload_becomes_one_shared_empty_dict(self) -> None:
        """Without a payload every observer receives the same empty dict."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Recorder("A", calls), Recorder("B", calls)], [])

        await dispatcher.emit(ProcessingEvent.BATCH_STARTED)

        assert calls[0][2] == {}
        assert calls[0][2] is calls[1][2]

    async def test_observers_read_at_call_time(self) -> None:
        """With no observers emit delivers nothing; observers appended later get later events."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        observers: list[ProcessorObserver] = []
        dispatcher = EventDispatcher(observers, [])

        await dispatcher.emit(ProcessingEvent.WORKER_STARTED, {"worker_id": 1})
        observers.append(Recorder("late", calls))
        await dispatcher.emit(ProcessingEvent.WORKER_STOPPED, {"worker_id": 1})

        assert dispatcher.observers is observers
        assert [event for _, event, _ in calls] == [ProcessingEvent.WORKER_STOPPED]


class TestIsolation:
    async def test_slow_observer_is_timed_out_and_others_still_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An observer exceeding observer_timeout is abandoned with a WARNING; later ones run."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher([Hanging(), Recorder("B", calls)], [], observer_timeout=0.01)

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            await dispatcher.emit(ProcessingEvent.ITEM_COMPLETED, {"item_id": "x"})

        assert [name for name, _, _ in calls] == ["B"]
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert record.name == DISPATCHER_LOGGER
        assert "timed out" in record.getMessage()
        assert "item_completed" in record.getMessage()
        assert "Hanging" in record.getMessage()

    async def test_raising_observer_is_isolated(self, caplog: pytest.LogCaptureFixture) -> None:
        """An observer's exception is logged at WARNING with a traceback; the rest still run."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher(
            [Recorder("A", calls), RaisingObserver(ValueError("boom")), Recorder("C", calls)], []
        )

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            await dispatcher.emit(ProcessingEvent.RATE_LIMIT_HIT, {"item_id": "x"})

        assert [name for name, _, _ in calls] == ["A", "C"]
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
            await dispatcher.emit(ProcessingEvent.ITEM_FAILED, {"item_id": "x"})

        [record] = caplog.records
        assert "timed out" not in record.getMessage()
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "own"


class TestCancellation:
    async def test_cancelled_error_from_observer_propagates(self) -> None:
        """CancelledError raised by an observer propagates and later observers are not called."""
        calls: list[tuple[str, ProcessingEvent, dict[str, Any]]] = []
        dispatcher = EventDispatcher(
            [RaisingObserver(asyncio.CancelledError()), Recorder("B", calls)], []
        )

        with pytest.raises(asyncio.CancelledError):
            await dispatcher.emit(ProcessingEvent.ITEM_STARTED, {})
        assert calls == []

    async def test_cancelling_the_emitting_task_propagates(self) -> None:
        """Cancelling a task blocked in an observer cancels it rather than logging a timeout."""
        hanging = Hanging()
        dispatcher = EventDispatcher([hanging], [], observer_timeout=60.0)
        task = asyncio.create_task(dispatcher.emit(ProcessingEvent.BATCH_STARTED, {}))
        await hanging.started.wait()

        task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
