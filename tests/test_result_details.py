"""`WorkItemResult.attempts` and `error_category`: filled by the engine, kept by checkpoints."""

from __future__ import annotations

from typing import Any

from async_batch_llm import ParallelBatchProcessor
from async_batch_llm.checkpoint import MemoryCheckpointStore, ResumePolicy
from async_batch_llm.middleware import BaseMiddleware
from support import ScriptedStrategy, TransientError, fast_config, items_for


async def one(strategy: Any, **kwargs: Any) -> Any:
    async with ParallelBatchProcessor[str, Any, Any](config=fast_config(), **kwargs) as processor:
        results = [r async for r in processor.stream(items_for(strategy, 1))]
    return results[0]


async def test_success_counts_its_attempts() -> None:
    result = await one(ScriptedStrategy([TransientError("x"), TransientError("y")]))
    assert result.success
    assert (result.attempts, result.error_category) == (3, None)


async def test_failure_after_retries_has_attempts_and_category() -> None:
    result = await one(ScriptedStrategy([TransientError("x")] * 3))
    assert not result.success
    assert result.attempts == 3
    assert isinstance(result.error_category, str)
    assert result.error_category


async def test_permanent_failure_stops_at_the_first_attempt() -> None:
    result = await one(ScriptedStrategy([ValueError("bad request")]))
    assert not result.success
    assert result.attempts == 1
    assert result.error_category == "logic_error"


async def test_skipped_item_made_no_call() -> None:
    class Skip(BaseMiddleware[Any, Any, Any]):
        async def before_process(self, work_item: Any) -> Any:
            return None

    strategy = ScriptedStrategy()
    result = await one(strategy, middlewares=[Skip()])
    assert (result.attempts, result.error_category) == (0, "skipped")
    assert strategy.attempts == []


async def test_checkpoint_keeps_attempts_and_category() -> None:
    store = MemoryCheckpointStore()
    await one(ScriptedStrategy([TransientError("x")]), checkpoint=store)
    replayed = await one(ScriptedStrategy(), checkpoint=store)
    assert replayed.replayed
    assert replayed.attempts == 2
    failing = MemoryCheckpointStore()
    await one(ScriptedStrategy([ValueError("bad")]), checkpoint=failing)
    again = await one(ScriptedStrategy(), checkpoint=failing, resume=ResumePolicy.REUSE_ALL)
    assert again.replayed
    assert (again.attempts, again.error_category) == (1, "logic_error")
