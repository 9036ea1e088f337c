"""Policies for how long to pause after a rate limit, and how to ramp back up afterwards."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Self

import tenacity

if TYPE_CHECKING:
    from async_batch_llm.core.config import RateLimitConfig

__all__ = ["RateLimitStrategy", "ExponentialBackoffStrategy", "FixedDelayStrategy"]

logger = logging.getLogger(__name__)


class RateLimitStrategy(ABC):
    """Decides the shared cooldown after a rate limit and the pacing of the items after it.

    The processor calls `on_rate_limit` once per cooldown (by the worker that
    coordinates it) and `should_apply_slow_start` for each item dequeued after a
    cooldown until it answers ``False``.
    """

    @abstractmethod
    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return the cooldown in seconds for the ``consecutive_limit_count``-th rate limit.

        The count starts at 1 and grows with each rate limit that is not separated from the
        previous one by a successful attempt.
        """

    @abstractmethod
    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Return ``(should_delay, delay_seconds)`` for the next item after a cooldown.

        ``items_since_resume`` counts the items already delayed since the cooldown ended;
        answering ``False`` ends the slow-start phase.
        """


class ExponentialBackoffStrategy(RateLimitStrategy):
    """Cooldowns that grow exponentially with consecutive rate limits, then a linear ramp.

    The ``n``-th consecutive rate limit pauses for
    ``min(initial_cooldown * backoff_multiplier ** (n - 1), max_cooldown)`` seconds
    (60, 120, 240, 480, 600, ... with the defaults). After each cooldown the first
    ``slow_start_items`` items are delayed, from ``slow_start_initial_delay`` down to
    ``slow_start_final_delay`` in a straight line.

    Args:
        initial_cooldown: Seconds of the first cooldown; ``>= 0``.
        max_cooldown: Upper bound of any cooldown; ``>= 0``. May be below
            ``initial_cooldown``, which then caps every cooldown.
        backoff_multiplier: Growth factor per consecutive rate limit; ``>= 1.0``.
        slow_start_items: Items delayed after a cooldown; ``0`` disables slow start.
        slow_start_initial_delay: Delay of the first item after a cooldown; ``>= 0``.
        slow_start_final_delay: Delay the ramp ends at; ``>= 0`` and not above
            ``slow_start_initial_delay``.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        initial_cooldown: float = 60.0,
        max_cooldown: float = 600.0,
        backoff_multiplier: float = 2.0,
        slow_start_items: int = 50,
        slow_start_initial_delay: float = 2.0,
        slow_start_final_delay: float = 0.1,
    ) -> None:
        _check_non_negative("initial_cooldown", initial_cooldown)
        _check_non_negative("max_cooldown", max_cooldown)
        # ``not >=`` also rejects NaN.
        if not backoff_multiplier >= 1.0:
            msg = (
                f"backoff_multiplier must be >= 1.0, got {backoff_multiplier!r}; "
                "use 1.0 for a constant cooldown"
            )
            raise ValueError(msg)
        if slow_start_items < 0:
            msg = (
                f"slow_start_items must be >= 0, got {slow_start_items!r}; "
                "use 0 to disable slow start"
            )
            raise ValueError(msg)
        _check_non_negative("slow_start_initial_delay", slow_start_initial_delay)
        _check_non_negative("slow_start_final_delay", slow_start_final_delay)
        if slow_start_initial_delay < slow_start_final_delay:
            msg = (
                "slow_start_initial_delay must be >= slow_start_final_delay, got "
                f"{slow_start_initial_delay!r} < {slow_start_final_delay!r}; "
                "the ramp runs from the initial delay down to the final one"
            )
            raise ValueError(msg)
        self.initial_cooldown = initial_cooldown
        self.max_cooldown = max_cooldown
        self.backoff_multiplier = backoff_multiplier
        self.slow_start_items = slow_start_items
        self.slow_start_initial_delay = slow_start_initial_delay
        self.slow_start_final_delay = slow_start_final_delay

    @classmethod
    def from_config(cls, config: RateLimitConfig, *, max_cooldown: float = 600.0) -> Self:
        """The strategy a `RateLimitConfig` describes (the processor's 0.7.2 default).

        The config validated its fields already; they are taken as they are.
        """
        strategy = cls.__new__(cls)
        strategy.initial_cooldown = config.cooldown_seconds
        strategy.max_cooldown = max_cooldown
        strategy.backoff_multiplier = config.backoff_multiplier
        strategy.slow_start_items = config.slow_start_items
        strategy.slow_start_initial_delay = config.slow_start_initial_delay
        strategy.slow_start_final_delay = config.slow_start_final_delay
        return strategy

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return the exponential cooldown for the ``consecutive_limit_count``-th rate limit."""
        # Built per call so that later changes to the public attributes take effect.
        wait = tenacity.wait_exponential(
            multiplier=self.initial_cooldown,
            max=self.max_cooldown,
            exp_base=self.backoff_multiplier,
        )
        cooldown = float(wait(_attempt_state(consecutive_limit_count)))
        logger.info(
            "Rate limit #%d reported by worker %d: cooling down for %.1fs",
            consecutive_limit_count,
            worker_id,
            cooldown,
        )
        return cooldown

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Return the ramped delay for the next item, or ``(False, 0.0)`` once the ramp is over."""
        if items_since_resume >= self.slow_start_items:
            return (False, 0.0)
        progress = items_since_resume / self.slow_start_items
        initial = self.slow_start_initial_delay
        final = self.slow_start_final_delay
        return (True, max(final, initial - (initial - final) * progress))


class FixedDelayStrategy(RateLimitStrategy):
    """The same cooldown after every rate limit, then a fixed delay before every item.

    The slow-start phase never ends: once a rate limit has occurred, every later item
    waits ``delay`` seconds.

    Args:
        cooldown: Seconds of every cooldown; ``>= 0``.
        delay_between_requests: Delay before each item after the first cooldown; ``>= 0``.
            Stored as `delay`.

    Raises:
        ValueError: If an argument is negative.
    """

    def __init__(self, cooldown: float = 300.0, delay_between_requests: float = 1.0) -> None:
        _check_non_negative("cooldown", cooldown)
        _check_non_negative("delay_between_requests", delay_between_requests)
        self.cooldown = cooldown
        self.delay = delay_between_requests

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return `cooldown`, whatever the count."""
        logger.info(
            "Rate limit #%d reported by worker %d: cooling down for %.1fs",
            consecutive_limit_count,
            worker_id,
            self.cooldown,
        )
        return self.cooldown

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Return ``(True, delay)`` for every item."""
        return (True, self.delay)


def _check_non_negative(name: str, value: float) -> None:
    # ``not >=`` also rejects NaN; infinity is allowed (for example "no cap").
    if not value >= 0:
        msg = f"{name} must be >= 0, got {value!r}; pass a number of seconds, 0 or more"
        raise ValueError(msg)


def _attempt_state(attempt_number: int) -> tenacity.RetryCallState:
    # tenacity's wait primitives read only ``attempt_number`` from the call state.
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt_number
    return state
