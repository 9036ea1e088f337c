"""The batch engine's decisions, against an in-process provider (`fake_provider`)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_provider import USAGE, BatchableStrategy, FakeProvider, FlakyBatchAPI

from async_batch_llm import Budget, LLMWorkItem, ParallelBatchProcessor, ProcessingEvent
from async_batch_llm.cli._model import HTTPStatusClassifier
from async_batch_llm.pricing import Pricer
from support import RecordingObserver, fast_config


def _config(**overrides: Any) -> Any:
    overrides.setdefault("batch_poll_interval", 0.001)
    overrides.setdefault("batch_max_poll_interval", 0.002)
    return fast_config(**overrides)


def _items(strategy: Any, count: int) -> list[LLMWorkItem[str, str, Any]]:
    return [LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"p{n}") for n in range(count)]


async def _run(config: Any, items: list[Any], **kwargs: Any) -> Any:
    processor = ParallelBatchProcessor[str, str, Any](config=config, **kwargs)
    async with processor:
        for item in items:
            await processor.add_work(item)
        return await processor.process_all()


def _by_id(result: Any) -> dict[str, Any]:
    return {r.item_id: r for r in result.results}


async def test_batch_mode_gives_every_item_one_result_from_a_job() -> None:
    provider = FakeProvider()
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="batch"), _items(strategy, 25))
    assert result.succeeded == 25
    assert {r.output for r in result.results} == {f"batch:p{n}" for n in range(25)}
    assert all(r.via == "batch" and r.attempts == 1 for r in result.results)
    assert provider.submitted == 1
    assert strategy.online_calls == []
    assert result.total_input_tokens == 250


async def test_jobs_are_split_by_request_count_and_bytes() -> None:
    provider = FakeProvider(max_requests=10, max_bytes=60)
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="batch"), _items(strategy, 23))
    assert result.succeeded == 23
    # 60 bytes hold four or five requests of 12-13 bytes, under the 10-request cap, and
    # each job is filled up to the bytes before the next starts.
    assert [sum(r.size for r in job.requests) for job in provider.jobs.values()] == [
        60,
        60,
        52,
        52,
        52,
        13,
    ]
    assert sum(len(job.requests) for job in provider.jobs.values()) == 23

    capped = FakeProvider()
    result = await _run(
        _config(mode="batch", batch_max_requests=7), _items(BatchableStrategy(capped), 20)
    )
    assert result.succeeded == 20
    assert sorted(len(job.requests) for job in capped.jobs.values()) == [6, 7, 7]


async def test_auto_mode_runs_failed_and_unrun_requests_online() -> None:
    provider = FakeProvider(
        outcomes={
            "p0": "expired",
            "p1": "canceled",
            "p2": "error500",
            "p3": "error400",
            "p4": "missing",
        }
    )
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="auto"), _items(strategy, 8))
    by_id = _by_id(result)
    assert result.succeeded == 8
    for n in range(5):
        assert by_id[f"i{n}"].output == f"online:p{n}"
        assert by_id[f"i{n}"].via == "online"
        assert by_id[f"i{n}"].attempts == 2  # the batch request, then one online call
    for n in range(5, 8):
        assert by_id[f"i{n}"].via == "batch"
    assert sorted(strategy.online_calls) == [f"p{n}" for n in range(5)]


async def test_batch_mode_resubmits_what_may_succeed_and_fails_the_rest() -> None:
    provider = FakeProvider(outcomes={"p0": "expired", "p1": "error500", "p2": "error400"})
    strategy = BatchableStrategy(provider)
    result = await _run(
        _config(mode="batch"), _items(strategy, 4), error_classifier=HTTPStatusClassifier()
    )
    by_id = _by_id(result)
    assert by_id["i3"].success
    # Expired and 5xx requests were submitted again, up to max_attempts=3, then failed.
    assert by_id["i0"].error_category == "batch_expired"
    assert by_id["i0"].attempts == 3
    assert not by_id["i1"].success
    assert by_id["i1"].attempts == 3
    # A permanent error is not submitted again.
    assert not by_id["i2"].success
    assert by_id["i2"].attempts == 1
    assert provider.submitted == 3
    assert strategy.online_calls == []


async def test_a_job_past_the_deadline_is_cancelled_and_runs_online_in_auto_mode() -> None:
    provider = FakeProvider(never_end=True)
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="auto", batch_deadline=0.05), _items(strategy, 5))
    assert result.succeeded == 5
    assert all(r.via == "online" for r in result.results)
    assert provider.cancelled == ["job-1"]


async def test_a_job_past_the_deadline_fails_its_items_in_batch_mode() -> None:
    provider = FakeProvider(never_end=True)
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="batch", batch_deadline=0.05), _items(strategy, 3))
    assert result.failed == 3
    assert {r.error_category for r in result.results} == {"batch_deadline"}
    assert provider.cancelled == ["job-1"]


async def test_batch_mode_refuses_a_strategy_without_a_batch_api() -> None:
    items = _items(BatchableStrategy(None), 2)
    with pytest.raises(ValueError, match="has no batch API"):
        await _run(_config(mode="batch"), items)


async def test_auto_mode_runs_a_strategy_without_a_batch_api_online() -> None:
    strategy = BatchableStrategy(None)
    result = await _run(_config(mode="auto"), _items(strategy, 3))
    assert result.succeeded == 3
    assert len(strategy.online_calls) == 3


async def test_a_failed_submission_falls_back_online_in_auto_mode() -> None:
    provider = FakeProvider(fail_submit=1)
    strategy = BatchableStrategy(provider)
    result = await _run(_config(mode="auto"), _items(strategy, 3))
    assert result.succeeded == 3
    assert len(strategy.online_calls) == 3


async def test_jobs_are_published_to_observers() -> None:
    provider = FakeProvider(checks_to_end=2)
    observer = RecordingObserver()
    await _run(_config(mode="batch"), _items(BatchableStrategy(provider), 3), observers=[observer])
    updates = observer.of(ProcessingEvent.BATCH_JOB_UPDATED)
    assert updates[0]["state"] == "in_progress"
    assert updates[0]["request_count"] == 3
    assert updates[-1]["state"] == "ended"


async def test_a_rerun_resumes_the_recorded_job_instead_of_submitting_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.sqlite"
    provider = FakeProvider(never_end=True)
    strategy = BatchableStrategy(provider)
    items = _items(strategy, 6)
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"), checkpoint=path)
    seen: list[Any] = []

    async def consume() -> None:
        async with processor:
            async for result in processor.stream(items):
                seen.append(result)

    task = asyncio.ensure_future(consume())
    for _ in range(2):
        provider.checked.clear()
        await provider.checked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == []
    # With a checkpoint, the job is kept for the rerun (batch_on_cancel="auto").
    assert provider.cancelled == []

    provider.never_end = False
    rerun = BatchableStrategy(provider)
    result = await _run(_config(mode="batch"), _items(rerun, 6), checkpoint=path)
    assert result.succeeded == 6
    assert provider.submitted == 1  # the same job, polled again
    assert all(r.via == "batch" for r in result.results)

    # Committed: a third run replays, and the replay keeps how the outputs were obtained.
    again = await _run(
        _config(mode="batch"), _items(BatchableStrategy(provider), 6), checkpoint=path
    )
    assert all(r.replayed and r.via == "batch" for r in again.results)
    assert provider.submitted == 1


async def test_cancelling_without_a_checkpoint_cancels_the_jobs() -> None:
    provider = FakeProvider(never_end=True)
    items = _items(BatchableStrategy(provider), 4)
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"))

    async def run() -> None:
        async with processor:
            for item in items:
                await processor.add_work(item)
            await processor.process_all()

    task = asyncio.ensure_future(run())
    await provider.checked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.cancelled == ["job-1"]


async def test_the_budget_admits_batch_requests_by_their_estimate_and_counts_their_usage() -> None:
    provider = FakeProvider()
    # Each request is estimated at 1 prompt token + 5 output tokens: 5 of them fit in 30.
    budget = Budget(max_total_tokens=30, output_tokens_estimate=5)
    result = await _run(
        _config(mode="batch"), _items(BatchableStrategy(provider), 10), budget=budget
    )
    assert result.succeeded == 5
    assert {r.error_category for r in result.results if not r.success} == {"budget_exhausted"}
    assert sum(len(job.requests) for job in provider.jobs.values()) == 5
    assert budget.spent_tokens == 5 * 15


async def test_a_cost_budget_prices_batch_results_at_batch_rates() -> None:
    budget = Budget(max_total_cost=Decimal(10), model="openai:gpt-4o-mini")
    result = await _run(
        _config(mode="batch"), _items(BatchableStrategy(FakeProvider()), 4), budget=budget
    )
    assert result.succeeded == 4
    batch_price = Pricer("openai:gpt-4o-mini", batch=True).price(USAGE)
    online_price = Pricer("openai:gpt-4o-mini").price(USAGE)
    assert batch_price is not None
    assert online_price is not None
    assert budget.spent_cost == 4 * batch_price
    assert batch_price < online_price


async def test_a_job_that_cannot_be_checked_is_given_up_and_runs_online_in_auto_mode() -> None:
    provider = FakeProvider()
    strategy = BatchableStrategy(provider)
    strategy.api = FlakyBatchAPI(provider, refresh_fails=True)
    result = await _run(_config(mode="auto"), _items(strategy, 3))
    assert result.succeeded == 3
    assert all(r.via == "online" for r in result.results)


async def test_a_job_whose_cancellation_fails_is_given_up_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import async_batch_llm._internal.batch_jobs as batch_jobs

    monkeypatch.setattr(batch_jobs, "CANCELLED_JOB_GRACE", 0.05)
    provider = FakeProvider(never_end=True)
    strategy = BatchableStrategy(provider)
    strategy.api = FlakyBatchAPI(provider, cancel_fails=True)
    result = await _run(_config(mode="batch", batch_deadline=0.05), _items(strategy, 2))
    assert {r.error_category for r in result.results} == {"batch_deadline"}


async def test_a_batch_api_hook_that_raises_is_refused_in_batch_mode_and_online_in_auto() -> None:
    class Broken(BatchableStrategy):
        def batch_api(self) -> Any:
            raise RuntimeError("no batch for you")

    with pytest.raises(ValueError, match="batch_api\\(\\) raised RuntimeError"):
        await _run(_config(mode="batch"), _items(Broken(None), 2))
    strategy = Broken(None)
    result = await _run(_config(mode="auto"), _items(strategy, 2))
    assert result.succeeded == 2
    assert len(strategy.online_calls) == 2


async def test_the_progress_display_counts_the_jobs_by_status() -> None:
    from rich.console import Console

    from async_batch_llm.observers.progress import RichProgressObserver

    console = Console(file=__import__("io").StringIO(), force_terminal=False)
    progress = RichProgressObserver(console=console)
    provider = FakeProvider(max_requests=2)
    await _run(_config(mode="batch"), _items(BatchableStrategy(provider), 5), observers=[progress])
    assert progress.batch_jobs == {"job-1": "ended", "job-2": "ended", "job-3": "ended"}
    assert "batch jobs: 3 ended" in progress.status_line().plain


async def test_a_recorded_job_whose_results_are_gone_is_submitted_again(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    provider = FakeProvider(never_end=True)
    items = _items(BatchableStrategy(provider), 4)
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"), checkpoint=path)

    async def consume() -> None:
        async with processor:
            async for _ in processor.stream(items):
                pass

    task = asyncio.ensure_future(consume())
    await provider.checked.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # The provider ended the job but no longer has its results (e.g. past retention).
    provider.never_end = False
    rerun = BatchableStrategy(provider)
    rerun.api = FlakyBatchAPI(provider, results_gone={"job-1"})
    result = await _run(
        _config(mode="batch"),
        _items(rerun, 4),
        checkpoint=path,
        error_classifier=HTTPStatusClassifier(),
    )
    assert result.succeeded == 4
    assert provider.submitted == 2
    assert all(r.via == "batch" and r.attempts == 2 for r in result.results)


async def test_the_same_item_object_taken_twice_gets_two_batch_results() -> None:
    provider = FakeProvider()
    strategy = BatchableStrategy(provider)
    item = LLMWorkItem(item_id="same", strategy=strategy, prompt="p0")
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"))
    async with processor:
        results = [r async for r in processor.stream([item, item])]
    assert [r.via for r in results] == ["batch", "batch"]
    assert strategy.online_calls == []


async def test_a_duck_typed_batch_api_is_refused_in_auto_mode_instead_of_hanging() -> None:
    class Duck(BatchableStrategy):
        def batch_api(self) -> Any:
            return object()

    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="auto"))
    async with processor:
        with pytest.raises(TypeError, match="must return a BatchAPI or None"):
            async for _ in processor.stream(_items(Duck(None), 2)):
                pass


async def test_a_rerun_submits_anew_what_a_finished_run_failed(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    provider = FakeProvider(outcomes={"p0": "expired"})
    first = await _run(
        _config(mode="batch"), _items(BatchableStrategy(provider), 2), checkpoint=path
    )
    assert first.results[0].error_category == "batch_expired" or not all(
        r.success for r in first.results
    )
    assert provider.submitted == 3  # p0 expired three times
    provider.outcomes.clear()
    # Its failure is committed: the rerun does not attach it to the dead job, it submits it.
    again = await _run(
        _config(mode="batch"), _items(BatchableStrategy(provider), 2), checkpoint=path
    )
    by_id = _by_id(again)
    assert by_id["i0"].success
    assert not by_id["i0"].replayed
    assert by_id["i1"].replayed
    assert provider.submitted == 4


async def test_a_stopped_run_leaves_no_budget_reservation_behind() -> None:
    provider = FakeProvider(never_end=True)
    budget = Budget(max_total_tokens=1_000, output_tokens_estimate=5)
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"), budget=budget)

    async def run() -> None:
        async with processor:
            async for _ in processor.stream(_items(BatchableStrategy(provider), 3)):
                pass

    task = asyncio.ensure_future(run())
    await provider.checked.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The submitted requests count at their estimate; nothing is still reserved, so a
    # later run on the same budget is admitted at once instead of waiting for ever.
    assert budget.spent_tokens == 3 * 6
    assert budget.try_reserve(1) is not None


async def test_drain_ends_the_requests_not_submitted_yet() -> None:
    provider = FakeProvider()
    strategy = BatchableStrategy(provider)
    processor = ParallelBatchProcessor[str, str, Any](config=_config(mode="batch"))

    async def slow_source() -> Any:
        for item in _items(strategy, 3):
            yield item
        processor.drain()
        await asyncio.sleep(0)

    async with processor:
        results = [r async for r in processor.stream(slow_source())]
    assert {r.error_category for r in results} == {"interrupted"}
    assert provider.submitted == 0


async def test_batch_items_get_their_spans_with_the_real_model_and_via_batch() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from async_batch_llm.telemetry import OpenTelemetry

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider = FakeProvider(outcomes={"p0": "expired"})
    strategy = BatchableStrategy(provider)
    result = await _run(
        _config(mode="auto"),
        _items(strategy, 4),
        telemetry=OpenTelemetry(tracer_provider=tracer_provider),
    )
    assert result.succeeded == 4
    spans = exporter.get_finished_spans()
    items = {s.attributes["abl.item.id"]: s for s in spans if s.name == "abl.item"}
    assert sorted(items) == ["i0", "i1", "i2", "i3"]
    assert items["i0"].attributes["abl.via"] == "online"  # expired, then run online
    assert all(items[f"i{n}"].attributes["abl.via"] == "batch" for n in (1, 2, 3))
    attempts = [s for s in spans if s.name == "abl.attempt"]
    assert {s.attributes["gen_ai.request.model"] for s in attempts} == {
        items["i1"].attributes["gen_ai.request.model"]
    }
    assert sorted(s.attributes["abl.via"] for s in attempts) == ["batch"] * 3 + ["online"]
