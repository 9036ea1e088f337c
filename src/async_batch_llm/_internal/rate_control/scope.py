"""The rate state of one scope (provider + API key + model): limits, pacing, pauses, learning.

Where a request limit comes from decides what a 429 does to it:

* ``"header"``: the provider's ``limit``/``remaining``/``reset`` headers. The pace is the limit
  less a safety margin; ``remaining`` is trusted (spare capacity is spent at once, a deficit
  waits for the refill). A 429 only pauses: the headers stay the authority.
* ``"configured"``: a known limit given by the user, less the safety margin; also the ceiling
  for learning if the provider proves it wrong with a 429.
* ``"learned"``: no headers and no configuration. The first 429 of an unpaced scope sets the
  pace from what the provider let through; later 429s cut it by ``decrease_factor`` (once per
  *episode*: 429s of requests admitted before the cut do not cut again), and every
  ``window_seconds / 10`` in which our own pacing delayed work without a 429 raises it by
  ``increase_fraction``.

Everything here is synchronous and takes ``now`` from the caller: no clock, no sleeping.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from async_batch_llm._internal.rate_control.headers import LimitObservation
from async_batch_llm._internal.rate_control.pacer import Pacer, default_burst

__all__ = [
    "Admission",
    "Booking",
    "LimitSource",
    "QuotaExhaustedError",
    "RateScope",
    "RateSettings",
    "ScopeController",
    "ScopeSnapshot",
]

LimitSource = Literal["header", "configured", "learned"]

#: A pause without a retry hint lasts this many request intervals at the current pace.
PAUSE_INTERVALS: Final = 2.0
#: Pause after a rate limit when neither a hint nor a pace says how long (seconds).
FALLBACK_PAUSE: Final = 1.0
#: Learning never paces slower than one request per minute.
MIN_LEARNED_RATE: Final = 1.0 / 60.0
#: Learning raises the pace by at least one request per minute per step.
MIN_INCREASE: Final = 1.0 / 60.0
#: Increases are considered once per this fraction of the window.
INCREASE_INTERVAL_FRACTION: Final = 0.1


@dataclass(frozen=True, slots=True)
class RateScope:
    """Where a rate limit applies: one provider, one API key, one model.

    A 429 pauses only its own scope. ``key_id`` identifies the key without revealing it; build
    it with :meth:`from_api_key`.

    Attributes:
        provider: The provider's name, e.g. ``"openai"``.
        key_id: A short fingerprint of the API key (never the key itself), or ``""``.
        model: The model name, e.g. ``"gpt-4o-mini"``.
    """

    provider: str
    key_id: str
    model: str

    @classmethod
    def from_api_key(cls, *, provider: str, api_key: str | None, model: str) -> RateScope:
        """The scope of ``model`` at ``provider`` used with ``api_key`` (fingerprinted)."""
        key_id = "" if not api_key else hashlib.sha256(api_key.encode()).hexdigest()[:10]
        return cls(provider=provider, key_id=key_id, model=model)

    def __str__(self) -> str:
        return f"{self.provider}/{self.key_id or '-'}/{self.model}"


class QuotaExhaustedError(Exception):
    """A hard quota (daily, billing) of a scope is used up: waiting a cooldown cannot help.

    Raised at admission for every call in the scope once one call has reported it, so the
    remaining items fail at once instead of retrying.

    Attributes:
        scope: The exhausted scope.
        reason: What the provider said, when known.
    """

    def __init__(self, scope: RateScope, reason: str | None = None) -> None:
        self.scope = scope
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"Quota exhausted for {scope}{detail}. Calls in this scope fail at once instead "
            "of retrying; raise the quota or wait for it to reset, then run the failed items "
            "again"
        )

    def __reduce__(self) -> tuple[type[QuotaExhaustedError], tuple[RateScope, str | None]]:
        return (type(self), (self.scope, self.reason))


@dataclass(frozen=True, slots=True)
class RateSettings:
    """The validated options of the rate controller (see ``AdaptiveRateLimitStrategy``).

    Raises:
        ValueError: If an option is out of range; the message names it and the fix.
    """

    rpm: float | None = None
    tpm: float | None = None
    window_seconds: float = 60.0
    initial_rpm: float | None = None
    decrease_factor: float = 0.8
    increase_fraction: float = 0.05
    safety_margin: float = 0.03
    burst_seconds: float = 1.0

    def __post_init__(self) -> None:
        _check_limit("rpm", self.rpm, "the provider's requests-per-minute limit")
        _check_limit("tpm", self.tpm, "the provider's tokens-per-minute limit")
        _check_limit("initial_rpm", self.initial_rpm, "the requests per minute to start from")
        _check_positive("window_seconds", self.window_seconds, "60.0 for per-minute limits")
        _check_positive("burst_seconds", self.burst_seconds, "1.0 to allow one second at once")
        _check_range("decrease_factor", self.decrease_factor, "> 0 and < 1", 0.0, 1.0, True)
        _check_range("increase_fraction", self.increase_fraction, "> 0 and <= 1", 0.0, 1.0)
        if not 0.0 <= self.safety_margin < 1.0:
            msg = (
                f"safety_margin must be >= 0 and < 1, got {self.safety_margin!r}; "
                "pass the fraction of a known limit to leave unused, e.g. 0.03"
            )
            raise ValueError(msg)


def _check_limit(name: str, value: float | None, meaning: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        msg = f"{name} must be > 0 or None, got {value!r}; pass {meaning}, or None"
        raise ValueError(msg)


def _check_positive(name: str, value: float, example: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        msg = f"{name} must be > 0, got {value!r}; pass a number of seconds, e.g. {example}"
        raise ValueError(msg)


def _check_range(
    name: str, value: float, bounds: str, low: float, high: float, open_high: bool = False
) -> None:
    inside = low < value < high if open_high else low < value <= high
    if not inside:
        msg = f"{name} must be {bounds}, got {value!r}; pass a fraction such as 0.8 or 0.05"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ScopeSnapshot:
    """The rate state of one scope at one moment.

    Attributes:
        scope: The scope described.
        requests_per_minute: The request limit believed in (before the safety margin), or
            ``None`` while unknown and unpaced.
        request_limit_source: ``"header"``, ``"configured"``, ``"learned"`` or ``None``.
        tokens_per_minute: The token limit believed in, or ``None`` when unknown.
        token_limit_source: Where the token limit came from, or ``None``.
        remaining_requests: Requests left according to the newest headers, else ``None``.
        remaining_tokens: Tokens left according to the newest headers, else ``None``.
        utilisation: Requests admitted over the last window divided by the request limit
            (``None`` without a limit).
        in_flight: Calls admitted and not yet finished.
        admitted: Calls admitted so far.
        succeeded: Calls that completed.
        rate_limited: Calls answered with a rate limit (429).
        failed: Calls that failed otherwise.
        tokens_used: Tokens the completed and failed calls reported using.
        paused_for: Seconds until the scope admits again after a rate limit (``0.0``: open).
        quota_exhausted: Whether a hard quota ran out (every admission now fails).
    """

    scope: RateScope
    requests_per_minute: float | None
    request_limit_source: LimitSource | None
    tokens_per_minute: float | None
    token_limit_source: LimitSource | None
    remaining_requests: int | None
    remaining_tokens: int | None
    utilisation: float | None
    in_flight: int
    admitted: int
    succeeded: int
    rate_limited: int
    failed: int
    tokens_used: int
    paused_for: float
    quota_exhausted: bool


@dataclass(frozen=True, slots=True)
class Booking:
    """Capacity booked for one call that may still be waiting for its turn."""

    tokens: int
    generation: int
    ready_at: float


@dataclass(frozen=True, slots=True)
class Admission:
    """A call let through: what it booked and when, for reconciling its outcome later."""

    tokens: int
    episode: int
    request_serial: int
    token_serial: int
    admitted_at: float


class _Budget:
    """One dimension (requests or tokens) of a scope: its limit, pacer and header state."""

    __slots__ = ("limit", "observed_serial", "pacer", "remaining", "serial", "source")

    def __init__(self, now: float) -> None:
        self.pacer = Pacer(None, now=now)
        #: Units per second believed allowed (before the safety margin).
        self.limit: float | None = None
        self.source: LimitSource | None = None
        #: ``remaining`` of the newest observation.
        self.remaining: float | None = None
        #: Units admitted so far (a running count that orders admissions and observations).
        self.serial = 0
        self.observed_serial = -1

    def set_limit(
        self, limit: float, source: LimitSource, now: float, settings: RateSettings
    ) -> bool:
        """Pace to ``limit`` units per second; return whether the pace changed."""
        # Known limits keep a margin for what is counted elsewhere (other clients, rounding);
        # a learned one is already what the provider tolerated.
        pace = limit if source == "learned" else limit * (1.0 - settings.safety_margin)
        changed = self.pacer.rate != pace
        self.pacer.set_rate(pace, now, burst=default_burst(pace, settings.burst_seconds))
        self.limit = limit
        self.source = source
        return changed

    def observe(
        self,
        limit: float | None,
        remaining: float | None,
        reset: float | None,
        serial: int,
        now: float,
        settings: RateSettings,
    ) -> bool:
        """Apply one response's limit, remaining and reset; return whether the pace changed."""
        changed = False
        if limit is not None and limit > 0:
            per_second = limit / settings.window_seconds
            if self.source != "header" or not math.isclose(per_second, self.limit or 0.0):
                changed = self.set_limit(per_second, "header", now, settings)
        if remaining is None or serial < self.observed_serial:
            # An older response than one already applied says less about now.
            return changed
        self.observed_serial = serial
        self.remaining = remaining
        if self.limit is None:
            return changed
        # Calls admitted after the observed one may not be counted by the provider yet. Calls
        # still waiting for their turn are not: they go at the pace, which the refill covers.
        reserve = max(1.0, settings.safety_margin * self.limit * settings.window_seconds)
        available = remaining - (self.serial - serial) - reserve
        self.pacer.sync(available, now, refill_within=reset)
        return changed


