"""`MetricsObserver`: counts items, failures, rate limits and processing times."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

__all__ = ["MetricsObserver"]

_PROMETHEUS_PREFIX = "async_batch_llm_"

# (metric name, Prometheus type, help text), in export order.
_PROMETHEUS_METRICS: tuple[tuple[str, str, str], ...] = (
    ("items_processed", "counter", "Total items processed"),
    ("items_succeeded", "counter", "Total items succeeded"),
    ("items_failed", "counter", "Total items failed"),
    ("rate_limits_hit", "counter", "Total rate limits encountered"),
    ("avg_processing_time", "gauge", "Average processing time in seconds"),
    ("success_rate", "gauge", "Success rate (0.0 to 1.0)"),
    ("total_cooldown_time", "gauge", "Total time spent in rate limit cooldown (seconds)"),
    ("processing_times_count", "gauge", "Number of recorded processing time samples"),
)


# Per-scope gauges, from the ``scope`` keys that rate-limit events carry when the processor
# uses an adaptive rate-limit strategy: (payload key, metric name, type, help text).
_SCOPE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("limit_rpm", "scope_limit_rpm", "gauge", "Requests-per-minute limit in force per scope"),
    ("limit_tpm", "scope_limit_tpm", "gauge", "Tokens-per-minute limit in force per scope"),
    ("remaining_requests", "scope_remaining_requests", "gauge", "Requests left per scope"),
    ("remaining_tokens", "scope_remaining_tokens", "gauge", "Tokens left per scope"),
    ("utilisation", "scope_utilisation", "gauge", "Share of the request limit used per scope"),
    ("scope_rate_limited", "scope_rate_limits_total", "counter", "Rate limits per scope"),
)


def _initial_metrics() -> dict[str, Any]:
    return {
        "items_processed": 0,
        "items_succeeded": 0,
        "items_failed": 0,
        "rate_limits_hit": 0,
        "total_cooldown_time": 0.0,
        "processing_times": [],
        "error_counts": {},
        "processing_times_count": 0,
        "processing_times_sum": 0.0,
    }


def _escape_label_value(value: str) -> str:
    # Prometheus text format: backslash first, so the escapes added after it stay single.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsObserver(BaseObserver):
    """Aggregate batch metrics from processor events and export them as dict, JSON or Prometheus.

    Counts processed, succeeded and failed items, failures per error type, rate limits and
    cooldown time, and keeps the most recent ``max_processing_samples`` item durations (the
    count and sum of durations cover every item, not just the kept samples).

    Args:
        max_processing_samples: How many recent item durations to keep; must be > 0.

    Raises:
        ValueError: ``max_processing_samples`` is not positive.
    """

    def __init__(self, *, max_processing_samples: int = 100) -> None:
        if max_processing_samples <= 0:
            msg = (
                f"max_processing_samples must be > 0, got {max_processing_samples!r}: "
                "pass the number of recent durations to keep, e.g. 100"
            )
            raise ValueError(msg)
        self.metrics: dict[str, Any] = _initial_metrics()
        self._max_processing_samples = max_processing_samples
        self._processing_times: deque[float] = deque(maxlen=max_processing_samples)
        self._lock = asyncio.Lock()
        #: The latest state of every rate-limit scope seen in events, by scope name.
        self.rate_limit_scopes: dict[str, dict[str, Any]] = {}

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Update the counters from one event.

        ``ITEM_COMPLETED`` and ``ITEM_FAILED`` count items run (with their ``duration``
        and ``error_type``), ``ITEM_REPLAYED`` counts results read back from a checkpoint
        as ``items_replayed`` (apart from the items run), ``RATE_LIMIT_HIT`` counts rate
        limits and ``COOLDOWN_ENDED`` adds its ``duration`` to the cooldown time; other
        events are ignored.
        """
        async with self._lock:
            metrics = self.metrics
            if event is ProcessingEvent.ITEM_COMPLETED:
                metrics["items_processed"] += 1
                metrics["items_succeeded"] += 1
                if "duration" in data:
                    duration = float(data["duration"])
                    metrics["processing_times_sum"] += duration
                    metrics["processing_times_count"] += 1
                    self._processing_times.append(duration)
            elif event is ProcessingEvent.ITEM_FAILED:
                metrics["items_processed"] += 1
                metrics["items_failed"] += 1
                if "error_type" in data:
                    error_counts: dict[str, int] = metrics["error_counts"]
                    error_type = str(data["error_type"])
                    error_counts[error_type] = error_counts.get(error_type, 0) + 1
            elif event is ProcessingEvent.ITEM_REPLAYED:
                # Only once a checkpoint replays: 0.7.2's metrics keep their keys otherwise.
                metrics["items_replayed"] = metrics.get("items_replayed", 0) + 1
            elif event is ProcessingEvent.RATE_LIMIT_HIT:
                metrics["rate_limits_hit"] += 1
            elif event is ProcessingEvent.COOLDOWN_ENDED and "duration" in data:
                metrics["total_cooldown_time"] += float(data["duration"])
            if "scope" in data:
                self.rate_limit_scopes[str(data["scope"])] = {
                    key: data.get(key) for key, _, _, _ in _SCOPE_METRICS
                } | {"limit_source": data.get("limit_source")}

    async def get_metrics(self) -> dict[str, Any]:
        """Return a snapshot of `metrics` with derived values.

        ``processing_times`` holds the kept duration samples (oldest first);
        ``avg_processing_time`` is the mean over all recorded durations and
        ``success_rate`` is succeeded / processed, each 0 when nothing was recorded.
        """
        async with self._lock:
            snapshot = dict(self.metrics)
            snapshot["processing_times"] = list(self._processing_times)
            snapshot["error_counts"] = dict(self.metrics["error_counts"])
        count = snapshot["processing_times_count"]
        processed = snapshot["items_processed"]
        snapshot["avg_processing_time"] = snapshot["processing_times_sum"] / count if count else 0
        snapshot["success_rate"] = snapshot["items_succeeded"] / processed if processed else 0
        if self.rate_limit_scopes:
            snapshot["rate_limit_scopes"] = {
                scope: dict(state) for scope, state in self.rate_limit_scopes.items()
            }
        return snapshot

    def reset(self) -> None:
        """Forget everything recorded so far (the `metrics` dict is reset in place)."""
        self.metrics.clear()
        self.metrics.update(_initial_metrics())
        self._processing_times.clear()
        self.rate_limit_scopes.clear()

    async def export_dict(self) -> dict[str, Any]:
        """Return the same snapshot as `get_metrics`."""
        return await self.get_metrics()

    async def export_json(self) -> str:
        """Return the snapshot as indented JSON, without the ``processing_times`` samples."""
        snapshot = await self.get_metrics()
        del snapshot["processing_times"]
        return json.dumps(snapshot, indent=2)

    async def export_prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format.

        Every metric is named ``async_batch_llm_<name>`` with ``# HELP`` and ``# TYPE``
        lines; failures per error type follow as ``async_batch_llm_errors_total``
        with an ``error_type`` label.
        """
        snapshot = await self.get_metrics()
        lines: list[str] = []
        for name, metric_type, help_text in _PROMETHEUS_METRICS:
            full_name = _PROMETHEUS_PREFIX + name
            lines.append(f"# HELP {full_name} {help_text}")
            lines.append(f"# TYPE {full_name} {metric_type}")
            lines.append(f"{full_name} {snapshot[name]}")
            lines.append("")
        if "items_replayed" in snapshot:
            full_name = _PROMETHEUS_PREFIX + "items_replayed"
            lines.append(f"# HELP {full_name} Total items replayed from a checkpoint")
            lines.append(f"# TYPE {full_name} counter")
            lines.append(f"{full_name} {snapshot['items_replayed']}")
            lines.append("")
        error_counts: dict[str, int] = snapshot["error_counts"]
        if error_counts:
            full_name = _PROMETHEUS_PREFIX + "errors_total"
            lines.append(f"# HELP {full_name} Total errors by type")
            lines.append(f"# TYPE {full_name} counter")
            for error_type, count in error_counts.items():
                label = _escape_label_value(error_type)
                lines.append(f'{full_name}{{error_type="{label}"}} {count}')
            lines.append("")
        scopes: dict[str, dict[str, Any]] = snapshot.get("rate_limit_scopes", {})
        for key, name, metric_type, help_text in _SCOPE_METRICS:
            values = [
                (scope, state[key]) for scope, state in scopes.items() if state[key] is not None
            ]
            if not values:
                continue
            full_name = _PROMETHEUS_PREFIX + name
            lines.append(f"# HELP {full_name} {help_text}")
            lines.append(f"# TYPE {full_name} {metric_type}")
            for scope, value in values:
                lines.append(f'{full_name}{{scope="{_escape_label_value(scope)}"}} {value}')
            lines.append("")
        return "\n".join(lines)
