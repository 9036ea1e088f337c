"""The `Budget` as an admission: reserve an attempt's estimate first, settle it with the
real usage (see `async_batch_llm.budget`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.admission import Admission, estimate_tokens
from async_batch_llm._internal.outcome import SUCCEEDED, Outcome, Permit
from async_batch_llm.strategies.errors import FrameworkTimeoutError
from async_batch_llm.token_extractor import TokenExtractor

if TYPE_CHECKING:
    from async_batch_llm.budget import Budget, Reservation

__all__ = ["BudgetAdmission", "prompt_estimate"]

_extractor = TokenExtractor()


class _BudgetPermit:
    __slots__ = ("budget", "inner", "reservation")

    def __init__(self, inner: Permit, budget: Budget, reservation: Reservation) -> None:
        self.inner = inner
        self.budget = budget
        self.reservation = reservation

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        self.inner.settle(outcome, detail)
        usage: Any = None
        charge_estimate = False
        if outcome is SUCCEEDED:
            usage = detail if isinstance(detail, dict) else None
        elif isinstance(detail, BaseException):
            # A failed call may have been charged (a response that did not validate).
            usage = _extractor.extract_from_exception(detail)
            # A call cut off by its deadline reached the provider, which bills it, but
            # reports nothing: count what it was expected to use.
            charge_estimate = isinstance(detail, FrameworkTimeoutError) and not any(usage.values())
        self.budget.settle(self.reservation, usage, charge_estimate=charge_estimate)

    def describe(self) -> dict[str, object] | None:
        return self.inner.describe()


def prompt_estimate(strategy: Any, prompt: str) -> int:
    """The prompt tokens a budget books for a call of `strategy` (it adds the output).

    The prompt alone: a strategy's ``estimate_tokens()`` may add the output it reserves
    against a tokens-per-minute limit, and the budget adds its own output estimate.
    """
    hook = (
        "estimate_input_tokens" if hasattr(strategy, "estimate_input_tokens") else "estimate_tokens"
    )
    return estimate_tokens(strategy, prompt, hook)


class BudgetAdmission:
    """Admits through `inner` only attempts whose estimate fits in `budget`.

    The budget is asked first: an item it refuses fails without taking a rate-limit slot.
    """

    def __init__(self, inner: Admission, budget: Budget) -> None:
        self.inner = inner
        self.budget = budget

    def try_admit(
        self, strategy: Any, worker_id: int, after: Any, limited: BaseException | None
    ) -> Permit | None:
        # The estimate needs the prompt, which only `admit` is given.
        return None

    async def admit(
        self,
        strategy: Any,
        prompt: str,
        worker_id: int,
        after: Any,
        limited: BaseException | None,
    ) -> Permit:
        inner_after = after.inner if type(after) is _BudgetPermit else after
        reservation = await self.budget.reserve(prompt_estimate(strategy, prompt))
        try:
            inner = self.inner
            permit = inner.try_admit(strategy, worker_id, inner_after, limited)
            if permit is None:
                permit = await inner.admit(strategy, prompt, worker_id, inner_after, limited)
        except BaseException:
            self.budget.settle(reservation, None)
            raise
        return _BudgetPermit(permit, self.budget, reservation)
