"""Admission through a shared budget: the process side of `RedisBudget`.

Per scope and process, one waiting call at a time asks Redis for a slot (the others queue
behind it on a local lock), so a scope with hundreds of waiting workers costs Redis about one
call per admitted one rather than a stampede at every slot. A slot is booked at most
``max_booking_ahead`` seconds ahead: that bounds both what a crashed process leaves unused
and how long after a pause began calls admitted before it may still go.

Outcomes go back to Redis in the background: a 429 at once (it pauses the scope for everyone
and feeds learning), likewise an exhausted quota; successes and token reconciliations
together every `TALLY_INTERVAL`.

While Redis is unavailable the policy decides: ``"local"`` paces the scope locally to this
process's share of the last limit Redis reported, ``"pause"`` waits for Redis, ``"raise"``
fails the attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.rate_control.redis_store import (
    RedisBudget,
    SharedBudgetUnavailableError,
    StoreUnavailable,
)
from async_batch_llm._internal.rate_control.scope import (
    LimitSource,
    QuotaExhaustedError,
    RateScope,
    RateSettings,
    ScopeController,
)

if TYPE_CHECKING:
    from async_batch_llm._internal.rate_control.controller import RateController, Ticket

__all__ = ["SharedRates"]

logger = logging.getLogger(__name__)

#: Seconds between this process's heartbeats into a scope's set of live processes.
HEARTBEAT_INTERVAL = 1.0
#: A process not seen for this long no longer counts towards the local share.
LIVENESS = 5.0
#: Successes and token reconciliations are sent to Redis together, this often (seconds):
#: one call per scope instead of one per call.
TALLY_INTERVAL = 0.05
#: The most slots one call to Redis books for the calls waiting in a process.
MAX_SLOTS_PER_CALL = 32
_SOURCES: tuple[LimitSource, ...] = ("header", "configured", "learned")


@dataclass(slots=True)
class _Known:
    """What Redis last said about a scope (for the local share when it is lost)."""

    request_pace: float | None = None
    request_source: LimitSource | None = None
    token_pace: float | None = None
    token_source: LimitSource | None = None
    processes: int = 0
    heartbeat_at: float = -1e18
    local: bool = False
    #: The header limit last published per dimension (``"r"``, ``"t"``).
    published: dict[str, float] = field(default_factory=dict)
    #: Calls of this process waiting to book in the scope.
    waiting: int = 0
    #: Slots booked for this process's waiting calls and not taken yet.
    slots: deque[_Slot] = field(default_factory=deque)
    #: When the last slot booked for this process may be used (local clock).
    booked_until: float = -1e18
    #: When this process last began pacing the scope alone (local clock).
    local_since: float = -1e18


@dataclass(frozen=True, slots=True)
class _Slot:
    """A booked slot: when it may be used (local clock and Redis's), for how many tokens,
    and when Redis granted it (local clock)."""

    ready_at: float
    redis_at: float
    episode: int
    tokens: int
    booked_at: float


@dataclass(slots=True)
class _Tally:
    """Outcomes of one scope waiting to be sent: successes, their total duration, tokens
    used beyond (or, negative, below) what the calls booked, and failures."""

    successes: int = 0
    duration: float = 0.0
    extra_tokens: int = 0
    failures: int = 0


class SharedRates:
    """Admits calls of a `RateController` through a `RedisBudget`.

    Args:
        budget: Where the scopes' state lives.
        settings: The controller's options (configured limits, margin, learning factors).
        clock: The controller's monotonic clock.
        sleep: The controller's sleep.
    """

    def __init__(
        self,
        budget: RedisBudget,
        settings: RateSettings,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]],
    ) -> None:
        self.budget = budget
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._known: dict[RateScope, _Known] = {}
        self._locks: dict[RateScope, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tallies: dict[RateScope, _Tally] = {}
        self._flush_scheduled = False

    # -- admission --------------------------------------------------------------------------

    async def admit(self, controller: RateController, state: ScopeController, tokens: int) -> Any:
        """Wait until a call in `state`'s scope may go; return its ticket."""
        from async_batch_llm._internal.rate_control.controller import Ticket

        budget = self.budget
        scope = state.scope
        known = self._known.get(scope)
        if known is None:
            known = self._known[scope] = _Known()
        while True:
            state.check_open()
            # This process's own 429 pauses its calls at once, before Redis hears of it.
            local_pause = state.paused_until - self._clock()
            if local_pause > 0:
                await self._sleep(local_pause)
                continue
            if not budget.usable():
                if budget.on_store_error == "raise":
                    raise SharedBudgetUnavailableError(_unavailable(budget))
                if budget.on_store_error == "pause":
                    await self._sleep(budget.retry_interval)
                    continue
                self._go_local(state, known)
                return await controller.admit_locally(state, tokens)
            try:
                slot = await self._book(state, known, tokens)
            except StoreUnavailable:
                continue  # degraded now: the policy decides on the next round
            # A slot booked before the store was lost says nothing about it being back.
            if known.local and slot.booked_at >= known.local_since:
                # Back on the shared budget: calls still waiting for a local slot come here.
                known.local = False
                state.share_of = 1
                controller.void_local_bookings(state)
            now = self._clock()
            state.note_admitted(tokens, now)
            ticket = Ticket(controller, state, tokens, now)
            ticket.shared_at = slot.redis_at
            ticket.shared_episode = slot.episode
            return ticket

    async def _book(self, state: ScopeController, known: _Known, tokens: int) -> _Slot:
        """Book a slot and wait for it.

        One call to Redis books a slot for every call of the process waiting in the scope
        (within the horizon); the slots it got for others wait in `known.slots`.
        """
        budget = self.budget
        scope = state.scope
        keys = budget.keys_for(scope)
        known.waiting += 1
        lock = self._lock(scope)
        try:
            await lock.acquire()
        finally:
            known.waiting -= 1
        try:
            slot = self._take_slot(known)
            while slot is None:
                now = self._clock()
                heartbeat = now - known.heartbeat_at >= HEARTBEAT_INTERVAL
                if heartbeat:
                    known.heartbeat_at = now
                wanted = min(1 + known.waiting, MAX_SLOTS_PER_CALL)
                args = self._admit_args(known, tokens, heartbeat, wanted)
                reply = await budget.call("admit", keys, args)
                status = int(reply[0])
                self._learn(state, known, reply)
                if status == 2:
                    reason = _text(reply[9]) or None
                    if not state.exhausted:
                        state.quota_exhausted(reason)
                    raise QuotaExhaustedError(scope, reason)
                if status == 1:
                    pause = float(reply[1])
                    if known.waiting and pause < budget.max_booking_ahead:
                        # Paced, with calls queued behind: ask when half the horizon's
                        # worth of slots is free, so that one call books several.
                        pause += budget.max_booking_ahead / 2
                    await self._sleep(pause)
                    continue
                redis_now, episode, local_now = float(reply[2]), int(reply[3]), self._clock()
                for text in reply[10]:
                    seconds = float(_text(text))
                    known.slots.append(
                        _Slot(local_now + seconds, redis_now + seconds, episode, tokens, local_now)
                    )
                if known.slots:
                    # A reply's slots come in order; a pace changed since may put a later
                    # reply's before an earlier one's.
                    known.booked_until = max(known.booked_until, known.slots[-1].ready_at)
                slot = self._take_slot(known)
        finally:
            lock.release()
        wait = slot.ready_at - self._clock()
        if wait > 0:
            # At most `max_booking_ahead`: a pause begun meanwhile lets this call go
            # (admitted before it), as a call already in flight does.
            await self._sleep(wait)
        if slot.tokens != tokens:
            self._tally(scope).extra_tokens += tokens - slot.tokens
        return slot

    def _take_slot(self, known: _Known) -> _Slot | None:
        """The next slot booked earlier, unless it is stale (a pause or change since)."""
        slots = known.slots
        while slots:
            slot = slots.popleft()
            if slot.ready_at + self.budget.max_booking_ahead >= self._clock():
                return slot
        return None

    def _admit_args(self, known: _Known, tokens: int, heartbeat: bool, wanted: int) -> list[Any]:
        s = self.settings
        budget = self.budget
        return [
            tokens,
            budget.max_booking_ahead,
            budget.process_id,
            1 if heartbeat else 0,
            LIVENESS,
            0 if s.rpm is None else s.rpm / 60.0,
            0 if s.tpm is None else s.tpm / 60.0,
            s.safety_margin,
            s.burst_seconds,
            s.window_seconds,
            s.increase_fraction,
            known.request_pace or 0,
            known.request_source or "",
            known.token_pace or 0,
            known.token_source or "",
            budget.idle_ttl,
            wanted,
            self._hold(known),
        ]

    def _hold(self, known: _Known) -> float:
        """If the store turns out empty, how long the others may still pace alone: until
        each has tried Redis again (they try every `retry_interval`)."""
        if known.processes <= 1 or known.request_pace is None:
            return 0.0
        return self.budget.retry_interval

    def _lock(self, scope: RateScope) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._locks.get(scope)
        if held is None or held[0] is not loop:
            held = self._locks[scope] = (loop, asyncio.Lock())
        return held[1]

    def _learn(self, state: ScopeController, known: _Known, reply: list[Any]) -> None:
        """Keep what Redis says about the scope's limits (and mirror it for snapshots)."""
        processes = int(reply[8])
        if processes > 0:
            known.processes = processes
        request_pace = _float(reply[4])
        token_pace = _float(reply[6])
        request_source = _source(reply[5])
        token_source = _source(reply[7])
        now = self._clock()
        if request_pace != known.request_pace or request_source != known.request_source:
            known.request_pace, known.request_source = request_pace, request_source
            state.mirror_requests(request_pace, request_source, now)
        if token_pace != known.token_pace or token_source != known.token_source:
            known.token_pace, known.token_source = token_pace, token_source
            state.mirror_tokens(token_pace, token_source, now)

    def is_local(self, scope: RateScope) -> bool:
        """Whether `scope` is paced by this process alone now (the store is unavailable)."""
        known = self._known.get(scope)
        return known is not None and known.local

    def _go_local(self, state: ScopeController, known: _Known) -> None:
        """Pace `state` locally to this process's share of the last known limits."""
        if known.local:
            return
        known.local = True
        share = max(known.processes, self.budget.expected_processes or 1, 1)
        now = known.local_since = self._clock()
        request_pace = None if known.request_pace is None else known.request_pace / share
        token_pace = None if known.token_pace is None else known.token_pace / share
        # Slots booked ahead in the shared budget may still be used: local pacing begins
        # after the last of them, or the two would go together.
        state.go_local(request_pace, token_pace, share, now, after=known.booked_until)
        logger.info(
            "%s paced locally to 1/%d of the shared limit while the store is unavailable",
            state.scope,
            share,
        )

    # -- outcomes (in the background: settling is synchronous) ------------------------------
    # The controller reports here only the outcomes of tickets this budget admitted
    # (``ticket.shared_at`` set), not those paced locally while the store was unavailable.

    def succeeded(self, ticket: Ticket, used_tokens: int | None) -> None:
        tally = self._tally(ticket.scope)
        tally.successes += 1
        tally.duration += max(0.0, self._clock() - ticket.admitted_at)
        if used_tokens is not None:
            tally.extra_tokens += used_tokens - ticket.tokens

    def failed(self, ticket: Ticket, used_tokens: int | None) -> None:
        tally = self._tally(ticket.scope)
        tally.failures += 1
        # What it booked and did not use goes back.
        tally.extra_tokens -= ticket.tokens - (used_tokens or 0)

    def _tally(self, scope: RateScope) -> _Tally:
        """The outcomes of `scope` not sent yet; sent together within `TALLY_INTERVAL`."""
        tally = self._tallies.get(scope)
        if tally is None:
            tally = self._tallies[scope] = _Tally()
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return tally
            self._flush_scheduled = True
            loop.call_later(TALLY_INTERVAL, self._send_tallies)
        return tally

    def _send_tallies(self) -> None:
        self._flush_scheduled = False
        tallies, self._tallies = self._tallies, {}
        for scope, tally in tallies.items():
            if tally.successes or tally.extra_tokens or tally.failures:
                mean = tally.duration / tally.successes if tally.successes else -1.0
                self._send(
                    scope,
                    "succeeded",
                    [tally.successes, tally.extra_tokens, mean, self._window, tally.failures],
                )

    def rate_limited(self, ticket: Ticket, retry_after: float | None) -> None:
        s = self.settings
        hint = -1.0 if retry_after is None or retry_after < 0 else retry_after
        args = [
            hint,
            ticket.shared_episode,
            ticket.shared_at,
            ticket.tokens,
            s.window_seconds,
            s.decrease_factor,
            s.burst_seconds,
            s.safety_margin,
        ]
        self._send(ticket.scope, "rate_limited", args)

    def quota_exhausted(self, ticket: Ticket, reason: str | None) -> None:
        self._send(ticket.scope, "exhaust", [self.budget.quota_seconds, (reason or "")[:200]])

    def limits_observed(self, state: ScopeController) -> None:
        """Publish limits this process read from the provider's headers (when they change)."""
        known = self._known.get(state.scope)
        if known is None or known.local:
            return
        margin, burst = self.settings.safety_margin, self.settings.burst_seconds
        for prefix, dimension in (("r", state.requests), ("t", state.tokens)):
            limit = dimension.limit
            if dimension.source != "header" or limit is None:
                continue
            if _close(limit, known.published.get(prefix)):
                continue
            known.published[prefix] = limit
            left = -1.0 if dimension.remaining is None else dimension.remaining
            self._send(state.scope, "set_limit", [prefix, limit, margin, burst, left])

    @property
    def _window(self) -> float:
        return self.settings.window_seconds

    def _send(self, scope: RateScope, script: str, args: list[Any]) -> None:
        if self.budget.degraded:
            return
        keys = self.budget.keys_for(scope)[:1]
        self._spawn(self._quietly(script, keys, args))

    async def _quietly(self, script: str, keys: Sequence[str], args: list[Any]) -> None:
        try:
            await self.budget.call(script, keys, args)
        except StoreUnavailable:
            pass  # degraded: reported once by the budget
        except Exception:
            logger.exception("Shared budget script %s failed", script)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:
            coroutine.close()  # settled outside a loop: nothing can reach Redis
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send the outcomes not sent yet and wait for them (each call is bounded in time)."""
        self._send_tallies()
        loop = asyncio.get_running_loop()
        while True:
            pending = [task for task in self._tasks if task.get_loop() is loop]
            if not pending:
                return
            await asyncio.wait(pending, timeout=self.budget.timeout * 4)


def _close(value: float, published: float | None) -> bool:
    return published is not None and abs(value - published) <= 0.02 * value


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _float(value: Any) -> float | None:
    text = _text(value)
    if not text:
        return None
    number = float(text)
    return number if number > 0 else None


def _source(value: Any) -> LimitSource | None:
    text = _text(value)
    for source in _SOURCES:
        if text == source:
            return source
    return None


def _unavailable(budget: RedisBudget) -> str:
    return (
        f"The shared budget's Redis ({budget!r}) is unavailable and on_store_error='raise'; "
        "use on_store_error='local' to pace each process to its share meanwhile"
    )
