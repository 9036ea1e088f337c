"""A spending limit for a batch: at most so many dollars, or so many tokens.

```python
from decimal import Decimal
from async_batch_llm import ParallelBatchProcessor
from async_batch_llm.budget import Budget

budget = Budget(max_total_cost=Decimal("5.00"), model="openai:gpt-4o-mini")
async with ParallelBatchProcessor(config=config, budget=budget) as processor:
    ...
```

The budget fails closed. Before each attempt it reserves that attempt's estimated tokens
and cost (the prompt's estimated input tokens, from the strategy's ``estimate_tokens()``
when it has one, plus the mean output of the calls so far); the attempt starts only if the
reservation fits in what is left. When the call ends, the reservation is replaced by what
the call really used, failed attempts included: the provider charged for them too.

When an attempt does not fit while other calls are still running, it waits for them: their
real usage may leave room. When it does not fit and nothing is running, the budget is
exhausted: that item and every later one end at once with a failed result whose error is
`BudgetExhaustedError` (``error_category == "budget_exhausted"``). Such results are not
the items' fault: a checkpointed run stores them as unfinished, so the next run with more
budget makes those calls, and never replays them as failures.

The spend can go past the limit by what the calls already running use beyond their
estimates; reservations keep that to the few calls in flight at the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from async_batch_llm._internal.values import BATCH_USAGE_KEY

__all__ = ["Budget", "BudgetExhaustedError", "CostFunction"]

logger = logging.getLogger(__name__)

CostFunction = Callable[[Mapping[str, int]], "Decimal | None"]
"""Prices one call's token usage in USD; ``None`` when it cannot be priced."""

#: Output tokens assumed for a call before any call of the batch has reported its usage.
DEFAULT_OUTPUT_TOKENS_ESTIMATE: Final = 256


class BudgetExhaustedError(Exception):
    """The budget has no room left for another call; the item was not attempted (again)."""

    error_category = "budget_exhausted"
    """The failed result's ``error_category``."""


class Reservation:
    """What one admitted attempt holds of the budget until it is settled."""

    __slots__ = ("cost", "settled", "tokens")

    def __init__(self, tokens: int, cost: Decimal) -> None:
        self.tokens = tokens
        self.cost = cost
        self.settled = False


