"""The timeline a checkpointed run records for reports: what it counts must add up.

Properties, over random fault schedules: the intervals' finished items are exactly the
items run live, their calls exactly the attempts of those results, their replays exactly
the replayed results; the latency histogram's percentiles are within its 5% resolution;
merging intervals for drawing keeps every total.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig, RetryConfig
from async_batch_llm._internal.timeline import (
    _BOUNDS,
    CHUNK_POINTS,
    LatencyHistogram,
    TimelineRecorder,
    _bucket,
    _bucket_upper,
    read_timeline,
)
from async_batch_llm._internal.values import WorkItemResult
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.report import IntervalPoint, load_report
from async_batch_llm.report._load import _merge_points
from async_batch_llm.strategies.errors import ErrorInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Faulty(LLMCallStrategy[str]):
    """Fails each prompt's first ``plan[prompt]`` calls with a retryable or permanent error."""

    def __init__(self, plan: dict[str, tuple[int, bool]]) -> None:
        self.plan = plan

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, dict[str, int]]:
        await asyncio.sleep(0)
        failures, permanent = self.plan.get(prompt, (0, False))
        if attempt <= failures:
            if permanent:
                raise ValueError(f"bad {prompt}")
            raise ConnectionError(f"flaky {prompt}")
        return prompt, {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}


def _config() -> ProcessorConfig:
    return ProcessorConfig(
        max_workers=3,
        timeline_interval=0.001,
        retry=RetryConfig(max_attempts=3, initial_wait=0.0001, max_wait=0.0001, jitter=False),
    )


async def _run(store: MemoryCheckpointStore, strategy: Faulty, n: int) -> list[Any]:
    async with ParallelBatchProcessor(config=_config(), checkpoint=store) as processor:
        items = (LLMWorkItem(item_id=f"i{k}", strategy=strategy, prompt=f"p{k}") for k in range(n))
        return [result async for result in processor.stream(items)]


def _session_points(meta: dict[str, str], session: int) -> list[IntervalPoint]:
    return [p for p in read_timeline(meta).points if p.session == session]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(min_value=1, max_value=25),
    plan=st.dictionaries(
        st.integers(min_value=0, max_value=24).map(lambda k: f"p{k}"),
        st.tuples(st.integers(min_value=0, max_value=4), st.booleans()),
    ),
)
def test_the_timeline_counts_exactly_the_items_calls_and_replays(
    n: int, plan: dict[str, tuple[int, bool]]
) -> None:
    store = MemoryCheckpointStore()
    strategy = Faulty(plan)
    first = asyncio.run(_run(store, strategy, n))
    points = _session_points(store.meta, 1)
    assert sum(p.succeeded for p in points) == sum(1 for r in first if r.success)
    assert sum(p.failed for p in points) == sum(1 for r in first if not r.success)
    assert sum(p.attempts for p in points) == sum(r.attempts for r in first)
    assert sum(p.input_tokens for p in points) == sum(
        r.token_usage["input_tokens"] for r in first if r.success
    )
    assert all(p.in_flight >= 0 for p in points)
    assert points[-1].in_flight == 0
    summary = json.loads(store.meta["timeline:1:summary"])
    assert summary["ended"] is True
    latency_calls = sum(sum(h["buckets"].values()) for h in summary["latency"].values())
    assert latency_calls == sum(r.attempts for r in first)
    second = asyncio.run(_run(store, strategy, n))
    again = _session_points(store.meta, 2)
    assert sum(p.replayed for p in again) == sum(1 for r in second if r.replayed)
    assert sum(p.succeeded + p.failed for p in again) == sum(1 for r in second if not r.replayed)
    # The first session's record is untouched by the second.
    assert _session_points(store.meta, 1) == points


def test_a_run_without_a_timeline_records_none_and_the_report_says_so() -> None:
    store = MemoryCheckpointStore()

    async def main() -> None:
        config = ProcessorConfig(timeline_interval=None)
        async with ParallelBatchProcessor(config=config, checkpoint=store) as processor:
            items = [LLMWorkItem(item_id="a", strategy=Faulty({}), prompt="x")]
            [r async for r in processor.stream(items)]

    asyncio.run(main())
    assert not [key for key in store.meta if key.startswith("timeline:")]
    report = load_report(store)
    assert report.total == report.succeeded == 1
    assert report.timeline == []
    assert report.ended is None
    assert any("No timeline was recorded" in note for note in report.notes)


def _hooks(recorder: TimelineRecorder, item_id: str, seconds: float) -> None:
    """One item with one successful call of `seconds`, which waited 0.5 s for admission."""
    strategy = Faulty({})
    item = LLMWorkItem(item_id=item_id, strategy=strategy, prompt="x")
    recorder.call_started(0.5)
    recorder.call_ended(strategy, seconds, {"input_tokens": 1, "output_tokens": 1}, None, False)
    result: WorkItemResult[Any, Any] = WorkItemResult(item_id, True, "x", attempts=1)
    recorder.item_ended(result, item, seconds)


