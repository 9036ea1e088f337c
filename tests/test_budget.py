"""Budgets: calls are admitted only while their estimate fits; the rest end exhausted."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batch_llm import (
    Budget,
    BudgetExhaustedError,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    RetryState,
    TokenUsage,
)
from async_batch_llm.checkpoint import EntryState, MemoryCheckpointStore
from support import USAGE, EchoStrategy, ScriptedStrategy, TransientError, fast_config, items_for


def per_call(amount: str) -> Any:
    """A cost function charging `amount` per call that used tokens."""

    def cost(usage: Mapping[str, int]) -> Decimal:
        return Decimal(amount) if usage.get("total_tokens") else Decimal(0)

    return cost


class ExactStrategy(LLMCallStrategy[str]):
    """Uses exactly what a budget estimates: `input` tokens in, `output` out."""

    def __init__(self, input_tokens: int, output_tokens: int, latency: float = 0.0) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.latency = latency
        self.calls = 0

    def estimate_tokens(self, prompt: str) -> int:
        return self.input_tokens

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        await asyncio.sleep(self.latency)
        total = self.input_tokens + self.output_tokens
        return prompt, {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": total,
        }


async def run(items: list[LLMWorkItem[str, Any, Any]], budget: Budget, **config: Any) -> list[Any]:
    async with ParallelBatchProcessor[str, Any, Any](
        config=fast_config(**config), budget=budget
    ) as processor:
        return [result async for result in processor.stream(items)]


class TestLimits:
    async def test_token_budget_stops_calls_and_ends_the_rest_exhausted(self) -> None:
        # Each call is estimated at 15 tokens (10 in, 5 out) and uses 15.
        strategy = ExactStrategy(input_tokens=10, output_tokens=5)
        budget = Budget(max_total_tokens=100, output_tokens_estimate=5)
        results = await run(items_for(strategy, 20), budget, max_workers=1)
        assert len(results) == 20
        assert len({r.item_id for r in results}) == 20
        ok = [r for r in results if r.success]
        exhausted = [r for r in results if not r.success]
        assert strategy.calls == len(ok) == 6
        assert budget.spent_tokens == 90
        for result in exhausted:
            assert result.error_category == "budget_exhausted"
            assert result.attempts == 0
            assert result.error.startswith("BudgetExhaustedError: budget exhausted")
        assert budget.exhausted

    async def test_cost_budget_with_a_cost_function(self) -> None:
        strategy = EchoStrategy()
        budget = Budget(max_total_cost="0.05", cost=per_call("0.01"))
        results = await run(items_for(strategy, 12), budget, max_workers=1)
        assert sum(r.success for r in results) == 5
        assert budget.spent_cost == Decimal("0.05")
        assert budget.remaining_cost == Decimal(0)

    async def test_unpriceable_estimate_fails_closed(self) -> None:
        strategy = EchoStrategy()
        budget = Budget(max_total_cost=10, cost=lambda usage: None)
        results = await run(items_for(strategy, 3), budget)
        assert strategy.calls == []
        assert [r.error_category for r in results] == ["budget_exhausted"] * 3

    async def test_failed_attempts_are_charged(self) -> None:
        strategy = ScriptedStrategy(
            [TransientError("boom")],
            failure_usage={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        )
        budget = Budget(max_total_tokens=1_000)
        results = await run(items_for(strategy, 1), budget)
        assert results[0].success
        assert results[0].attempts == 2
        assert budget.spent_tokens == 10 + USAGE["total_tokens"]

    async def test_estimates_follow_the_mean_output_of_finished_calls(self) -> None:
        strategy = EchoStrategy()  # 5 tokens out per call
        budget = Budget(max_total_tokens=1_000, output_tokens_estimate=500)
        assert budget.estimate(10) == (510, Decimal(0))
        await run(items_for(strategy, 3), budget, max_workers=1)
        assert budget.estimate(10) == (15, Decimal(0))

    async def test_overshoot_is_bounded_by_the_last_calls_underestimate(self) -> None:
        # Estimated at 6 tokens (1 in, 5 out), each call really uses 15: the budget admits
        # while the estimate fits, so it ends at most one call's error past the limit.
        strategy = EchoStrategy()
        budget = Budget(max_total_tokens=100, output_tokens_estimate=5)
        await run(items_for(strategy, 20), budget, max_workers=1)
        assert 100 < budget.spent_tokens <= 100 + 15

    async def test_waits_for_running_calls_before_declaring_exhaustion(self) -> None:
        # Four calls in flight, each reserving 60 of 200 tokens: the fourth waits; the
        # real usage (30 each) leaves room, so all six end up admitted.
        strategy = ExactStrategy(input_tokens=10, output_tokens=20, latency=0.01)
        budget = Budget(max_total_tokens=200, output_tokens_estimate=50)
        results = await run(items_for(strategy, 6), budget, max_workers=4)
        assert all(r.success for r in results)
        assert budget.spent_tokens == 180


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=400),
    workers=st.integers(min_value=1, max_value=8),
    count=st.integers(min_value=0, max_value=30),
    input_tokens=st.integers(min_value=1, max_value=40),
    output_tokens=st.integers(min_value=0, max_value=40),
)
def test_exact_estimates_never_overspend_and_every_item_ends_once(
    limit: int, workers: int, count: int, input_tokens: int, output_tokens: int
) -> None:
    """With estimates equal to the real usage, spend stays within the limit, the budget
    admits as many calls as fit, and every item ends in exactly one result."""
    strategy = ExactStrategy(input_tokens, output_tokens)
    budget = Budget(max_total_tokens=limit, output_tokens_estimate=output_tokens)
    results = asyncio.run(run(items_for(strategy, count), budget, max_workers=workers))
    assert sorted(r.item_id for r in results) == sorted(f"item-{i}" for i in range(count))
    per_call_tokens = input_tokens + output_tokens
    assert budget.spent_tokens <= limit
    assert strategy.calls == min(count, limit // per_call_tokens)
    assert sum(r.success for r in results) == strategy.calls
    assert all(r.error_category == "budget_exhausted" for r in results if not r.success)


class TestResume:
    async def test_exhausted_items_run_again_with_more_budget_and_are_never_replayed(
        self,
    ) -> None:
        store = MemoryCheckpointStore()
        strategy = EchoStrategy()
        items = items_for(strategy, 6)
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1),
            checkpoint=store,
            budget=Budget(max_total_cost="0.02", cost=per_call("0.01")),
        ) as processor:
            first = [r async for r in processor.stream(items)]
        assert sum(r.success for r in first) == 2
        states = {entry.item_id: entry.state for entry in store.entries.values()}
        assert sorted(states.values()).count(EntryState.INTERRUPTED) == 4
        async with ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1), checkpoint=store
        ) as processor:
            second = [r async for r in processor.stream(items)]
        assert all(r.success for r in second)
        assert sum(r.replayed for r in second) == 2
        assert len(strategy.calls) == 6
        replayed = [r for r in second if r.replayed]
        assert all(r.attempts == 1 for r in replayed)


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({}, "needs max_total_cost, max_total_tokens"),
            ({"max_total_cost": 1}, "needs a way to price"),
            ({"max_total_cost": -1, "cost": per_call("1")}, "finite amount >= 0"),
            ({"max_total_cost": "ten", "cost": per_call("1")}, "number of dollars"),
            ({"max_total_tokens": -5}, ">= 0"),
            ({"max_total_cost": 1, "cost": per_call("1"), "model": "openai:gpt-4o"}, "not both"),
        ],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Budget(**kwargs)

    @pytest.mark.parametrize(
        "kwargs", [{"max_total_tokens": 1.5}, {"max_total_tokens": True}, {"max_total_cost": []}]
    )
    def test_wrong_types_are_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(TypeError):
            Budget(**kwargs)

    def test_float_cost_is_read_as_its_decimal_repr(self) -> None:
        assert Budget(max_total_cost=0.1, cost=per_call("1")).max_total_cost == Decimal("0.1")

    def test_processor_refuses_a_non_budget(self) -> None:
        with pytest.raises(TypeError, match="budget must be a Budget"):
            ParallelBatchProcessor(budget={"max_total_cost": 1})  # type: ignore[arg-type]

    def test_exhausted_error_has_its_category(self) -> None:
        assert BudgetExhaustedError.error_category == "budget_exhausted"


class TestReviewFindings:
    async def test_unpriceable_real_usage_exhausts_a_cost_budget(self) -> None:
        calls = []

        def cost(usage: Mapping[str, int]) -> Decimal | None:
            # Estimates price; real usage (5 output tokens) does not.
            calls.append(dict(usage))
            return None if usage.get("output_tokens") == 5 else Decimal("0.001")

        strategy = EchoStrategy()
        budget = Budget(max_total_cost="1", cost=cost)
        results = await run(items_for(strategy, 10), budget, max_workers=1)
        assert len(strategy.calls) == 1
        assert budget.exhausted
        assert budget.unpriced_calls == 1
        assert sum(r.error_category == "budget_exhausted" for r in results) == 9

    async def test_a_call_cut_off_by_its_deadline_is_charged_its_estimate(self) -> None:
        class Hang(ExactStrategy):
            async def execute(self, prompt: str, attempt: int, timeout: float, state=None):  # type: ignore[no-untyped-def]
                self.calls += 1
                await asyncio.sleep(10)
                raise AssertionError("not reached")

        strategy = Hang(input_tokens=10, output_tokens=0)
        budget = Budget(max_total_tokens=100, output_tokens_estimate=20)
        config = {"max_workers": 1, "timeout_per_item": 0.01}
        results = await run(items_for(strategy, 10), budget, **config)
        assert budget.spent_tokens <= 100
        assert budget.spent_tokens == 30 * strategy.calls
        assert strategy.calls == 3  # 3 x 30 fit in 100; the 4th estimate does not
        assert all(not r.success for r in results)

    async def test_cancelled_before_process_releases_its_reservation(self) -> None:
        from async_batch_llm.middleware import BaseMiddleware

        entered = asyncio.Event()

        class Stuck(BaseMiddleware[Any, Any, Any]):
            async def before_process(self, work_item: Any) -> Any:
                entered.set()
                await asyncio.sleep(10)
                return work_item

        budget = Budget(max_total_tokens=1_000)
        strategy = EchoStrategy()
        processor = ParallelBatchProcessor[str, Any, Any](
            config=fast_config(max_workers=1), budget=budget, middlewares=[Stuck()]
        )

        async def consume() -> None:
            async with processor:
                async for _ in processor.stream(items_for(strategy, 3)):
                    pass

        task = asyncio.create_task(consume())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget._in_flight == 0
        assert budget.remaining_tokens == 1_000


async def test_the_budget_estimates_input_without_the_output_rate_control_reserves() -> None:
    class Reserving(ExactStrategy):
        def estimate_tokens(self, prompt: str) -> int:
            return self.input_tokens + 1_000  # max_tokens, reserved against a TPM limit

        def estimate_input_tokens(self, prompt: str) -> int:
            return self.input_tokens

    strategy = Reserving(input_tokens=10, output_tokens=20)
    budget = Budget(max_total_tokens=100, output_tokens_estimate=20)
    results = await run(items_for(strategy, 5), budget, max_workers=1)
    assert strategy.calls == 3
    assert sum(r.success for r in results) == 3


async def test_failed_calls_without_usage_do_not_shrink_the_output_estimate() -> None:
    strategy = ScriptedStrategy(
        [TransientError("a"), TransientError("b")],
        usage={"input_tokens": 10, "output_tokens": 500, "total_tokens": 510},
    )
    budget = Budget(max_total_tokens=10_000, output_tokens_estimate=100)
    await run(items_for(strategy, 1), budget, max_workers=1)
    assert budget.estimate(10) == (510, Decimal(0))
