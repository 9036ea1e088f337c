"""The worker pool on its own: waiting for its workers, and no worker after `cancel`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm._internal.work_queue import WorkQueue
from async_batch_llm._internal.worker_pool import WorkerPool


def make_pool(queue: WorkQueue[Any], run: Any, recorded: list[Any]) -> WorkerPool:
    def record(result: Any, item: Any, worker: Any) -> bool:
        recorded.append(result)
        return False

    async def post(result: Any, worker: Any) -> None:
        raise AssertionError("no post-processing here")

    return WorkerPool(
        queue,
        run=run,
        on_defect=lambda item, exc: ("defect", item),
        record=record,
        post=post,
        abandoned_result=lambda item, step: ("abandoned", item),
        on_started=lambda worker_id: None,
        on_stopped=lambda worker_id: None,
        hook_timeout=1.0,
        grace=0.01,
    )


async def test_run_returns_once_every_worker_has_emptied_the_queue() -> None:
    queue: WorkQueue[Any] = WorkQueue()
    for n in range(50):
        queue.put_nowait(n)
    recorded: list[Any] = []

    async def run(item: Any, worker: Any) -> Any:
        await asyncio.sleep(0)
        return item

    pool = make_pool(queue, run, recorded)
    await pool.run(7)
    assert sorted(recorded) == list(range(50))
    assert all(task.done() for task in pool.started)


async def test_run_reraises_what_killed_a_worker() -> None:
    queue: WorkQueue[Any] = WorkQueue()
    for n in range(5):
        queue.put_nowait(n)

    class Boom(BaseException):
        pass

    async def run(item: Any, worker: Any) -> Any:
        if item == 3:
            raise Boom  # not an Exception: the worker dies of it
        await asyncio.sleep(0)
        return item

    pool = make_pool(queue, run, [])
    with pytest.raises(Boom):
        await pool.run(2)
    await asyncio.sleep(0)
    assert not pool.tasks


async def test_no_worker_starts_after_cancel() -> None:
    """A late spawn (a stream's store task queueing one more item) or a stuck worker's
    replacement after `cancel` would wait on the queue forever: none is started."""
    queue: WorkQueue[Any] = WorkQueue()
    release = asyncio.Event()

    async def run(item: Any, worker: Any) -> Any:
        await release.wait()
        return item

    queue.put_nowait("first")
    pool = make_pool(queue, run, [])
    pool.spawn(1)
    await asyncio.sleep(0)
    await pool.cancel()
    assert not pool.tasks
    queue.put_nowait("late")
    pool.spawn(1)
    assert not pool.tasks
    assert len(pool.started) == 1