def test_the_recorder_rewrites_only_the_open_chunk_and_the_summary() -> None:
    clock = Clock()
    recorder = TimelineRecorder(7, interval=1.0, clock=clock)
    written: dict[str, str] = {}
    for step in range(CHUNK_POINTS + 5):
        _hooks(recorder, f"item{step}", seconds=step / 100)
        clock.now += 1.0
        keys = recorder.flush()
        assert len(keys) == 2
        written.update(keys)
    assert sorted(written) == ["timeline:7:000000", "timeline:7:000001", "timeline:7:summary"]
    assert len(json.loads(written["timeline:7:000000"])) == CHUNK_POINTS
    assert len(json.loads(written["timeline:7:000001"])) == 5
    data = read_timeline(written)
    assert [p.succeeded for p in data.points] == [1] * (CHUNK_POINTS + 5)
    assert all(p.seconds == pytest.approx(1.0) for p in data.points)
    assert all(p.admission_wait == pytest.approx(0.5) for p in data.points)
    slowest = [row.item_id for row in data.slowest]
    assert slowest == [f"item{step}" for step in range(CHUNK_POINTS + 4, CHUNK_POINTS - 16, -1)]
    assert json.loads(written["timeline:7:summary"])["ended"] is False


class _Fast(LLMCallStrategy[str]):
    async def execute(self, prompt: str, attempt: int, timeout: float, state: Any = None) -> Any:
        return prompt, {}


class _Slow(_Fast):
    pass


def test_the_recorder_keeps_each_strategys_calls_apart_and_429s_out_of_latency() -> None:
    clock = Clock()
    recorder = TimelineRecorder(1, interval=1.0, clock=clock)
    fast, slow = _Fast(), _Slow()  # two models, as far as the timeline can tell
    limited = ErrorInfo(True, True, False, "rate_limit")
    flaky = ErrorInfo(True, False, False, "network_error")
    usage = {"input_tokens": 4, "output_tokens": 1, "total_tokens": 5}
    for _ in range(3):
        recorder.call_ended(fast, 0.01, usage, None, False)
        recorder.call_ended(slow, 2.0, {"input_tokens": 10}, None, False)
    recorder.call_ended(fast, 0.5, None, limited, False)
    recorder.call_ended(slow, 3.0, None, flaky, False)
    recorder.call_ended(slow, 9.0, usage, None, True)  # untimed: tokens count, latency not
    point = read_timeline(recorder.flush()).points[0]
    assert point.rate_limited == 1
    assert (point.input_tokens, point.output_tokens) == (3 * 4 + 3 * 10 + 4, 3 * 1 + 1)
    assert recorder.latency["_Fast"].count == 3  # the 429 is not a model's answer time
    assert recorder.latency["_Slow"].count == 4  # the failure is, the untimed call is not
    assert recorder.latency["_Slow"].max == 3.0
    recorder.call_ended(fast, 0.02, usage, None, False)
    again = read_timeline(recorder.flush()).points[-1]
    assert (again.rate_limited, again.input_tokens) == (0, 4)
    assert recorder.latency["_Fast"].count == 4


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_a_latency_bucket_holds_the_durations_between_its_bounds(seconds: float) -> None:
    index = _bucket(seconds)
    assert seconds <= _bucket_upper(index) or index == len(_BOUNDS)
    if index:
        assert seconds > _bucket_upper(index - 1)


def test_read_timeline_skips_malformed_values() -> None:
    clock = Clock()
    recorder = TimelineRecorder(1, interval=1.0, clock=clock)
    _hooks(recorder, "a", 0.1)
    meta = recorder.flush(final=True)
    meta["timeline:2:000000"] = "not json"
    meta["timeline:3:summary"] = json.dumps({"no": "session"})
    meta["other"] = "ignored"
    data = read_timeline(meta)
    assert len(data.points) == 1
    assert list(data.sessions) == [1]


@given(
    st.lists(st.floats(min_value=0.001, max_value=3600.0), min_size=1, max_size=400),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_latency_percentiles_are_within_the_histograms_resolution(
    samples: list[float], fraction: float
) -> None:
    histogram = LatencyHistogram()
    histogram.add_all(samples)
    exact = sorted(samples)[max(0, math.ceil(fraction * len(samples)) - 1)]
    estimate = histogram.percentile(fraction)
    assert exact / 1.051 <= estimate <= exact * 1.051
    assert histogram.max == max(samples)
    # One interval or many: the timeline folds calls interval by interval.
    one_by_one = LatencyHistogram()
    for value in samples:
        one_by_one.add_all([value])
    assert (one_by_one.buckets, one_by_one.count, one_by_one.max) == (
        histogram.buckets,
        histogram.count,
        histogram.max,
    )
    halves = LatencyHistogram(), LatencyHistogram()
    halves[0].add_all(samples[::2])
    halves[1].add_all(samples[1::2])
    halves[0].merge(halves[1])
    assert (halves[0].buckets, halves[0].count, halves[0].max) == (
        histogram.buckets,
        histogram.count,
        histogram.max,
    )
    assert LatencyHistogram.from_json(histogram.to_json()).buckets == histogram.buckets


@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 50), st.integers(0, 5)),
        min_size=0,
        max_size=300,
    ),
    st.integers(min_value=1, max_value=40),
)
def test_merging_intervals_for_drawing_keeps_every_total(
    rows: list[tuple[int, int, int]], max_points: int
) -> None:
    sessions = sorted(rows, key=lambda row: row[0])
    points = [
        IntervalPoint(
            at=float(k), elapsed=float(k), session=s, seconds=1.0, succeeded=ok, rate_limited=rl
        )
        for k, (s, ok, rl) in enumerate(sessions)
    ]
    merged = _merge_points(points, max_points)
    assert sum(p.succeeded for p in merged) == sum(p.succeeded for p in points)
    assert sum(p.rate_limited for p in merged) == sum(p.rate_limited for p in points)
    assert sum(p.seconds for p in merged) == sum(p.seconds for p in points)
    assert len(merged) <= max_points + len({p.session for p in points})
    assert all(a.session <= b.session for a, b in itertools.pairwise(merged))