class ScopeController:
    """Limits, pacing, pauses, learning and counters of one :class:`RateScope`.

    Per call the controller runs :meth:`book` (cancelled with :meth:`cancel` and booked again
    if it goes stale while the call waits), then :meth:`admit`, then exactly one of
    :meth:`succeeded_with`, :meth:`rate_limited`, :meth:`failed_with`, :meth:`quota_exhausted`
    or :meth:`release`, with :meth:`observe` for every response seen.

    Attributes:
        generation: Bumped whenever bookings made earlier stop holding (a pause began, the
            pace changed, the quota ran out); waiting calls book again.
        episode: Bumped on every learned decrease; 429s of calls admitted in an earlier
            episode do not decrease again.
    """

    def __init__(self, scope: RateScope, settings: RateSettings, now: float) -> None:
        self.scope = scope
        self.settings = settings
        self.requests = _Budget(now)
        self.tokens = _Budget(now)
        #: The pace that learning never exceeds (a configured limit less its margin).
        self.ceiling: float | None = None
        if settings.rpm is not None:
            self.requests.set_limit(settings.rpm / 60.0, "configured", now, settings)
            self.ceiling = self.requests.pacer.rate
        if settings.initial_rpm is not None:
            start = settings.initial_rpm / 60.0
            if self.ceiling is None or start < self.ceiling:
                self.requests.set_limit(start, "learned", now, settings)
        if settings.tpm is not None:
            self.tokens.set_limit(settings.tpm / 60.0, "configured", now, settings)
        self.generation = 0
        # Units booked by calls still waiting for their turn (released at once when their
        # bookings stop holding, so that the calls book again one after the other).
        self._waiting_requests = 0
        self._waiting_tokens = 0
        self.episode = 0
        self.paused_until = -math.inf
        self.exhausted_reason: str | None = None
        self.exhausted = False
        self.in_flight = 0
        self.admitted = 0
        self.succeeded = 0
        self.rate_limited_count = 0
        self.failed = 0
        self.tokens_used = 0
        self._first_admitted_at: float | None = None
        self._recent: deque[float] = deque()
        self._interval_start = now
        self._interval_paced = False
        self._interval_limited = False

    # -- admission -------------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise :class:`QuotaExhaustedError` if the scope's quota has run out."""
        if self.exhausted:
            raise QuotaExhaustedError(self.scope, self.exhausted_reason)

    def book(self, tokens: int, now: float) -> Booking:
        """Book one request and ``tokens`` tokens; the booking says when the call may go."""
        self.check_open()
        self._consider_increase(now)
        request_delay = self.requests.pacer.reserve(1, now)
        token_delay = self.tokens.pacer.reserve(tokens, now)
        if request_delay > 0:
            self._interval_paced = True
        self._waiting_requests += 1
        self._waiting_tokens += tokens
        return Booking(
            tokens=tokens,
            generation=self.generation,
            ready_at=max(now + max(request_delay, token_delay), self.paused_until),
        )

    def is_current(self, booking: Booking) -> bool:
        """Whether ``booking`` still holds (no pause, pace change or exhaustion since)."""
        return booking.generation == self.generation

    def cancel(self, booking: Booking) -> None:
        """Release a booking whose call will not be made (cancelled, or booking again)."""
        if self.is_current(booking):
            self._release_booking(booking)
            self.requests.pacer.refund(1)
            self.tokens.pacer.refund(booking.tokens)
        # A booking that stopped holding was released with all the others at that moment.

    def admit(self, booking: Booking, now: float) -> Admission:
        """Let the call of ``booking`` (a current one) go now."""
        self._release_booking(booking)
        self.in_flight += 1
        self.admitted += 1
        self.requests.serial += 1
        self.tokens.serial += booking.tokens
        if self._first_admitted_at is None:
            self._first_admitted_at = now
        self._recent.append(now)
        self._forget_before(now - self.settings.window_seconds)
        return Admission(
            tokens=booking.tokens,
            episode=self.episode,
            request_serial=self.requests.serial,
            token_serial=self.tokens.serial,
            admitted_at=now,
        )

    # -- outcomes --------------------------------------------------------------------------

    def observe(self, observation: LimitObservation, admission: Admission, now: float) -> None:
        """Apply what the response to ``admission``'s call said about the limits."""
        settings = self.settings
        requests_changed = self.requests.observe(
            observation.limit_requests,
            observation.remaining_requests,
            observation.reset_requests_s,
            admission.request_serial,
            now,
            settings,
        )
        tokens_changed = self.tokens.observe(
            observation.limit_tokens,
            observation.remaining_tokens,
            observation.reset_tokens_s,
            admission.token_serial,
            now,
            settings,
        )
        if requests_changed or tokens_changed:
            self._repace()

    def succeeded_with(self, admission: Admission, used_tokens: int | None, now: float) -> None:
        """The call completed; ``used_tokens`` (when known) replaces its estimate.

        With a token limit from headers the unused part of the estimate is not given back:
        providers such as OpenAI keep what they reserved for ``max_tokens``, and one that
        does give it back reports it as ``remaining``, which the pacer then spends.
        """
        self.in_flight -= 1
        self.succeeded += 1
        if used_tokens is None:
            return
        self.tokens_used += used_tokens
        extra = used_tokens - admission.tokens
        if extra > 0:
            # Charged like a booking that does not wait: later calls wait for it instead.
            self.tokens.pacer.reserve(extra, now)
            self.tokens.serial += extra
        elif self.tokens.source != "header":
            self.tokens.pacer.refund(-extra)

    def failed_with(self, admission: Admission, used_tokens: int | None) -> None:
        """The call failed without a rate limit: release its unused tokens, learn nothing."""
        self.in_flight -= 1
        self.failed += 1
        used = used_tokens or 0
        self.tokens_used += used
        self.tokens.pacer.refund(admission.tokens - used)

    def rate_limited(self, admission: Admission, retry_after: float | None, now: float) -> float:
        """The call got a 429: count it, learn (once per episode), pause; return the pause."""
        self.in_flight -= 1
        self.rate_limited_count += 1
        self._interval_limited = True
        # A rejected call used no tokens.
        self.tokens.pacer.refund(admission.tokens)
        if self.requests.source != "header" and admission.episode == self.episode:
            self._decrease(now)
        if retry_after is not None and retry_after >= 0 and math.isfinite(retry_after):
            pause = retry_after
        else:
            pace = self.requests.pacer.rate
            pause = FALLBACK_PAUSE if pace is None else PAUSE_INTERVALS / pace
        self.pause_until(now + pause)
        return pause

    def quota_exhausted(self, reason: str | None) -> None:
        """A hard quota ran out: every later (and every waiting) admission fails."""
        self.exhausted = True
        self.exhausted_reason = reason
        self._void_bookings(requests_dropped=False)

    def release(self) -> None:
        """A call admitted earlier ends without an outcome to learn from (e.g. cancelled)."""
        self.in_flight -= 1

    def pause_until(self, until: float) -> None:
        """Admit nothing before ``until``; then restart gently (one request at once)."""
        if until <= self.paused_until:
            return
        self.paused_until = until
        self.requests.pacer.restart(until)
        self._void_bookings(requests_dropped=True)
        # What the headers promised is void after a 429.
        self.tokens.pacer.clear_credit()

    def pause_remaining(self, now: float) -> float:
        """Seconds until the current pause ends (``0.0`` when not paused)."""
        return max(0.0, self.paused_until - now)

    # -- learning --------------------------------------------------------------------------

    def _decrease(self, now: float) -> None:
        self.episode += 1
        pace = self.requests.pacer.rate
        if pace is None:
            # Nothing paced yet: assume a per-window bucket that started full, as providers'
            # per-minute limits are. It let ``limit * (1 + elapsed / window)`` through, so the
            # limit per second is the successes over (window + elapsed).
            start = self._first_admitted_at if self._first_admitted_at is not None else now
            elapsed = max(0.0, now - start)
            target = max(self.succeeded, 1) / (self.settings.window_seconds + elapsed)
        else:
            target = pace * self.settings.decrease_factor
        if self.requests.set_limit(max(target, MIN_LEARNED_RATE), "learned", now, self.settings):
            self._repace()
        self._start_interval(now)

    def _consider_increase(self, now: float) -> None:
        interval = self.settings.window_seconds * INCREASE_INTERVAL_FRACTION
        if now - self._interval_start < interval:
            return
        pace = self.requests.pacer.rate
        learning = self.requests.source == "learned"
        if learning and pace is not None and self._interval_paced and not self._interval_limited:
            raised = pace + max(pace * self.settings.increase_fraction, MIN_INCREASE)
            if self.ceiling is not None:
                raised = min(raised, self.ceiling)
            if raised > pace and self.requests.set_limit(raised, "learned", now, self.settings):
                self._repace()
        self._start_interval(now)

    def _repace(self) -> None:
        # Calls waiting for their turn were scheduled at the old pace: too fast after a
        # decrease, and after an increase they would overlap the calls booked at the new one.
        self._void_bookings(requests_dropped=False)

    def _void_bookings(self, *, requests_dropped: bool) -> None:
        """Make every waiting call book again; give back what they booked, all at once.

        Released one by one instead, each call would book again into the slot it had just
        given back, and all of them would get the last slot.
        """
        self.generation += 1
        if not requests_dropped:
            self.requests.pacer.refund(self._waiting_requests)
        self.tokens.pacer.refund(self._waiting_tokens)
        self._waiting_requests = 0
        self._waiting_tokens = 0

    def _release_booking(self, booking: Booking) -> None:
        self._waiting_requests -= 1
        self._waiting_tokens -= booking.tokens

    def _start_interval(self, now: float) -> None:
        self._interval_start = now
        self._interval_paced = False
        self._interval_limited = False

    # -- reporting -------------------------------------------------------------------------

    def _forget_before(self, cutoff: float) -> None:
        recent = self._recent
        while recent and recent[0] <= cutoff:
            recent.popleft()

    def snapshot(self, now: float) -> ScopeSnapshot:
        """The scope's state at ``now``."""
        window = self.settings.window_seconds
        self._forget_before(now - window)
        request_limit = self.requests.limit
        utilisation = (
            None if request_limit is None else len(self._recent) / (request_limit * window)
        )
        return ScopeSnapshot(
            scope=self.scope,
            requests_per_minute=_per_minute(request_limit),
            request_limit_source=self.requests.source,
            tokens_per_minute=_per_minute(self.tokens.limit),
            token_limit_source=self.tokens.source,
            remaining_requests=_whole(self.requests.remaining),
            remaining_tokens=_whole(self.tokens.remaining),
            utilisation=utilisation,
            in_flight=self.in_flight,
            admitted=self.admitted,
            succeeded=self.succeeded,
            rate_limited=self.rate_limited_count,
            failed=self.failed,
            tokens_used=self.tokens_used,
            paused_for=self.pause_remaining(now),
            quota_exhausted=self.exhausted,
        )


def _per_minute(per_second: float | None) -> float | None:
    return None if per_second is None else per_second * 60.0


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def scope_payload(snapshot: ScopeSnapshot) -> dict[str, object]:
    """The keys a rate-limit event carries about its scope (plain values, for observers)."""
    return {
        "scope": str(snapshot.scope),
        "limit_rpm": snapshot.requests_per_minute,
        "limit_source": snapshot.request_limit_source,
        "limit_tpm": snapshot.tokens_per_minute,
        "remaining_requests": snapshot.remaining_requests,
        "remaining_tokens": snapshot.remaining_tokens,
        "utilisation": snapshot.utilisation,
        "paused_for": snapshot.paused_for,
        "scope_rate_limited": snapshot.rate_limited,
    }
