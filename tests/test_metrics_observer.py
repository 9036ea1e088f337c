"""MetricsObserver: event effects, bounded samples, derived values and exports."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from async_batch_llm.observers import MetricsObserver, ProcessingEvent

INITIAL_METRICS: dict[str, Any] = {
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


async def _completed(observer: MetricsObserver, *durations: float) -> None:
    for duration in durations:
        await observer.on_event(
            ProcessingEvent.ITEM_COMPLETED, {"item_id": "i", "duration": duration, "tokens": 5}
        )


async def _failed(observer: MetricsObserver, error_type: str) -> None:
    await observer.on_event(ProcessingEvent.ITEM_FAILED, {"item_id": "i", "error_type": error_type})


class TestConstruction:
    def test_initial_metrics(self) -> None:
        """A new observer starts from the documented zeroed metrics dict."""
        assert MetricsObserver().metrics == INITIAL_METRICS

    @pytest.mark.parametrize("bad", [0, -1])
    def test_non_positive_sample_bound_is_rejected(self, bad: int) -> None:
        """max_processing_samples <= 0 raises ValueError naming the parameter and value."""
        with pytest.raises(ValueError, match=rf"max_processing_samples must be > 0, got {bad}"):
            MetricsObserver(max_processing_samples=bad)

    def test_sample_bound_is_keyword_only(self) -> None:
        """max_processing_samples cannot be passed positionally."""
        with pytest.raises(TypeError):
            MetricsObserver(10)  # type: ignore[call-arg]


class TestEvents:
    async def test_item_completed(self) -> None:
        """ITEM_COMPLETED counts a processed, succeeded item and records its duration."""
        observer = MetricsObserver()

        await _completed(observer, 1.5)

        m = observer.metrics
        assert (m["items_processed"], m["items_succeeded"], m["items_failed"]) == (1, 1, 0)
        assert m["processing_times_count"] == 1
        assert m["processing_times_sum"] == 1.5
        assert (await observer.get_metrics())["processing_times"] == [1.5]

    async def test_item_completed_without_duration(self) -> None:
        """ITEM_COMPLETED without a duration counts the item but records no sample."""
        observer = MetricsObserver()

        await observer.on_event(ProcessingEvent.ITEM_COMPLETED, {"item_id": "i"})

        metrics = await observer.get_metrics()
        assert metrics["items_succeeded"] == 1
        assert metrics["processing_times_count"] == 0
        assert metrics["processing_times"] == []

    async def test_duration_is_converted_to_float(self) -> None:
        """An integer duration is stored as a float."""
        observer = MetricsObserver()

        await _completed(observer, 2)

        [sample] = (await observer.get_metrics())["processing_times"]
        assert isinstance(sample, float)
        assert isinstance(observer.metrics["processing_times_sum"], float)

    async def test_item_failed_counts_by_error_type(self) -> None:
        """ITEM_FAILED counts a processed, failed item and tallies its error type."""
        observer = MetricsObserver()

        await _failed(observer, "ValueError")
        await _failed(observer, "ValueError")
        await _failed(observer, "Skipped")
        await observer.on_event(ProcessingEvent.ITEM_FAILED, {"item_id": "i"})

        m = observer.metrics
        assert (m["items_processed"], m["items_succeeded"], m["items_failed"]) == (4, 0, 4)
        assert m["error_counts"] == {"ValueError": 2, "Skipped": 1}

    async def test_rate_limit_hit(self) -> None:
        """RATE_LIMIT_HIT increments rate_limits_hit and nothing else."""
        observer = MetricsObserver()

        await observer.on_event(ProcessingEvent.RATE_LIMIT_HIT, {"item_id": "i", "worker_id": 0})

        assert observer.metrics == {**INITIAL_METRICS, "rate_limits_hit": 1}

    async def test_cooldown_ended_adds_duration(self) -> None:
        """COOLDOWN_ENDED adds its duration to total_cooldown_time; without one it is a no-op."""
        observer = MetricsObserver()

        await observer.on_event(ProcessingEvent.COOLDOWN_ENDED, {"duration": 2.5})
        await observer.on_event(ProcessingEvent.COOLDOWN_ENDED, {"duration": 1.0})
        await observer.on_event(ProcessingEvent.COOLDOWN_ENDED, {})

        assert observer.metrics["total_cooldown_time"] == 3.5

    @pytest.mark.parametrize(
        "event",
        [
            ProcessingEvent.ITEM_STARTED,
            ProcessingEvent.COOLDOWN_STARTED,
            ProcessingEvent.WORKER_STARTED,
            ProcessingEvent.WORKER_STOPPED,
            ProcessingEvent.BATCH_STARTED,
            ProcessingEvent.BATCH_COMPLETED,
        ],
    )
    async def test_other_events_are_ignored(self, event: ProcessingEvent) -> None:
        """Events without a metric leave every counter untouched."""
        observer = MetricsObserver()

        await observer.on_event(event, {"duration": 9.0, "error_type": "X", "item_id": "i"})

        assert observer.metrics == INITIAL_METRICS

    async def test_concurrent_events_are_all_counted(self) -> None:
        """Events delivered concurrently are each counted exactly once."""
        observer = MetricsObserver()

        await asyncio.gather(*(_completed(observer, 1.0) for _ in range(50)))

        assert observer.metrics["items_succeeded"] == 50
        assert observer.metrics["processing_times_count"] == 50


class TestSamplesAndDerivedValues:
    async def test_samples_are_bounded_but_count_continues(self) -> None:
        """Only the newest samples are kept; count, sum and average cover every duration."""
        observer = MetricsObserver(max_processing_samples=3)

        await _completed(observer, 1.0, 2.0, 3.0, 4.0, 5.0)

        metrics = await observer.get_metrics()
        assert metrics["processing_times"] == [3.0, 4.0, 5.0]
        assert metrics["processing_times_count"] == 5
        assert metrics["processing_times_sum"] == 15.0
        assert metrics["avg_processing_time"] == 3.0

    async def test_derived_values(self) -> None:
        """get_metrics adds avg_processing_time and success_rate to every metrics key."""
        observer = MetricsObserver()
        await _completed(observer, 1.0, 2.0, 3.0)
        await _failed(observer, "ValueError")

        metrics = await observer.get_metrics()

        assert set(metrics) == set(INITIAL_METRICS) | {"avg_processing_time", "success_rate"}
        assert metrics["avg_processing_time"] == 2.0
        assert metrics["success_rate"] == 0.75

    async def test_derived_values_are_zero_without_data(self) -> None:
        """With nothing recorded, average and success rate are 0 rather than dividing by zero."""
        metrics = await MetricsObserver().get_metrics()

        assert metrics["avg_processing_time"] == 0
        assert metrics["success_rate"] == 0

    async def test_snapshot_is_a_copy(self) -> None:
        """Mutating a get_metrics snapshot does not change the observer."""
        observer = MetricsObserver()
        await _completed(observer, 1.0)
        await _failed(observer, "ValueError")

        snapshot = await observer.get_metrics()
        snapshot["processing_times"].append(99.0)
        snapshot["error_counts"]["ValueError"] = 99

        again = await observer.get_metrics()
        assert again["processing_times"] == [1.0]
        assert again["error_counts"] == {"ValueError": 1}

    async def test_export_dict_equals_get_metrics(self) -> None:
        """export_dict returns the same snapshot as get_metrics."""
        observer = MetricsObserver()
        await _completed(observer, 1.0)
        await _failed(observer, "KeyError")

        assert await observer.export_dict() == await observer.get_metrics()


class TestReset:
    async def test_reset_restores_initial_state(self) -> None:
        """reset() zeroes every metric and drops the samples, keeping the same dict object."""
        observer = MetricsObserver()
        metrics_dict = observer.metrics
        await _completed(observer, 1.0)
        await _failed(observer, "ValueError")
        await observer.on_event(ProcessingEvent.RATE_LIMIT_HIT, {})
        await observer.on_event(ProcessingEvent.COOLDOWN_ENDED, {"duration": 1.0})

        observer.reset()

        assert observer.metrics == INITIAL_METRICS
        assert observer.metrics is metrics_dict
        assert (await observer.get_metrics())["processing_times"] == []

    async def test_recording_continues_after_reset(self) -> None:
        """After reset() new events are counted from zero with fresh containers."""
        observer = MetricsObserver()
        await _failed(observer, "ValueError")
        observer.reset()

        await _failed(observer, "KeyError")

        assert observer.metrics["error_counts"] == {"KeyError": 1}
        assert observer.metrics["items_failed"] == 1


class TestExports:
    async def test_export_json(self) -> None:
        """export_json is indented JSON of the snapshot without the processing_times samples."""
        observer = MetricsObserver()
        await _completed(observer, 2.0)
        await _failed(observer, "ValueError")

        text = await observer.export_json()

        expected = await observer.get_metrics()
        del expected["processing_times"]
        assert json.loads(text) == expected
        assert 'processing_times"' not in text
        assert text == json.dumps(expected, indent=2)

    async def test_export_prometheus_exact_text(self) -> None:
        """The Prometheus export has the exact HELP/TYPE/value lines and escaped error labels."""
        observer = MetricsObserver()
        await _completed(observer, 1.0, 2.0, 3.0)
        await _failed(observer, 'Bad"Name\\x')
        await observer.on_event(ProcessingEvent.RATE_LIMIT_HIT, {})
        await observer.on_event(ProcessingEvent.COOLDOWN_ENDED, {"duration": 3.0})

        text = await observer.export_prometheus()

        assert text == (
            "# HELP async_batch_llm_items_processed Total items processed\n"
            "# TYPE async_batch_llm_items_processed counter\n"
            "async_batch_llm_items_processed 4\n"
            "\n"
            "# HELP async_batch_llm_items_succeeded Total items succeeded\n"
            "# TYPE async_batch_llm_items_succeeded counter\n"
            "async_batch_llm_items_succeeded 3\n"
            "\n"
            "# HELP async_batch_llm_items_failed Total items failed\n"
            "# TYPE async_batch_llm_items_failed counter\n"
            "async_batch_llm_items_failed 1\n"
            "\n"
            "# HELP async_batch_llm_rate_limits_hit Total rate limits encountered\n"
            "# TYPE async_batch_llm_rate_limits_hit counter\n"
            "async_batch_llm_rate_limits_hit 1\n"
            "\n"
            "# HELP async_batch_llm_avg_processing_time Average processing time in seconds\n"
            "# TYPE async_batch_llm_avg_processing_time gauge\n"
            "async_batch_llm_avg_processing_time 2.0\n"
            "\n"
            "# HELP async_batch_llm_success_rate Success rate (0.0 to 1.0)\n"
            "# TYPE async_batch_llm_success_rate gauge\n"
            "async_batch_llm_success_rate 0.75\n"
            "\n"
            "# HELP async_batch_llm_total_cooldown_time"
            " Total time spent in rate limit cooldown (seconds)\n"
            "# TYPE async_batch_llm_total_cooldown_time gauge\n"
            "async_batch_llm_total_cooldown_time 3.0\n"
            "\n"
            "# HELP async_batch_llm_processing_times_count"
            " Number of recorded processing time samples\n"
            "# TYPE async_batch_llm_processing_times_count gauge\n"
            "async_batch_llm_processing_times_count 3\n"
            "\n"
            "# HELP async_batch_llm_errors_total Total errors by type\n"
            "# TYPE async_batch_llm_errors_total counter\n"
            'async_batch_llm_errors_total{error_type="Bad\\"Name\\\\x"} 1\n'
        )

    async def test_export_prometheus_without_errors(self) -> None:
        """Without failures there is no errors_total block, and empty averages print as 0."""
        text = await MetricsObserver().export_prometheus()

        assert "errors_total" not in text
        assert "async_batch_llm_avg_processing_time 0\n" in text
        assert "async_batch_llm_success_rate 0\n" in text
        assert "async_batch_llm_total_cooldown_time 0.0\n" in text
        assert text.endswith("async_batch_llm_processing_times_count 0\n")

    async def test_export_prometheus_error_lines_follow_insertion_order(self) -> None:
        """One errors_total line per error type, in first-seen order."""
        observer = MetricsObserver()
        await _failed(observer, "B")
        await _failed(observer, "A")
        await _failed(observer, "B")

        lines = (await observer.export_prometheus()).splitlines()

        assert [line for line in lines if line.startswith("async_batch_llm_errors_total")] == [
            'async_batch_llm_errors_total{error_type="B"} 2',
            'async_batch_llm_errors_total{error_type="A"} 1',
        ]
