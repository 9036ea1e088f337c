"""The shared fakes run a real batch end to end."""

from async_batch_llm import ParallelBatchProcessor
from support import EchoStrategy, fast_config, items_for, run_batch


async def test_echo_batch_returns_one_result_per_item() -> None:
    """Every queued item produces exactly one successful result."""
    strategy = EchoStrategy()
    async with ParallelBatchProcessor[str, str, None](config=fast_config()) as processor:
        result = await run_batch(processor, items_for(strategy, 25))
    assert result.total_items == 25
    assert result.succeeded == 25
    assert sorted(r.output for r in result.results) == sorted(f"echo:p{i}" for i in range(25))
    assert strategy.prepare_calls == 1
    assert strategy.cleanup_calls == 1
