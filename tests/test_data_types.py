"""Behaviour of the data types in async_batch_llm.base."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from async_batch_llm.base import (
    BatchResult,
    LLMResponse,
    LLMWorkItem,
    ProcessingStats,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.llm_strategies import LLMCallStrategy


class _EchoStrategy(LLMCallStrategy[str]):
    async def execute(
        self,
        prompt: str,
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[str, TokenUsage]:
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


def _result(
    item_id: str = "a", *, success: bool = True, usage: TokenUsage | None = None
) -> WorkItemResult[str, None]:
    if usage is None:
        return WorkItemResult(item_id=item_id, success=success)
    return WorkItemResult(item_id=item_id, success=success, token_usage=usage)


# --- TokenUsage ------------------------------------------------------------------------------


def test_token_usage_keys_are_all_optional() -> None:
    """TokenUsage is a total=False TypedDict with the four documented keys."""
    assert TokenUsage.__total__ is False
    assert TokenUsage.__optional_keys__ == {
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_input_tokens",
    }
    partial: TokenUsage = {"input_tokens": 3}
    assert partial.get("output_tokens", 0) == 0


# --- RetryState ------------------------------------------------------------------------------


class TestRetryState:
    def test_starts_empty_with_a_fresh_dict(self) -> None:
        """Each RetryState gets its own empty data dict."""
        first, second = RetryState(), RetryState()
        first.set("k", 1)
        assert first.data == {"k": 1}
        assert second.data == {}

    def test_get_returns_value_or_default(self) -> None:
        """get() returns the stored value, else the default (None unless given)."""
        state = RetryState()
        state.set("model", "flash")
        assert state.get("model") == "flash"
        assert state.get("missing") is None
        assert state.get("missing", 7) == 7

    def test_set_overwrites(self) -> None:
        """set() replaces an existing value."""
        state = RetryState({"n": 1})
        state.set("n", 2)
        assert state.get("n") == 2

    def test_delete_removes_key(self) -> None:
        """delete() removes a present key."""
        state = RetryState({"a": 1, "b": 2})
        state.delete("a")
        assert state.data == {"b": 2}

    def test_delete_missing_key_is_ignored_by_default(self) -> None:
        """delete() of a missing key does nothing unless raise_if_missing is set."""
        state = RetryState({"a": 1})
        state.delete("nope")
        state.delete("nope", raise_if_missing=False)
        assert state.data == {"a": 1}

    def test_delete_missing_key_raises_when_asked(self) -> None:
        """delete(raise_if_missing=True) raises KeyError for a missing key."""
        state = RetryState({"a": 1})
        with pytest.raises(KeyError, match="nope"):
            state.delete("nope", raise_if_missing=True)
        assert state.data == {"a": 1}

    def test_delete_present_key_with_raise_if_missing(self) -> None:
        """delete(raise_if_missing=True) removes a present key without raising."""
        state = RetryState({"a": 1})
        state.delete("a", raise_if_missing=True)
        assert "a" not in state

    def test_clear_empties_data(self) -> None:
        """clear() removes every key."""
        state = RetryState({"a": 1, "b": 2})
        state.clear()
        assert state.data == {}

    def test_contains_checks_keys(self) -> None:
        """`in` tests membership among the stored keys (values do not count)."""
        state = RetryState({"a": None})
        assert "a" in state
        assert "b" not in state
        assert None not in state

    def test_repr_shows_data(self) -> None:
        """repr() is RetryState(<repr of data>)."""
        assert repr(RetryState()) == "RetryState({})"
        assert repr(RetryState({"a": 1, "b": "x"})) == "RetryState({'a': 1, 'b': 'x'})"


# --- LLMResponse -----------------------------------------------------------------------------


class TestLLMResponse:
    def test_field_order_and_defaults(self) -> None:
        """Fields are text, the three counts, then cached count, metadata and raw with defaults."""
        assert [f.name for f in fields(LLMResponse)] == [
            "text",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "cached_input_tokens",
            "metadata",
            "raw",
        ]
        resp = LLMResponse("hi", 1, 2, 3)
        assert resp.cached_input_tokens == 0
        assert resp.metadata is None
        assert resp.raw is None

    def test_token_usage_without_cached_tokens(self) -> None:
        """token_usage has no cached key when cached_input_tokens is zero."""
        resp = LLMResponse(text="x", input_tokens=10, output_tokens=5, total_tokens=15)
        assert resp.token_usage == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}

    def test_token_usage_with_cached_tokens(self) -> None:
        """token_usage includes cached_input_tokens when it is non-zero."""
        resp = LLMResponse("x", 10, 5, 15, cached_input_tokens=4)
        assert resp.token_usage == {
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "cached_input_tokens": 4,
        }

    def test_token_usage_is_a_new_dict_each_time(self) -> None:
        """Mutating a returned token_usage does not affect the response or later reads."""
        resp = LLMResponse("x", 10, 5, 15)
        usage = resp.token_usage
        usage["input_tokens"] = 999
        assert resp.token_usage["input_tokens"] == 10
        assert resp.token_usage is not resp.token_usage


# --- LLMWorkItem -----------------------------------------------------------------------------


class TestLLMWorkItem:
    def test_fields_and_defaults(self) -> None:
        """prompt defaults to an empty string and context to None."""
        strategy = _EchoStrategy()
        item: LLMWorkItem[str, str, None] = LLMWorkItem(item_id="a", strategy=strategy)
        assert item.item_id == "a"
        assert item.strategy is strategy
        assert item.prompt == ""
        assert item.context is None

    def test_positional_construction(self) -> None:
        """Fields can be passed positionally: item_id, strategy, prompt, context."""
        strategy = _EchoStrategy()
        item: LLMWorkItem[str, str, dict[str, int]] = LLMWorkItem("a", strategy, "p", {"n": 1})
        assert (item.item_id, item.prompt, item.context) == ("a", "p", {"n": 1})

    @pytest.mark.parametrize("item_id", ["", None, 0, 5, ["a"], b"abc"])
    def test_falsy_or_non_string_item_id_raises_value_error(self, item_id: Any) -> None:
        """An item_id that is falsy or not a str raises ValueError mentioning item_id."""
        with pytest.raises(ValueError, match="item_id") as exc_info:
            LLMWorkItem(item_id=item_id, strategy=_EchoStrategy())
        assert repr(item_id) in str(exc_info.value)

    @pytest.mark.parametrize("item_id", [" ", "\t\n", "   "])
    def test_blank_item_id_raises_value_error(self, item_id: str) -> None:
        """A whitespace-only item_id raises ValueError mentioning item_id."""
        with pytest.raises(ValueError, match="item_id") as exc_info:
            LLMWorkItem(item_id=item_id, strategy=_EchoStrategy())
        assert repr(item_id) in str(exc_info.value)

    def test_missing_strategy_raises_value_error(self) -> None:
        """strategy=None raises ValueError mentioning strategy and the item."""
        with pytest.raises(ValueError, match="strategy") as exc_info:
            LLMWorkItem(item_id="a", strategy=None)  # type: ignore[arg-type]
        assert "'a'" in str(exc_info.value)

    @pytest.mark.parametrize("prompt", [None, 5, b"bytes", ["a"]])
    def test_non_string_prompt_raises_type_error(self, prompt: Any) -> None:
        """A prompt that is not a str raises TypeError mentioning prompt and the type."""
        with pytest.raises(TypeError, match="prompt") as exc_info:
            LLMWorkItem(item_id="a", strategy=_EchoStrategy(), prompt=prompt)
        assert type(prompt).__name__ in str(exc_info.value)

    def test_empty_prompt_is_allowed(self) -> None:
        """An explicitly empty prompt is valid."""
        item: LLMWorkItem[str, str, None] = LLMWorkItem("a", _EchoStrategy(), prompt="")
        assert item.prompt == ""

    def test_item_id_is_checked_before_strategy(self) -> None:
        """With both item_id and strategy bad, the item_id error is raised."""
        with pytest.raises(ValueError, match="item_id"):
            LLMWorkItem(item_id="", strategy=None)  # type: ignore[arg-type]

    def test_strategy_is_checked_before_prompt(self) -> None:
        """With both strategy and prompt bad, the strategy ValueError is raised (not TypeError)."""
        with pytest.raises(ValueError, match="strategy"):
            LLMWorkItem(item_id="a", strategy=None, prompt=5)  # type: ignore[arg-type]

    def test_strategy_is_duck_typed(self) -> None:
        """Any non-None strategy object is accepted; no isinstance check is made."""
        marker = object()
        item: LLMWorkItem[str, Any, None] = LLMWorkItem("a", marker)  # type: ignore[arg-type]
        assert item.strategy is marker

    def test_is_mutable(self) -> None:
        """Fields can be edited in place (middleware rewrites prompts)."""
        item: LLMWorkItem[str, str, None] = LLMWorkItem("a", _EchoStrategy(), prompt="p")
        item.prompt = "rewritten"
        item.context = None
        assert item.prompt == "rewritten"


# --- WorkItemResult --------------------------------------------------------------------------


class TestWorkItemResult:
    def test_defaults(self) -> None:
        """Optional fields default to None and token_usage to three zero counts."""
        result: WorkItemResult[str, None] = WorkItemResult(item_id="a", success=True)
        assert result.output is None
        assert result.error is None
        assert result.context is None
        assert result.gemini_safety_ratings is None
        assert result.token_usage == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}

    def test_default_token_usage_is_fresh_per_instance(self) -> None:
        """Each result gets its own default token_usage dict."""
        first, second = _result("a"), _result("b")
        assert first.token_usage is not second.token_usage
        first.token_usage["input_tokens"] = 5
        assert second.token_usage["input_tokens"] == 0

    def test_field_order(self) -> None:
        """Fields are declared in the documented order."""
        assert [f.name for f in fields(WorkItemResult)] == [
            "item_id",
            "success",
            "output",
            "error",
            "context",
            "token_usage",
            "gemini_safety_ratings",
            "replayed",
            "attempts",
            "error_category",
            "via",
        ]


# --- BatchResult -----------------------------------------------------------------------------


class TestBatchResult:
    def test_summary_is_computed_from_results(self) -> None:
        """Counts and token totals are derived from the results list."""
        results = [
            _result("a", usage={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}),
            _result(
                "b",
                usage={
                    "input_tokens": 50,
                    "output_tokens": 5,
                    "total_tokens": 55,
                    "cached_input_tokens": 40,
                },
            ),
            _result("c", success=False),
        ]
        batch = BatchResult(results=results)
        assert (batch.total_items, batch.succeeded, batch.failed) == (3, 2, 1)
        assert batch.total_input_tokens == 150
        assert batch.total_output_tokens == 15
        assert batch.total_cached_tokens == 40

    def test_passed_summary_values_are_overwritten(self) -> None:
        """Summary values given to the constructor are replaced by the recomputed ones."""
        batch: BatchResult[str, None] = BatchResult(
            results=[_result("a", usage={"input_tokens": 7})],
            total_items=99,
            succeeded=99,
            failed=99,
            total_input_tokens=99,
            total_output_tokens=99,
            total_cached_tokens=99,
        )
        assert (batch.total_items, batch.succeeded, batch.failed) == (1, 1, 0)
        assert (batch.total_input_tokens, batch.total_output_tokens) == (7, 0)
        assert batch.total_cached_tokens == 0

    def test_failed_results_tokens_are_counted(self) -> None:
        """Tokens spent on failed items are included in the totals."""
        failed = _result(
            "f",
            success=False,
            usage={"input_tokens": 30, "output_tokens": 3, "cached_input_tokens": 10},
        )
        batch = BatchResult(results=[failed])
        assert batch.failed == 1
        assert batch.total_input_tokens == 30
        assert batch.total_output_tokens == 3
        assert batch.total_cached_tokens == 10

    def test_missing_token_keys_count_as_zero(self) -> None:
        """Results whose token_usage lacks keys (even an empty dict) contribute zero."""
        batch = BatchResult(
            results=[_result("a", usage={}), _result("b", usage={"output_tokens": 4})]
        )
        assert (batch.total_input_tokens, batch.total_output_tokens) == (0, 4)
        assert batch.total_cached_tokens == 0

    def test_empty_batch(self) -> None:
        """An empty batch has zero counts, a 0.0 cache hit rate and zero effective tokens."""
        batch: BatchResult[str, None] = BatchResult(results=[])
        assert (batch.total_items, batch.succeeded, batch.failed) == (0, 0, 0)
        assert batch.cache_hit_rate() == 0.0
        assert batch.effective_input_tokens() == 0

    def test_cache_hit_rate_is_a_percentage(self) -> None:
        """cache_hit_rate() is cached / input tokens * 100."""
        batch = BatchResult(
            results=[_result("a", usage={"input_tokens": 200, "cached_input_tokens": 50})]
        )
        assert batch.cache_hit_rate() == pytest.approx(25.0)

    def test_cache_hit_rate_zero_without_input_tokens(self) -> None:
        """cache_hit_rate() is 0.0 when there are no input tokens, even with cached ones."""
        batch = BatchResult(results=[_result("a", usage={"cached_input_tokens": 5})])
        assert batch.cache_hit_rate() == 0.0

    def test_effective_input_tokens_discounts_cached_by_90_percent(self) -> None:
        """effective_input_tokens() is input - int(cached * 0.9)."""
        batch = BatchResult(
            results=[_result("a", usage={"input_tokens": 1000, "cached_input_tokens": 15})]
        )
        # int(15 * 0.9) == int(13.5) == 13
        assert batch.effective_input_tokens() == 987

    def test_recomputes_on_construction_only(self) -> None:
        """Summary values reflect the results at construction time (they are fields)."""
        results = [_result("a")]
        batch = BatchResult(results=results)
        results.append(_result("b", success=False))
        assert batch.total_items == 1
        assert BatchResult(results=results).failed == 1


# --- ProcessingStats -------------------------------------------------------------------------


STATS_KEYS = {
    "total",
    "processed",
    "succeeded",
    "failed",
    "start_time",
    "error_counts",
    "rate_limit_count",
    "total_input_tokens",
    "total_output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "total_cached_tokens",
}


class TestProcessingStats:
    def test_defaults(self) -> None:
        """Counters start at zero, start_time at None and error_counts empty."""
        stats = ProcessingStats()
        snapshot = stats.copy()
        assert snapshot.pop("start_time") is None
        assert snapshot.pop("error_counts") == {}
        assert set(snapshot.values()) == {0}

    def test_error_counts_fresh_per_instance(self) -> None:
        """Each ProcessingStats gets its own error_counts dict."""
        first, second = ProcessingStats(), ProcessingStats()
        first.error_counts["X"] = 1
        assert second.error_counts == {}

    def test_copy_has_exactly_the_twelve_keys(self) -> None:
        """copy() returns a plain dict with exactly the 12 field names as keys."""
        snapshot = ProcessingStats().copy()
        assert type(snapshot) is dict
        assert len(snapshot) == 12
        assert set(snapshot) == STATS_KEYS
        assert set(snapshot) == {f.name for f in fields(ProcessingStats)}

    def test_copy_reflects_values(self) -> None:
        """copy() holds the current value of every field."""
        stats = ProcessingStats(
            total=10,
            processed=9,
            succeeded=7,
            failed=2,
            start_time=12.5,
            error_counts={"ValueError": 2},
            rate_limit_count=3,
            total_input_tokens=100,
            total_output_tokens=50,
            total_tokens=150,
            cached_input_tokens=20,
            total_cached_tokens=20,
        )
        assert stats.copy() == {
            "total": 10,
            "processed": 9,
            "succeeded": 7,
            "failed": 2,
            "start_time": 12.5,
            "error_counts": {"ValueError": 2},
            "rate_limit_count": 3,
            "total_input_tokens": 100,
            "total_output_tokens": 50,
            "total_tokens": 150,
            "cached_input_tokens": 20,
            "total_cached_tokens": 20,
        }

    def test_copy_is_independent_of_later_changes(self) -> None:
        """copy() copies error_counts, so later updates do not leak into the snapshot."""
        stats = ProcessingStats(error_counts={"A": 1})
        snapshot = stats.copy()
        assert snapshot["error_counts"] is not stats.error_counts
        stats.error_counts["A"] += 1
        stats.error_counts["B"] = 1
        stats.processed += 1
        assert snapshot["error_counts"] == {"A": 1}
        assert snapshot["processed"] == 0

    def test_mutating_the_copy_leaves_stats_unchanged(self) -> None:
        """Editing the snapshot's error_counts does not touch the live counters."""
        stats = ProcessingStats(error_counts={"A": 1})
        snapshot = stats.copy()
        snapshot["error_counts"]["A"] = 100
        assert stats.error_counts == {"A": 1}