class Budget:
    """At most `max_total_cost` USD and/or `max_total_tokens` tokens for the calls it admits.

    One budget may be shared by several processors (of one event loop); its counts cover
    every call admitted through it.

    Args:
        max_total_cost: The most the calls may cost, in USD (a `Decimal`, an int or a
            decimal string; a float is read through its shortest repr).
        max_total_tokens: The most tokens (input plus output) the calls may use.
        cost: Prices one call's usage; ``None`` from it means the call cannot be priced,
            and then no call is admitted (the budget fails closed). Required with
            `max_total_cost` unless `model` is given. The usage of a request made through a
            provider batch job carries ``"batch_requests": 1``, for a function that prices
            those at batch rates.
        model: A model name as pydantic-ai spells it (``"openai:gpt-4o-mini"``) to price
            usage with genai-prices (`async_batch_llm.pricing`), instead of `cost`. Requests
            made through a provider batch job are priced at the model's batch prices.
        output_tokens_estimate: Output tokens to assume per call until calls have reported
            their usage (then their mean is used).

    Raises:
        ValueError: No limit, a negative limit, or a cost limit with nothing to price by.
        TypeError: A limit of the wrong type.
    """

    def __init__(
        self,
        *,
        max_total_cost: Decimal | int | str | float | None = None,
        max_total_tokens: int | None = None,
        cost: CostFunction | None = None,
        model: str | None = None,
        output_tokens_estimate: int = DEFAULT_OUTPUT_TOKENS_ESTIMATE,
    ) -> None:
        if max_total_cost is None and max_total_tokens is None:
            msg = "A Budget needs max_total_cost, max_total_tokens, or both"
            raise ValueError(msg)
        self.max_total_cost = None if max_total_cost is None else _decimal(max_total_cost)
        given_tokens: object = max_total_tokens
        if given_tokens is not None and (
            not isinstance(given_tokens, int) or isinstance(given_tokens, bool)
        ):
            msg = f"max_total_tokens must be an int, got {type(given_tokens).__name__}"
            raise TypeError(msg)
        if max_total_tokens is not None and max_total_tokens < 0:
            msg = f"max_total_tokens must be >= 0, got {max_total_tokens}"
            raise ValueError(msg)
        self.max_total_tokens = max_total_tokens
        if cost is not None and model is not None:
            msg = "Give a Budget either cost= or model=, not both"
            raise ValueError(msg)
        if model is not None:
            from async_batch_llm.pricing import Pricer

            pricer = Pricer(model)
            if not pricer.known:
                msg = (
                    f"genai-prices has no price for model {model!r}, so a cost budget cannot "
                    "be kept: pass cost=<function> or a max_total_tokens budget instead"
                )
                raise ValueError(msg)
            cost = pricer.price
            batch_cost: CostFunction | None = Pricer(model, batch=True).price
        else:
            batch_cost = cost
        if self.max_total_cost is not None and cost is None:
            msg = (
                "A Budget with max_total_cost needs a way to price calls: pass "
                "model='provider:model' (priced with genai-prices) or cost=<function>"
            )
            raise ValueError(msg)
        given_estimate: object = output_tokens_estimate
        if not isinstance(given_estimate, int) or output_tokens_estimate < 0:
            msg = f"output_tokens_estimate must be an int >= 0, got {output_tokens_estimate!r}"
            raise ValueError(msg)
        self.cost = cost
        self.batch_cost = batch_cost
        self.output_tokens_estimate = output_tokens_estimate
        #: What the settled calls used.
        self.spent_tokens = 0
        self.spent_cost = Decimal(0)
        #: Settled calls whose usage could not be priced (counted at no cost).
        self.unpriced_calls = 0
        self._reserved_tokens = 0
        self._reserved_cost = Decimal(0)
        self._in_flight = 0
        self._calls = 0
        self._output_seen = 0
        self._exhausted = False
        self._changed: asyncio.Event | None = None

    @property
    def exhausted(self) -> bool:
        """Whether the budget refused a call with nothing running; it admits no more."""
        return self._exhausted

    @property
    def remaining_cost(self) -> Decimal | None:
        """USD left after the settled calls (``None`` without a cost limit)."""
        if self.max_total_cost is None:
            return None
        return self.max_total_cost - self.spent_cost

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left after the settled calls (``None`` without a token limit)."""
        if self.max_total_tokens is None:
            return None
        return self.max_total_tokens - self.spent_tokens

    def estimate(self, input_tokens: int, *, batch: bool = False) -> tuple[int, Decimal | None]:
        """Tokens and cost reserved for a call whose prompt is about `input_tokens` long
        (`batch`: a request of a provider batch job)."""
        if self._calls:
            output = -(-self._output_seen // self._calls)  # the mean, rounded up
        else:
            output = self.output_tokens_estimate
        tokens = input_tokens + output
        if self.max_total_cost is None or self.cost is None:
            return tokens, Decimal(0)
        usage = {"input_tokens": input_tokens, "output_tokens": output, "total_tokens": tokens}
        if batch:
            usage[BATCH_USAGE_KEY] = 1
        return tokens, self._price(usage)

    def try_reserve(self, input_tokens: int, *, batch: bool = False) -> Reservation | None:
        """Reserve room for one call now, or ``None`` when it must wait for running calls
        (`batch`: a request of a provider batch job, priced at batch rates).

        Raises:
            BudgetExhaustedError: It does not fit and nothing is running.
        """
        if self._exhausted:
            raise self._error()
        tokens, cost = self.estimate(input_tokens, batch=batch)
        if cost is None:
            self._exhaust("a call's estimated usage cannot be priced")
            raise self._error()
        if self._fits(tokens, cost):
            self._reserved_tokens += tokens
            self._reserved_cost += cost
            self._in_flight += 1
            return Reservation(tokens, cost)
        if self._in_flight:
            return None
        self._exhaust("the next call's estimate does not fit in what is left")
        raise self._error()

    async def reserve(self, input_tokens: int) -> Reservation:
        """Reserve room for one call, waiting for running calls to settle if need be.

        Raises:
            BudgetExhaustedError: The budget cannot fit the call.
        """
        while True:
            reservation = self.try_reserve(input_tokens)
            if reservation is not None:
                return reservation
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def settle(
        self,
        reservation: Reservation,
        usage: Mapping[str, Any] | None,
        *,
        charge_estimate: bool = False,
    ) -> None:
        """Replace `reservation` with what the call used (``None``: it made no call).

        With `charge_estimate` (a call that reached the provider but reported no usage,
        such as one cut off by its deadline) the reservation itself is spent.
        """
        if reservation.settled:
            return
        reservation.settled = True
        self._reserved_tokens -= reservation.tokens
        self._reserved_cost -= reservation.cost
        self._in_flight -= 1
        if charge_estimate:
            self.spent_tokens += reservation.tokens
            self.spent_cost += reservation.cost
        elif usage:
            used = _count(usage, "total_tokens")
            if not used:
                used = _count(usage, "input_tokens") + _count(usage, "output_tokens")
            self.spent_tokens += used
            if used:
                # Only calls that reported usage shape the estimate: a 429 carries none.
                self._calls += 1
                self._output_seen += _count(usage, "output_tokens")
            if self.cost is not None:
                cost = self._price(usage)
                if cost is None:
                    # Fail closed: spending that cannot be priced cannot be kept in bounds.
                    self.unpriced_calls += 1
                    if self.max_total_cost is not None:
                        self._exhaust("a call's usage could not be priced")
                else:
                    self.spent_cost += cost
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def charge(self, usage: Mapping[str, Any]) -> None:
        """Count spending nothing was reserved for: the results of a batch job an earlier
        run submitted, which this run collects."""
        reservation = Reservation(0, Decimal(0))
        self._in_flight += 1
        self.settle(reservation, usage)

    def _fits(self, tokens: int, cost: Decimal) -> bool:
        if (
            self.max_total_tokens is not None
            and self.spent_tokens + self._reserved_tokens + tokens > self.max_total_tokens
        ):
            return False
        return not (
            self.max_total_cost is not None
            and self.spent_cost + self._reserved_cost + cost > self.max_total_cost
        )

    def _price(self, usage: Mapping[str, Any]) -> Decimal | None:
        price = self.batch_cost if usage.get(BATCH_USAGE_KEY) else self.cost
        assert price is not None
        try:
            value: object = price(usage)
        except Exception:
            logger.warning("The budget's cost function raised; the call is unpriced", exc_info=True)
            return None
        if value is None or isinstance(value, Decimal):
            return value
        try:
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)  # type: ignore[arg-type]
        except (InvalidOperation, TypeError, ValueError):
            logger.warning("The budget's cost function returned %r; the call is unpriced", value)
            return None

    def _exhaust(self, why: str) -> None:
        if not self._exhausted:
            self._exhausted = True
            logger.warning(
                "Budget exhausted (%s): %s spent; the remaining items end without a call",
                why,
                self._describe_spent(),
            )
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _describe_spent(self) -> str:
        parts = []
        if self.max_total_cost is not None:
            parts.append(f"${self.spent_cost} of ${self.max_total_cost}")
        if self.max_total_tokens is not None:
            parts.append(f"{self.spent_tokens:,} of {self.max_total_tokens:,} tokens")
        return ", ".join(parts)

    def _error(self) -> BudgetExhaustedError:
        return BudgetExhaustedError(f"budget exhausted: {self._describe_spent()} spent")

    def __repr__(self) -> str:
        return f"Budget({self._describe_spent()}, in flight: {self._in_flight})"


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    return value if type(value) is int and value > 0 else 0


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str | float):
        # (bool is an int)
        msg = f"max_total_cost must be a Decimal, int or str, got {type(value).__name__}"
        raise TypeError(msg)
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        msg = f"max_total_cost must be a number of dollars, got {value!r}"
        raise ValueError(msg) from None
    if not number.is_finite() or number < 0:
        msg = f"max_total_cost must be a finite amount >= 0, got {value!r}"
        raise ValueError(msg)
    return number
