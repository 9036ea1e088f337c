"""Admission of an attempt: wait for a permit, then settle it exactly once with the outcome.

Every limit on when a call may start implements the same small interface, in the manner of
aiometer's meters:

* `Admission.admit` waits until the next attempt of an item may go and returns a `Permit`;
  it is given the item's previous permit (``after``) and, when that attempt was rate
  limited, its error (``limited``), so that a limit can act on how the last attempt ended
  (wait out the cooldown a 429 started, or give up after too many 429s without progress);
* `Permit.settle` reports how the call ended (`Outcome`), once.

Implementations: `CooldownAdmission` (the 0.7.2 shared cooldown and slow start),
`ControllerAdmission` (the adaptive per-scope rate controller) and `LimiterAdmission`
(the proactive requests-per-minute budget, around one of the other two).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from async_batch_llm._internal.outcome import SUCCEEDED, Outcome, Permit
from async_batch_llm._internal.rate_control.controller import (
    HOOK_USE,
    OpenPermit,
    RateController,
    Ticket,
    response_hook_installed,
)
from async_batch_llm._internal.rate_control.instrumentation import instrument_strategy
from async_batch_llm._internal.rate_control.scope import RateScope, ScopeController
from async_batch_llm._internal.retry_hints import retry_after_seconds

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from async_batch_llm._internal.rate_limit_coordinator import RateLimitCoordinator

__all__ = [
    "Admission",
    "ControllerAdmission",
    "CooldownAdmission",
    "LimiterAdmission",
    "Outcome",
    "Permit",
    "RateLimitRetriesExhausted",
    "estimate_tokens",
    "scope_of",
]

logger = logging.getLogger(__name__)


class Admission(Protocol):
    """Decides when the next attempt of an item may start."""

    def try_admit(
        self, strategy: Any, worker_id: int, after: Any, limited: BaseException | None
    ) -> Permit | None:
        """A permit at once when nothing needs waiting for, else ``None`` (call `admit`).

        The same checks as `admit` (it may raise what `admit` raises), without a
        coroutine: most attempts need no wait, and this path runs for every one of them.
        """
        ...

    async def admit(
        self,
        strategy: Any,
        prompt: str,
        worker_id: int,
        after: Any,
        limited: BaseException | None,
    ) -> Permit:
        """Wait until an attempt of `strategy` for `prompt` may go.

        Args:
            strategy: The item's strategy.
            prompt: The item's prompt (for token estimates).
            worker_id: The worker asking (passed on to cooldown strategies and events).
            after: The permit of the item's previous attempt, settled, or ``None``.
            limited: The rate-limit error the previous attempt failed with, or ``None``.

        Raises:
            RateLimitRetriesExhausted: The previous attempt was rate limited and the
                provider has let nothing through for too long: the item should fail.
            QuotaExhaustedError: The scope's hard quota is used up.
        """
        ...


class RateLimitRetriesExhausted(Exception):
    """The item was rate limited again and again while the provider let no call through."""


class _NoPermit:
    __slots__ = ()

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        return None

    def describe(self) -> dict[str, object] | None:
        return None


NO_PERMIT: Final = _NoPermit()
_NEVER: Final = -math.inf


def estimate_tokens(strategy: Any, prompt: str, hook: str = "estimate_tokens") -> int:
    """Tokens to book for a call before it is made (the strategy's `hook` if it has one)."""
    estimate = getattr(strategy, hook, None)
    if callable(estimate):
        try:
            value = estimate(prompt)
        except Exception:
            logger.debug("%s() of %s raised", hook, type(strategy).__name__, exc_info=True)
        else:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return len(prompt) // 4 + 1


def scope_of(strategy: Any) -> RateScope:
    """The rate-limit scope of `strategy` (its ``rate_limit_scope()``, else one per class)."""
    get_scope = getattr(strategy, "rate_limit_scope", None)
    scope: object = None
    if callable(get_scope):
        try:
            scope = get_scope()
        except Exception:
            logger.debug("rate_limit_scope() of %s raised", type(strategy).__name__, exc_info=True)
    if isinstance(scope, RateScope):
        return scope
    return RateScope("default", "", type(strategy).__name__)


class _CooldownPermit:
    """The permit of every attempt admitted in one cooldown generation (one object for all:
    nothing about the outcome is kept per attempt)."""

    __slots__ = ("coordinator", "generation")

    def __init__(self, coordinator: RateLimitCoordinator, generation: int) -> None:
        self.coordinator = coordinator
        self.generation = generation

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        if outcome is SUCCEEDED and self.coordinator.consecutive:
            self.coordinator.record_success()

    def describe(self) -> dict[str, object] | None:
        return None


class CooldownAdmission:
    """The 0.7.2 behaviour: one shared cooldown per burst of 429s, then a slow start.

    An attempt after a rate-limited one first leads or joins the cooldown that 429 belongs
    to; every attempt then passes the gate (waits while a cooldown runs, then for its
    slow-start delay).

    Args:
        coordinator: The shared cooldown state.
        max_without_progress: Cooldowns in a row with no successful call anywhere after
            which a rate-limited item fails (`RateLimitConfig.max_rate_limit_retries`).
    """

    def __init__(self, coordinator: RateLimitCoordinator, max_without_progress: int) -> None:
        self.coordinator = coordinator
        self.max_without_progress = max_without_progress
        self._permit = _CooldownPermit(coordinator, coordinator.generation)

    def _current_permit(self) -> _CooldownPermit:
        permit = self._permit
        generation = self.coordinator.generation
        if permit.generation != generation:
            permit = self._permit = _CooldownPermit(self.coordinator, generation)
        return permit

    def try_admit(
        self, strategy: Any, worker_id: int, after: Any, limited: BaseException | None
    ) -> Permit | None:
        coordinator = self.coordinator
        if limited is not None or not coordinator.gate_open:
            return None
        permit = self._permit
        if permit.generation == coordinator.generation:
            return permit
        return self._current_permit()

    async def admit(
        self,
        strategy: Any,
        prompt: str,
        worker_id: int,
        after: Any,
        limited: BaseException | None,
    ) -> Permit:
        coordinator = self.coordinator
        if limited is not None:
            observed = after.generation if type(after) is _CooldownPermit else None
            await coordinator.handle_rate_limit(
                worker_id, observed_generation=observed, retry_after=retry_after_seconds(limited)
            )
            if coordinator.consecutive > self.max_without_progress:
                raise RateLimitRetriesExhausted
        if not coordinator.gate_open:
            await coordinator.wait_turn()
        return self._current_permit()


class ControllerAdmission:
    """Adaptive rate control: each scope (provider + key + model) paced on its own.

    Strategies whose SDK client can be reached (the built-in ones) get the rate-limit
    header hook added to that client on first use, so that the provider's headers are read
    on every response.

    Args:
        controller: Admits calls per scope and learns from their outcomes.
        max_without_progress: Pauses in a row during which the scope let no call through,
            after which a rate-limited item fails.
    """

    def __init__(self, controller: RateController, max_without_progress: int) -> None:
        self.controller = controller
        self.max_without_progress = max_without_progress
        self._scopes: dict[int, tuple[Any, ScopeController]] = {}
        # Most batches use one strategy: its scope without a lookup.
        self._last_strategy: Any = None
        self._last_state: Any = None

    def scope_for(self, strategy: Any) -> ScopeController:
        """The state of the scope of `strategy`, remembered per instance."""
        cached = self._scopes.get(id(strategy))
        if cached is not None and cached[0] is strategy:
            return cached[1]
        instrument_strategy(strategy)
        state = self.controller.scope_state(scope_of(strategy))
        self._scopes[id(strategy)] = (strategy, state)
        return state

    def try_admit(
        self, strategy: Any, worker_id: int, after: Any, limited: BaseException | None
    ) -> Permit | None:
        if strategy is self._last_strategy:
            state = self._last_state
        else:
            state = self.scope_for(strategy)
            self._last_strategy, self._last_state = strategy, state
        if limited is not None and state.pauses_since_success > self.max_without_progress:
            raise RateLimitRetriesExhausted
        if not state.open:
            return None
        controller = self.controller
        if state.paused_until > _NEVER and state.paused_until > controller.clock():
            return None
        if HOOK_USE.installed:
            # The response hook needs a ticket of the call (its headers update the scope).
            now = controller.clock()
            state.note_admitted(0, now)
            ticket = Ticket(controller, state, 0, now)
            ticket.activate()
            return ticket
        # ScopeController.admit_open, inline.
        state.admitted += 1
        permit: OpenPermit | None = state.open_permit
        if permit is None:
            permit = state.open_permit = OpenPermit(controller, state)
        return permit

    async def admit(
        self,
        strategy: Any,
        prompt: str,
        worker_id: int,
        after: Any,
        limited: BaseException | None,
    ) -> Permit:
        state = self.scope_for(strategy)
        controller = self.controller
        if limited is not None and state.pauses_since_success > self.max_without_progress:
            raise RateLimitRetriesExhausted
        ticket = controller.admit_if_open(state)
        if ticket is None:
            ticket = await controller.admit(state.scope, estimate_tokens(strategy, prompt))
        if response_hook_installed():
            # Lets the HTTP response hook find the ticket of the call this task makes.
            ticket.activate()
        return ticket


class _LimitedPermit:
    __slots__ = ("inner",)

    def __init__(self, inner: Permit) -> None:
        self.inner = inner

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        self.inner.settle(outcome, detail)

    def describe(self) -> dict[str, object] | None:
        return self.inner.describe()


class LimiterAdmission:
    """The proactive budget (``max_requests_per_minute``) on top of another admission.

    Args:
        inner: Admits first (cooldown gate or rate controller).
        limiter: Returns the current limiter; read per attempt, because 0.7.2 code may
            replace ``processor._proactive_rate_limiter``.
    """

    def __init__(self, inner: Admission, limiter: Callable[[], AsyncLimiter | None]) -> None:
        self.inner = inner
        self.limiter = limiter

    def try_admit(
        self, strategy: Any, worker_id: int, after: Any, limited: BaseException | None
    ) -> Permit | None:
        # Acquiring from aiolimiter is a coroutine: always take the waiting path.
        return None

    async def admit(
        self,
        strategy: Any,
        prompt: str,
        worker_id: int,
        after: Any,
        limited: BaseException | None,
    ) -> Permit:
        inner_after = after.inner if type(after) is _LimitedPermit else after
        permit = await self.inner.admit(strategy, prompt, worker_id, inner_after, limited)
        limiter = self.limiter()
        if limiter is None:
            return _LimitedPermit(permit)
        try:
            await limiter.acquire()
        except BaseException:
            permit.settle(Outcome.RELEASED)
            raise
        return _LimitedPermit(permit)
