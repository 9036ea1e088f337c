"""The rate controller: per-scope admission for every attempt, and the httpx response hook.

Per attempt the caller runs ``ticket = await controller.admit(scope, estimated_tokens)``, makes
the call with the ticket active (:func:`active_ticket`), then reports exactly one outcome:
:meth:`~RateController.complete`, :meth:`~RateController.rate_limited`,
:meth:`~RateController.failed`, :meth:`~RateController.quota_exhausted` or
:meth:`~RateController.release`.

Response headers reach the controller through an httpx event hook: SDK clients (OpenAI,
Anthropic, google-genai, pydantic-ai providers) all send through an ``httpx2.AsyncClient``,
and the hook runs inside the task that made the call, so a ``ContextVar`` tells it which
ticket the response belongs to, on successes as well as errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from async_batch_llm._internal.rate_control.headers import (
    LimitObservation,
    parse_rate_limit_headers,
)
from async_batch_llm._internal.rate_control.scope import (
    Admission,
    RateScope,
    RateSettings,
    ScopeController,
    ScopeSnapshot,
)

__all__ = [
    "EventHook",
    "RateController",
    "Ticket",
    "active_ticket",
    "current_ticket",
    "httpx_event_hooks",
    "instrument",
    "rate_limit_response_hook",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
EventHook = Callable[..., Any]


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted call. Hand it back to its controller with the call's outcome."""

    controller: RateController
    scope: RateScope
    admission: Admission
    settled: bool = False

    @property
    def estimated_tokens(self) -> int:
        """The tokens booked for the call before it was made."""
        return self.admission.tokens


#: The ticket of the call running in the current task (read by the response hook).
current_ticket: ContextVar[Ticket | None] = ContextVar("async_batch_llm_rate_ticket", default=None)


@contextmanager
def active_ticket(ticket: Ticket) -> Iterator[Ticket]:
    """Make ``ticket`` the current one for the calls made inside the ``with`` block."""
    token = current_ticket.set(ticket)
    try:
        yield ticket
    finally:
        current_ticket.reset(token)


