"""Token accounting: failed attempts are summed, and every result's usage reaches the totals."""

from __future__ import annotations

from typing import Any

from async_batch_llm import (
    ParallelBatchProcessor,
    RateLimitConfig,
    RetryConfig,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from support import (
    EchoStrategy,
    RateLimitError,
    ScriptedStrategy,
    TransientError,
    fast_config,
    items_for,
    run_batch,
)

Processor = ParallelBatchProcessor[str, Any, Any]

ATTEMPT_USAGE = {
    "input_tokens": 100,
    "output_tokens": 50,
    "total_tokens": 150,
    "cached_input_tokens": 20,
}


def _config(max_attempts: int = 3, **overrides: Any) -> Any:
    overrides.setdefault("max_workers", 1)
    overrides.setdefault(
        "rate_limit",
        RateLimitConfig(
            cooldown_seconds=0.0,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )
    return fast_config(
        retry=RetryConfig(
            max_attempts=max_attempts, initial_wait=0.001, max_wait=0.001, jitter=False
        ),
        **overrides,
    )


async def _run(
    strategies: list[Any], config: Any = None
) -> tuple[list[WorkItemResult[Any, Any]], Any, dict[str, Any]]:
    items = [
        item
        for index, strategy in enumerate(strategies)
        for item in items_for(strategy, 1, prefix=f"s{index}")
    ]
    async with Processor(config=config or _config()) as processor:
        batch = await run_batch(processor, items)
        stats = await processor.get_stats()
    by_id = {result.item_id: result for result in batch.results}
    return [by_id[item.item_id] for item in items], batch, stats


class TestFailedAttemptsAreSummed:
    async def test_exhausted_item_sums_every_attempt(self) -> None:
        """3 failed attempts of 100/50/150 (20 cached) report 300/150/450 (60 cached) (D8)."""
        strategy = ScriptedStrategy(
            [TransientError(str(n)) for n in range(3)], failure_usage=ATTEMPT_USAGE
        )
        (result,), _, _ = await _run([strategy])
        assert result.success is False
        assert strategy.attempts == [1, 2, 3]
        assert result.token_usage == {
            "input_tokens": 300,
            "output_tokens": 150,
            "total_tokens": 450,
            "cached_input_tokens": 60,
        }

    async def test_permanent_failure_after_retries_sums_all_attempts(self) -> None:
        """A permanent error after two retryable ones reports all three attempts' tokens (D8)."""
        strategy = ScriptedStrategy(
            [TransientError("a"), TransientError("b"), ValueError("c")],
            failure_usage=ATTEMPT_USAGE,
        )
        (result,), _, _ = await _run([strategy], _config(max_attempts=5))
        assert result.error == "ValueError: c"
        assert result.token_usage["input_tokens"] == 300
        assert result.token_usage["output_tokens"] == 150
        assert result.token_usage["total_tokens"] == 450
        assert result.token_usage.get("cached_input_tokens") == 60

    async def test_permanent_failure_on_first_attempt(self) -> None:
        """A permanent error on attempt 1 reports that attempt's tokens."""
        strategy = ScriptedStrategy([KeyError("k")], failure_usage=ATTEMPT_USAGE)
        (result,), _, _ = await _run([strategy])
        assert result.token_usage["total_tokens"] == 150
        assert result.token_usage.get("cached_input_tokens") == 20

    async def test_rate_limited_attempts_are_summed_too(self) -> None:
        """Tokens of 429'd attempts count towards a failure past the rate-limit bound."""
        strategy = ScriptedStrategy(
            [RateLimitError() for _ in range(5)], failure_usage=ATTEMPT_USAGE
        )
        config = _config(
            rate_limit=RateLimitConfig(
                cooldown_seconds=0.0,
                slow_start_items=0,
                slow_start_initial_delay=0.0,
                slow_start_final_delay=0.0,
                max_rate_limit_retries=1,
            )
        )
        (result,), _, _ = await _run([strategy], config)
        assert strategy.attempts == [1, 2]
        assert result.token_usage["total_tokens"] == 300

    async def test_mixed_failures_all_counted(self) -> None:
        """Rate-limited and retryable attempts before the exhausting one are all counted."""
        strategy = ScriptedStrategy(
            [RateLimitError(), TransientError("a"), TransientError("b")],
            failure_usage=ATTEMPT_USAGE,
        )
        (result,), _, _ = await _run([strategy], _config(max_attempts=2))
        assert result.success is False
        assert strategy.attempts == [1, 2, 3]
        assert result.token_usage["total_tokens"] == 450

    async def test_token_tracking_error_usage_counted(self) -> None:
        """The usage carried by TokenTrackingError is counted for each failed attempt."""
        usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        strategy = ScriptedStrategy(
            [TokenTrackingError("bad answer", token_usage=usage) for _ in range(2)]
        )
        (result,), _, stats = await _run([strategy], _config(max_attempts=2))
        assert result.error == "TokenTrackingError: bad answer"
        assert result.token_usage["input_tokens"] == 14
        assert result.token_usage["output_tokens"] == 6
        assert result.token_usage["total_tokens"] == 20
        assert stats["total_tokens"] == 20

    async def test_failure_without_usage_reports_zero(self) -> None:
        """Failed attempts that report no tokens give a zero total."""
        strategy = ScriptedStrategy([TransientError("a"), TransientError("b")])
        (result,), _, _ = await _run([strategy], _config(max_attempts=2))
        assert result.token_usage.get("input_tokens", 0) == 0
        assert result.token_usage.get("total_tokens", 0) == 0

    async def test_prepare_failure_has_no_usage(self) -> None:
        """An item whose prepare() failed never ran an attempt and reports no tokens."""

        class BrokenPrepare(EchoStrategy):
            async def prepare(self) -> None:
                raise RuntimeError("cannot connect")

        (result,), _, _ = await _run([BrokenPrepare()])
        assert result.success is False
        assert result.error == "RuntimeError: cannot connect"
        assert sum(result.token_usage.values()) == 0


class TestUsageReachesTheTotals:
    async def test_success_usage_flows_to_stats_and_batch_result(self) -> None:
        """Successful usage is summed into ProcessingStats and BatchResult."""
        usage: TokenUsage = {
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "cached_input_tokens": 4,
        }
        results, batch, stats = await _run([EchoStrategy(usage) for _ in range(3)])
        assert all(result.token_usage == usage for result in results)
        assert (stats["total_input_tokens"], stats["total_output_tokens"]) == (30, 15)
        assert stats["total_tokens"] == 45
        assert stats["cached_input_tokens"] == 12
        assert (batch.total_input_tokens, batch.total_output_tokens) == (30, 15)
        assert batch.total_cached_tokens == 12

    async def test_failed_usage_flows_to_stats_and_batch_result(self) -> None:
        """A failed item's summed tokens are part of the batch totals."""
        failing = ScriptedStrategy(
            [TransientError(str(n)) for n in range(3)], failure_usage=ATTEMPT_USAGE
        )
        ok = EchoStrategy({"input_tokens": 1, "output_tokens": 2, "total_tokens": 3})
        _, batch, stats = await _run([failing, ok])
        assert batch.failed == 1
        assert stats["total_input_tokens"] == 301
        assert stats["total_output_tokens"] == 152
        assert stats["total_tokens"] == 453
        assert stats["cached_input_tokens"] == 60
        assert batch.total_input_tokens == 301
        assert batch.total_cached_tokens == 60

    async def test_total_cached_tokens_equals_cached_input_tokens(self) -> None:
        """ProcessingStats.total_cached_tokens always equals cached_input_tokens (D9)."""
        cached: TokenUsage = {"input_tokens": 9, "total_tokens": 9, "cached_input_tokens": 6}
        uncached: TokenUsage = {"input_tokens": 9, "total_tokens": 9}
        failing = ScriptedStrategy([ValueError("v")], failure_usage=ATTEMPT_USAGE)
        _, _, stats = await _run([EchoStrategy(cached), EchoStrategy(uncached), failing])
        assert stats["cached_input_tokens"] == 26
        assert stats["total_cached_tokens"] == stats["cached_input_tokens"]

    async def test_total_cached_tokens_zero_without_cache(self) -> None:
        """Without cached tokens both counters stay 0."""
        _, _, stats = await _run([EchoStrategy()])
        assert stats["cached_input_tokens"] == stats["total_cached_tokens"] == 0

    async def test_partial_usage_dicts_count_missing_keys_as_zero(self) -> None:
        """A strategy returning only some usage keys is counted without error."""
        only_output = EchoStrategy({"output_tokens": 8})
        only_input = EchoStrategy({"input_tokens": 2})
        _, batch, stats = await _run([only_output, only_input])
        assert batch.succeeded == 2
        assert stats["total_output_tokens"] == 8
        assert stats["total_input_tokens"] == 2
        assert stats["total_tokens"] == 0


class TestRateLimitCount:
    async def test_every_rate_limited_attempt_counts(self) -> None:
        """rate_limit_count counts each 429'd attempt, not each cooldown or item."""
        first = ScriptedStrategy([RateLimitError() for _ in range(3)])
        second = ScriptedStrategy([RateLimitError()])
        third = ScriptedStrategy([TransientError("flaky")])
        _, batch, stats = await _run([first, second, third])
        assert batch.succeeded == 3
        assert stats["rate_limit_count"] == 4
