"""Observers: read-only listeners for what happens inside a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

__all__ = ["BaseObserver", "ProcessingEvent", "ProcessorObserver"]


class ProcessingEvent(Enum):
    """The events a processor reports to its observers."""

    ITEM_STARTED = "item_started"
    ITEM_COMPLETED = "item_completed"
    ITEM_FAILED = "item_failed"
    ITEM_REPLAYED = "item_replayed"
    """A result read back from a checkpoint instead of produced by a call (payload:
    ``item_id``, ``success``); such an item gets no ``ITEM_COMPLETED`` / ``ITEM_FAILED``."""
    RATE_LIMIT_HIT = "rate_limit_hit"
    COOLDOWN_STARTED = "cooldown_started"
    COOLDOWN_ENDED = "cooldown_ended"
    WORKER_STARTED = "worker_started"
    WORKER_STOPPED = "worker_stopped"
    BATCH_STARTED = "batch_started"
    BATCH_COMPLETED = "batch_completed"
    SHARED_BUDGET_DEGRADED = "shared_budget_degraded"
    """The shared budget's Redis became unreachable (payload: ``store``, ``namespace``,
    ``error``, ``policy``); once per outage and process."""
    SHARED_BUDGET_RESTORED = "shared_budget_restored"
    """The shared budget's Redis answers again (payload: ``store``, ``namespace``)."""
    BATCH_JOB_UPDATED = "batch_job_updated"
    """A provider batch job was submitted, resumed, or changed state (payload: ``job_id``,
    ``provider``, ``model``, ``state``, ``provider_status``, ``request_count``, ``counts``,
    ``submitted_at``, ``resumed``)."""


class ProcessorObserver(ABC):
    """Interface of an observer; subclass `BaseObserver` for a no-op default.

    Observers are called one after another, each with a time limit; one that raises or
    overruns is logged and skipped without affecting the batch.
    """

    @abstractmethod
    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Handle ``event``; ``data`` holds the event's payload and is shared by all observers."""


class BaseObserver(ProcessorObserver):
    """An observer that ignores every event."""

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Do nothing."""
