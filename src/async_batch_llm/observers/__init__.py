"""Observers that receive the processor's events, and the built-in `MetricsObserver`."""

from __future__ import annotations

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent, ProcessorObserver
from async_batch_llm.observers.metrics import MetricsObserver

__all__ = ["ProcessorObserver", "BaseObserver", "ProcessingEvent", "MetricsObserver"]