class RateController:
    """Admits calls per :class:`RateScope` and learns from their outcomes.

    Scopes are created on first use and are independent: a 429 pauses only its own.

    Args:
        settings: The limits and learning options (defaults: learn everything).
        clock: Monotonic seconds; injectable for tests.
        sleep: Async sleep used while a call waits for its turn; injectable for tests.
        wall_clock: Unix seconds, for timestamps in headers.
    """

    def __init__(
        self,
        settings: RateSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
    ) -> None:
        self.settings = settings if settings is not None else RateSettings()
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._scopes: dict[RateScope, ScopeController] = {}
        # One event per scope with waiters; set (and dropped) when their bookings go stale.
        self._wakers: dict[RateScope, asyncio.Event] = {}

    def scope_state(self, scope: RateScope) -> ScopeController:
        """The state of ``scope``, created on first use."""
        state = self._scopes.get(scope)
        if state is None:
            state = ScopeController(scope, self.settings, self._clock())
            self._scopes[scope] = state
        return state

    async def admit(self, scope: RateScope, estimated_tokens: int = 0) -> Ticket:
        """Wait until a call in ``scope`` costing ``estimated_tokens`` may go; return its ticket.

        Waits out the scope's pause, then its request and token pacing. Cancelling the wait
        releases what was booked.

        Raises:
            QuotaExhaustedError: If the scope's hard quota has run out (also raised to calls
                already waiting when that is discovered).
        """
        tokens = max(0, int(estimated_tokens))
        state = self.scope_state(scope)
        while True:
            generation = state.generation
            booking = state.book(tokens, self._clock())
            # Learning may have changed the pace while booking: the waiting calls book again.
            self._wake_if_changed(state, generation)
            delay = booking.ready_at - self._clock()
            if delay > 0:
                try:
                    await self._wait(scope, delay)
                except BaseException:
                    state.cancel(booking)
                    raise
            if state.is_current(booking):
                break
            # A pause or an exhausted quota voided the booking while it waited.
            state.cancel(booking)
        return Ticket(self, scope, state.admit(booking, self._clock()))

    def observe_headers(
        self, ticket: Ticket, headers: Mapping[str, str] | None
    ) -> LimitObservation:
        """Apply the rate-limit headers of the response to ``ticket``'s call; return them."""
        observation = parse_rate_limit_headers(headers, now=self._wall_clock())
        if not observation.is_empty:
            state = self.scope_state(ticket.scope)
            generation = state.generation
            state.observe(observation, ticket.admission, self._clock())
            self._wake_if_changed(state, generation)
        return observation

    def complete(self, ticket: Ticket, usage: Mapping[str, Any] | int | None = None) -> None:
        """The call succeeded; ``usage`` (a token-usage dict or a total) reconciles tokens."""
        if self._settle(ticket):
            state = self.scope_state(ticket.scope)
            state.succeeded_with(ticket.admission, _total_tokens(usage), self._clock())

    def failed(self, ticket: Ticket, usage: Mapping[str, Any] | int | None = None) -> None:
        """The call failed without a rate limit (e.g. a 5xx): release it, learn nothing."""
        if self._settle(ticket):
            self.scope_state(ticket.scope).failed_with(ticket.admission, _total_tokens(usage))

    def rate_limited(self, ticket: Ticket, retry_after: float | None = None) -> float:
        """The call got a 429: pause its scope (``retry_after`` seconds if the server said).

        Returns the seconds until the scope admits again. The next :meth:`admit` waits for
        it, so the caller need not sleep.
        """
        state = self.scope_state(ticket.scope)
        now = self._clock()
        if not self._settle(ticket):
            return state.pause_remaining(now)
        generation, pace = state.generation, state.requests.pacer.rate
        state.rate_limited(ticket.admission, retry_after, now)
        if state.requests.pacer.rate != pace and state.requests.source == "learned":
            logger.info(
                "Rate limit in %s: pacing lowered to %.1f requests/min",
                ticket.scope,
                (state.requests.pacer.rate or 0.0) * 60.0,
            )
        self._wake_if_changed(state, generation)
        return state.pause_remaining(now)

    def quota_exhausted(self, ticket: Ticket, reason: str | None = None) -> None:
        """The call found the scope's hard quota used up: fail every later admission at once."""
        state = self.scope_state(ticket.scope)
        if self._settle(ticket):
            state.release()
        if not state.exhausted:
            logger.warning("Quota exhausted in %s: %s", ticket.scope, reason or "no detail")
        generation = state.generation
        state.quota_exhausted(reason)
        self._wake_if_changed(state, generation)

    def release(self, ticket: Ticket) -> None:
        """The call ended without an outcome to learn from (for example it was cancelled)."""
        if self._settle(ticket):
            self.scope_state(ticket.scope).release()

    def pause_remaining(self, scope: RateScope) -> float:
        """Seconds until ``scope`` admits again (``0.0`` when it is not paused)."""
        state = self._scopes.get(scope)
        return 0.0 if state is None else state.pause_remaining(self._clock())

    def longest_pause(self) -> float:
        """The longest remaining pause over all scopes (``0.0`` when none is paused)."""
        now = self._clock()
        return max((state.pause_remaining(now) for state in self._scopes.values()), default=0.0)

    def snapshot_of(self, scope: RateScope) -> ScopeSnapshot:
        """The current state of ``scope``."""
        return self.scope_state(scope).snapshot(self._clock())

    def snapshot(self) -> list[ScopeSnapshot]:
        """The state of every scope used so far, in order of first use."""
        now = self._clock()
        return [state.snapshot(now) for state in self._scopes.values()]

    def _settle(self, ticket: Ticket) -> bool:
        """Mark ``ticket`` settled; False if it already was (outcomes count once)."""
        if ticket.controller is not self:
            msg = (
                f"ticket for {ticket.scope} belongs to another RateController; report an "
                "outcome to the controller that admitted the call"
            )
            raise ValueError(msg)
        if ticket.settled:
            return False
        ticket.settled = True
        return True

    async def _wait(self, scope: RateScope, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the scope's bookings go stale meanwhile."""
        waker = self._wakers.get(scope)
        if waker is None:
            waker = self._wakers[scope] = asyncio.Event()
        sleeper = asyncio.ensure_future(self._sleep_for(delay))
        woken = asyncio.ensure_future(waker.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # an injected sleep that failed should not pass silently

    async def _sleep_for(self, delay: float) -> None:
        await self._sleep(delay)

    def _wake_if_changed(self, state: ScopeController, generation: int) -> None:
        if state.generation != generation:
            waker = self._wakers.pop(state.scope, None)
            if waker is not None:
                waker.set()


def _total_tokens(usage: Mapping[str, Any] | int | None) -> int | None:
    if isinstance(usage, bool):
        return None
    if isinstance(usage, int):
        return max(0, usage)
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        return total
    parts = [usage.get("input_tokens"), usage.get("output_tokens")]
    counts = [part for part in parts if isinstance(part, int) and not isinstance(part, bool)]
    return sum(counts) if counts else None


class _Response(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


async def rate_limit_response_hook(response: _Response) -> None:
    """httpx response hook: report the headers to the ticket active in this task, if any.

    Never raises: reading headers must not break the call that received them.
    """
    ticket = current_ticket.get()
    if ticket is None:
        return
    try:
        ticket.controller.observe_headers(ticket, response.headers)
    except Exception:
        logger.debug("Could not apply rate-limit headers for %s", ticket.scope, exc_info=True)


def httpx_event_hooks() -> dict[str, list[EventHook]]:
    """``event_hooks`` for an ``httpx2.AsyncClient``: feeds response headers to the controller."""
    return {"response": [rate_limit_response_hook]}


class _HookedClient(Protocol):
    event_hooks: dict[str, list[EventHook]]


ClientT = TypeVar("ClientT", bound=_HookedClient)


def instrument(client: ClientT) -> ClientT:
    """Add the response hook to an existing async httpx client (once); return the client."""
    hooks = {name: list(registered) for name, registered in client.event_hooks.items()}
    responses = hooks.setdefault("response", [])
    if rate_limit_response_hook not in responses:
        responses.append(rate_limit_response_hook)
    client.event_hooks = hooks
    return client
