"""The rate controller: per-scope admission for every attempt, and the httpx response hook.

Per attempt the caller runs ``ticket = await controller.admit(scope, estimated_tokens)``, makes
the call with the ticket active (`active_ticket`), then reports exactly one outcome:
`complete`, `rate_limited`,
`failed`, `quota_exhausted` or
`release`.

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
from contextlib import contextmanager, suppress
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from async_batch_llm._internal.outcome import SUCCEEDED, Outcome
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
    scope_payload,
)
from async_batch_llm._internal.rate_control.shared import SharedRates
from async_batch_llm._internal.retry_hints import response_headers, retry_after_seconds
from async_batch_llm._internal.usage import failed_usage_of, total_tokens_of

if TYPE_CHECKING:
    from async_batch_llm._internal.rate_control.redis_store import RedisBudget

__all__ = [
    "EventHook",
    "RateController",
    "OpenPermit",
    "Ticket",
    "active_ticket",
    "current_ticket",
    "httpx_event_hooks",
    "instrument",
    "rate_limit_response_hook",
    "response_hook_installed",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
EventHook = Callable[..., Any]


class Ticket(Admission):
    """One admitted call, and the permit it is reported on.

    Hand it back to its controller with the call's outcome (the controller's methods), or
    settle it as a permit (`settle`, as the processor does). It is its own `Admission`:
    one object per call, which matters on a path that runs for every attempt.
    """

    __slots__ = ("context", "controller", "settled", "shared_at", "shared_episode", "state")

    def __init__(
        self,
        controller: RateController,
        state: ScopeController,
        tokens: int,
        now: float,
    ) -> None:
        # Admission's fields set here rather than through super().__init__: a call saved.
        self.tokens = tokens
        self.episode = state.episode
        self.request_serial = state.requests.serial
        self.token_serial = state.tokens.serial
        self.admitted_at = now
        self.controller = controller
        self.state = state
        self.settled = False
        #: The token to reset ``current_ticket`` with, when it was set for this call.
        self.context: Token[Ticket | None] | None = None
        #: When a shared budget admitted the call (its server's clock), else ``None``.
        self.shared_at: float | None = None
        #: The shared scope's learning episode at admission.
        self.shared_episode = 0

    @classmethod
    def from_admission(
        cls, controller: RateController, state: ScopeController, admission: Admission
    ) -> Ticket:
        """A ticket for a call counted already (see `ScopeController.open_admission`)."""
        ticket = cls(controller, state, admission.tokens, admission.admitted_at)
        ticket.episode = admission.episode
        return ticket

    @property
    def scope(self) -> RateScope:
        """The scope the call was admitted in."""
        return self.state.scope

    @property
    def admission(self) -> Admission:
        """What the call booked and when (the ticket itself)."""
        return self

    def activate(self) -> None:
        """Make this the current ticket of the task, for the HTTP response hook."""
        self.context = current_ticket.set(self)

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        """Report the call's outcome (`Outcome`) to the controller; once only."""
        if self.settled:
            return
        context = self.context
        if context is not None:
            self.context = None
            # A ValueError: settled from another context than it was admitted in.
            with suppress(ValueError):
                current_ticket.reset(context)
        controller = self.controller
        if outcome is SUCCEEDED:
            # What `RateController.complete` does, inline: this runs for every success.
            self.settled = True
            used = detail.get("total_tokens") if type(detail) is dict else None
            if type(used) is not int or used <= 0:
                used = total_tokens_of(detail)
            self.state.succeeded_with(self, used, controller._clock())
            if self.shared_at is not None:
                controller.shared.succeeded(self, used)  # type: ignore[union-attr]
            return
        if isinstance(detail, BaseException):
            # The error response's headers say what the limits are, even without a hook on
            # the SDK's HTTP client.
            headers = response_headers(detail)
            if headers is not None:
                controller.observe_headers(self, headers)
        if outcome is Outcome.RATE_LIMITED:
            hint = retry_after_seconds(detail) if isinstance(detail, BaseException) else None
            controller.rate_limited(self, hint)
        elif outcome is Outcome.QUOTA_EXHAUSTED:
            controller.quota_exhausted(self, str(detail)[:200])
        elif outcome is Outcome.FAILED:
            used = failed_usage_of(detail) if isinstance(detail, BaseException) else None
            controller.failed(self, used)
        else:
            controller.release(self)

    def describe(self) -> dict[str, object] | None:
        """The scope's state, for events about this call."""
        return scope_payload(self.controller.snapshot_of(self.scope))

    def __repr__(self) -> str:
        return f"Ticket({self.scope}, admitted_at={self.admitted_at}, settled={self.settled})"


