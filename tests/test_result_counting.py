"""The batch's counters count each recorded result once, when they are read, and the
`BatchResult` the processor builds from them equals one that recounts its results."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm.base import BatchResult, WorkItemResult, counted_batch_result
from support import EchoStrategy

_COUNT = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=-5, max_value=-1),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=100),
    st.sampled_from(["10", "x"]),
)
_KEYS = st.sampled_from(
    ["input_tokens", "output_tokens", "total_tokens", "cached_input_tokens", "other"]
)
_USAGE = st.one_of(
    st.dictionaries(_KEYS, _COUNT, max_size=5),
    st.dictionaries(_KEYS, st.integers(min_value=0, max_value=1000), max_size=4),
    st.none(),
    st.just([1, 2]),
)


@st.composite
def _results(draw: Any) -> list[WorkItemResult[Any, Any]]:
    results = []
    for number in range(draw(st.integers(min_value=0, max_value=12))):
        success = draw(st.booleans())
        result: WorkItemResult[Any, Any] = WorkItemResult(
            f"item-{number}",
            success,
            error=None if success else draw(st.sampled_from(["ValueError: x", "Boom", ""])),
            replayed=draw(st.booleans()),
        )
        result.token_usage = draw(_USAGE)
        results.append(result)
    return results


def _counts(batch: BatchResult[Any, Any]) -> tuple[int, ...]:
    return (
        batch.total_items,
        batch.succeeded,
        batch.failed,
        batch.total_input_tokens,
        batch.total_output_tokens,
        batch.total_cached_tokens,
    )


def _processor() -> ParallelBatchProcessor[Any, Any, Any]:
    return ParallelBatchProcessor(config=ProcessorConfig(max_workers=1))


@given(_results(), st.lists(st.integers(min_value=0, max_value=12), max_size=3))
def test_counted_batch_result_equals_a_recount(
    results: list[WorkItemResult[Any, Any]], reads: list[int]
) -> None:
    """However often the counters are read while results come in, each result counts once,
    and the batch result built from the counters equals ``BatchResult(results=...)``."""
    recount = BatchResult(results=copy.deepcopy(results))
    processor = _processor()
    for number, result in enumerate(results):
        processor._results.append(result)
        if number in reads:
            assert processor._stats.processed == number + 1
    stats = processor._stats
    batch = counted_batch_result(list(results), stats)
    assert batch.results == results
    # The counters clean what they count (``None`` usage reads as ``{}``); the totals match.
    assert _counts(batch) == _counts(recount)
    assert stats.processed == len(results)
    assert stats.succeeded + stats.failed == len(results)
    failed_with_text = [r.error for r in results if not r.success and r.error]
    assert sum(stats.error_counts.values()) == len(failed_with_text)


async def test_stats_read_during_a_batch_count_what_is_recorded() -> None:
    """A post-processor reading ``get_stats()`` sees its own result already counted."""
    seen: list[int] = []
    processor: ParallelBatchProcessor[str, str, None]

    async def post(result: WorkItemResult[str, None]) -> None:
        seen.append((await processor.get_stats())["processed"])

    processor = ParallelBatchProcessor(config=ProcessorConfig(max_workers=1), post_processor=post)
    async with processor:
        for number in range(5):
            await processor.add_work(LLMWorkItem(f"item-{number}", EchoStrategy(), f"p{number}"))
        batch = await processor.process_all()
    assert seen == [1, 2, 3, 4, 5]
    stats = await processor.get_stats()
    assert (batch.succeeded, batch.total_input_tokens) == (
        stats["succeeded"],
        stats["total_input_tokens"],
    )
