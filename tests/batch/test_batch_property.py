"""Batch mode's invariants, checked by hypothesis over random providers, configs and stops.

For random per-request outcomes (success, expiry, cancellation, missing results, 5xx and
4xx errors), job caps, submission failures, deadlines, modes and an optional stop of the
first run part-way (with a checkpoint, then a rerun), what must hold:

- every item ends in exactly one result, in each run that finishes;
- ``BatchResult`` counts equal ``get_stats()``;
- ``batch`` mode never calls online; ``auto`` mode calls online exactly the items whose
  batch request did not succeed;
- a rerun after a stop submits no request the stopped run had submitted and was still
  waiting for (it attaches them to their recorded job);
- no task of ours is left running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fake_provider import BatchableStrategy, FakeProvider
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor
from async_batch_llm.cli._model import HTTPStatusClassifier
from support import fast_config

OUTCOMES = ("ok", "ok", "ok", "expired", "canceled", "missing", "error500", "error400")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=1, max_value=30))
    return {
        "count": count,
        "mode": draw(st.sampled_from(["batch", "auto"])),
        "outcomes": {
            f"p{n}": draw(st.sampled_from(OUTCOMES)) for n in range(count) if draw(st.booleans())
        },
        "max_requests": draw(st.integers(min_value=1, max_value=12)),
        "checks_to_end": draw(st.integers(min_value=1, max_value=3)),
        "fail_submit": draw(st.integers(min_value=0, max_value=2)),
        "stop_after_checks": draw(st.none() | st.integers(min_value=1, max_value=3)),
        "attempts": draw(st.integers(min_value=1, max_value=3)),
    }


def _config(scenario: dict[str, Any]) -> Any:
    from async_batch_llm import RetryConfig

    return fast_config(
        mode=scenario["mode"],
        batch_poll_interval=0.001,
        batch_max_poll_interval=0.002,
        batch_max_requests=scenario["max_requests"],
        retry=RetryConfig(
            max_attempts=scenario["attempts"], initial_wait=0.001, max_wait=0.001, jitter=False
        ),
    )


async def _first_run_stopped(
    scenario: dict[str, Any], provider: FakeProvider, path: Path
) -> set[str]:
    """Run with a checkpoint and stop after a few status checks; return the prompts that
    were in jobs still running when it stopped."""
    strategy = BatchableStrategy(provider)
    items = [
        LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"p{n}")
        for n in range(scenario["count"])
    ]
    processor = ParallelBatchProcessor[str, str, Any](
        config=_config(scenario), checkpoint=path, error_classifier=HTTPStatusClassifier()
    )
    provider.never_end = True

    async def consume() -> None:
        async with processor:
            async for _ in processor.stream(items):
                pass

    task = asyncio.ensure_future(consume())
    checks = 0
    while not task.done() and checks < scenario["stop_after_checks"]:
        provider.checked.clear()
        waiter = asyncio.ensure_future(provider.checked.wait())
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        checks += 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    provider.never_end = False
    return {
        request.body["prompt"]
        for job in provider.jobs.values()
        if not job.ended
        for request in job.requests
    }


async def _check(scenario: dict[str, Any], path: Path) -> None:
    provider = FakeProvider(
        checks_to_end=scenario["checks_to_end"],
        fail_submit=scenario["fail_submit"],
        outcomes=dict(scenario["outcomes"]),
    )
    waiting: set[str] = set()
    checkpoint = None
    if scenario["stop_after_checks"] is not None:
        waiting = await _first_run_stopped(scenario, provider, path)
        checkpoint = path
    submitted_before = {
        request.body["prompt"]: job_id
        for job_id, job in provider.jobs.items()
        for request in job.requests
    }
    jobs_before = set(provider.jobs)

    strategy = BatchableStrategy(provider)
    items = [
        LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=f"p{n}")
        for n in range(scenario["count"])
    ]
    processor = ParallelBatchProcessor[str, str, Any](
        config=_config(scenario), checkpoint=checkpoint, error_classifier=HTTPStatusClassifier()
    )
    async with processor:
        for item in items:
            await processor.add_work(item)
        result = await processor.process_all()
        stats = await processor.get_stats()

    ids = [r.item_id for r in result.results]
    assert sorted(ids) == sorted(item.item_id for item in items)
    assert result.succeeded == stats["succeeded"]
    assert result.failed == stats["failed"]
    if scenario["mode"] == "batch":
        assert strategy.online_calls == []
    for r in result.results:
        if r.success and not r.replayed:
            prompt = f"p{r.item_id[1:]}"
            expected = "batch" if r.via == "batch" else "online"
            assert r.output == f"{expected}:{prompt}"
    online = set(strategy.online_calls)
    batch_ok = {f"p{r.item_id[1:]}" for r in result.results if r.via == "batch" and not r.replayed}
    assert not (online & batch_ok)
    # Nothing the stopped run was waiting for was submitted again by the rerun.
    new_jobs = [job for job_id, job in provider.jobs.items() if job_id not in jobs_before]
    resubmitted = {request.body["prompt"] for job in new_jobs for request in job.requests}
    first_round = {
        prompt for prompt in resubmitted if submitted_before.get(prompt) and prompt in waiting
    }
    for prompt in first_round:
        # Only an outcome that may go again (not run, 5xx) is submitted again, after its
        # recorded job ended.
        assert scenario["outcomes"].get(prompt, "ok") in (
            "expired",
            "canceled",
            "missing",
            "error500",
        )
    # A request that succeeds was paid for once, whatever the stop: the rerun collected it
    # from the job the stopped run had submitted.
    times_submitted: dict[str, int] = {}
    for job in provider.jobs.values():
        for request in job.requests:
            prompt = request.body["prompt"]
            times_submitted[prompt] = times_submitted.get(prompt, 0) + 1
    for n in range(scenario["count"]):
        prompt = f"p{n}"
        if scenario["outcomes"].get(prompt, "ok") == "ok":
            assert times_submitted.get(prompt, 0) <= 1, prompt
            if prompt in waiting:
                assert times_submitted[prompt] == 1, prompt
    assert asyncio.all_tasks() == {asyncio.current_task()}, asyncio.all_tasks()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_batch_mode_invariants(scenario: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / f"run-{abs(hash(repr(scenario)))}.sqlite"
    asyncio.run(_check(scenario, path))