class OpenPermit:
    """The permit of every call admitted while its scope is open (nothing to pace, no pause).

    One object per scope, shared: such a call books nothing, so there is nothing to keep per
    call, and this path runs for every attempt. A success only counts; any other outcome
    (rare) is settled through a `Ticket` rebuilt from the scope's state.
    """

    __slots__ = ("controller", "state")

    def __init__(self, controller: RateController, state: ScopeController) -> None:
        self.controller = controller
        self.state = state

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        """Report the call's outcome to the controller."""
        state = self.state
        if outcome is SUCCEEDED:
            used = detail.get("total_tokens") if type(detail) is dict else None
            if type(used) is not int or used <= 0:
                used = total_tokens_of(detail)
            # ScopeController.succeeded_open, inline: this runs for every success.
            state.succeeded += 1
            if state.pauses_since_success:
                state.pauses_since_success = 0
            if used:
                state.tokens_used += used
            return
        now = self.controller.clock()
        ticket = Ticket.from_admission(self.controller, state, state.open_admission(now))
        ticket.settle(outcome, detail)

    def describe(self) -> dict[str, object] | None:
        """The scope's state, for events about this call."""
        return scope_payload(self.controller.snapshot_of(self.state.scope))


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


def loop_time() -> float:
    """The running event loop's clock (the one its timers use), else `time.monotonic`.

    The same clock for standard loops; a loop with a clock of its own (virtual time in
    tests) is followed too.
    """
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class RateController:
    """Admits calls per `RateScope` and learns from their outcomes.

    Scopes are created on first use and are independent: a 429 pauses only its own.

    Args:
        settings: The limits and learning options (defaults: learn everything).
        clock: Monotonic seconds; default `loop_time`.
        sleep: Async sleep used while a call waits for its turn; injectable for tests.
        wall_clock: Unix seconds, for timestamps in headers.
        budget: A shared budget (`RedisBudget`) that paces every scope together with the
            other processes using it; ``None`` paces in this process only.
    """

    def __init__(
        self,
        settings: RateSettings | None = None,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        budget: RedisBudget | None = None,
    ) -> None:
        self.settings = settings if settings is not None else RateSettings()
        if clock is None:
            clock = loop_time
        #: The monotonic clock the controller reads.
        self.clock = clock
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._scopes: dict[RateScope, ScopeController] = {}
        # One event per scope with waiters; set (and dropped) when their bookings go stale.
        self._wakers: dict[RateScope, asyncio.Event] = {}
        #: Admission through the shared budget, when there is one.
        self.shared: SharedRates | None = (
            None if budget is None else SharedRates(budget, self.settings, clock, sleep)
        )

    def scope_state(self, scope: RateScope) -> ScopeController:
        """The state of ``scope``, created on first use."""
        state = self._scopes.get(scope)
        if state is None:
            state = ScopeController(scope, self.settings, self._clock())
            if self.shared is not None:
                state.share()
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
        state = self._scopes.get(scope)
        if state is None:
            state = self.scope_state(scope)
        now = self._clock()
        if state.open_at(now):
            # Nothing to pace and no pause: no booking, no wait.
            state.note_admitted(tokens, now)
            return Ticket(self, state, tokens, now)
        if self.shared is not None:
            ticket: Ticket = await self.shared.admit(self, state, tokens)
            return ticket
        return await self.admit_locally(state, tokens)

    async def admit_locally(self, state: ScopeController, tokens: int) -> Ticket:
        """`admit` paced by this process alone (also while a shared budget is unavailable)."""
        scope = state.scope
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
            shared = self.shared
            if shared is not None and not shared.is_local(scope):
                # The shared budget is back: wait there instead.
                ticket: Ticket = await shared.admit(self, state, tokens)
                return ticket
        state.cancel_waiting(booking)
        now = self._clock()
        state.note_admitted(booking.tokens, now)
        return Ticket(self, state, booking.tokens, now)

    def void_local_bookings(self, state: ScopeController) -> None:
        """Send the calls waiting for a local slot of `state` back to book again."""
        generation = state.generation
        state.void_bookings()
        self._wake_if_changed(state, generation)

    def admit_if_open(self, state: ScopeController) -> Ticket | None:
        """A ticket at once if the scope of `state` has nothing to pace and no pause.

        The fast path of `admit` for callers that would otherwise estimate tokens first
        (an open scope books none); ``None`` means: call `admit`.
        """
        now = self._clock()
        if not state.open_at(now):
            return None
        state.note_admitted(0, now)
        return Ticket(self, state, 0, now)

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
            if ticket.shared_at is not None and self.shared is not None:
                self.shared.limits_observed(state)
        return observation

    def complete(self, ticket: Ticket, usage: Mapping[str, Any] | int | None = None) -> None:
        """The call succeeded; ``usage`` (a token-usage dict or a total) reconciles tokens."""
        if self._settle(ticket):
            used = usage.get("total_tokens") if type(usage) is dict else None
            if type(used) is not int or used <= 0:
                used = total_tokens_of(usage)
            ticket.state.succeeded_with(ticket, used, self._clock())
            if ticket.shared_at is not None and self.shared is not None:
                self.shared.succeeded(ticket, used)

    def failed(self, ticket: Ticket, usage: Mapping[str, Any] | int | None = None) -> None:
        """The call failed without a rate limit (e.g. a 5xx): release it, learn nothing."""
        if self._settle(ticket):
            used = total_tokens_of(usage)
            ticket.state.failed_with(ticket.admission, used)
            if ticket.shared_at is not None and self.shared is not None:
                self.shared.failed(ticket, used)

    def rate_limited(self, ticket: Ticket, retry_after: float | None = None) -> float:
        """The call got a 429: pause its scope (``retry_after`` seconds if the server said).

        Returns the seconds until the scope admits again. The next `admit` waits for
        it, so the caller need not sleep.
        """
        state = self.scope_state(ticket.scope)
        now = self._clock()
        if not self._settle(ticket):
            return state.pause_remaining(now)
        generation, pace = state.generation, state.requests.pacer.rate
        state.rate_limited(ticket.admission, retry_after, now)
        if ticket.shared_at is not None and self.shared is not None:
            self.shared.rate_limited(ticket, retry_after)
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
            if ticket.shared_at is not None and self.shared is not None:
                self.shared.quota_exhausted(ticket, reason)
        if not state.exhausted:
            logger.warning("Quota exhausted in %s: %s", ticket.scope, reason or "no detail")
        generation = state.generation
        state.quota_exhausted(reason)
        self._wake_if_changed(state, generation)

    def release(self, ticket: Ticket) -> None:
        """The call ended without an outcome to learn from (for example it was cancelled)."""
        if self._settle(ticket):
            ticket.state.release()

    def pauses_without_progress(self, scope: RateScope) -> int:
        """Pauses `scope` began since its last successful call (0 for an unknown scope)."""
        state = self._scopes.get(scope)
        return 0 if state is None else state.pauses_since_success

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
    HOOK_USE.installed = True
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
    HOOK_USE.installed = True
    return client


class _HookUse:
    """Whether any HTTP client has the response hook: until one does, calls need not make
    their ticket current (a context variable write and reset per call)."""

    installed = False


#: Read directly on the hot path (an attribute read costs less than a call).
HOOK_USE = _HookUse()


def response_hook_installed() -> bool:
    """Whether `httpx_event_hooks` or `instrument` was ever used in this process."""
    return HOOK_USE.installed
