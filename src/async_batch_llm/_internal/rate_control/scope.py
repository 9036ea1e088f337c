"""The rate state of one scope (provider + API key + model): limits, pacing, pauses, learning.

Where a request limit comes from decides what a 429 does to it:

* ``"header"``: the provider's ``limit``/``remaining``/``reset`` headers. The pace is the limit
  less a safety margin; ``remaining`` is trusted (spare capacity is spent at once, a deficit
  waits for the refill). A 429 only pauses: the headers stay the authority.
* ``"configured"``: a known limit given by the user, less the safety margin; also the ceiling
  for learning if the provider proves it wrong with a 429.
* ``"learned"``: no headers and no configuration. The pace is learned from outcomes, like
  TCP's congestion window: see `ScopeController` for the rules. Two measurements keep it
  from collapsing: the *demonstrated* rate (successes per second since the provider started
  rejecting calls) and the *floor* (successes in the last window, per second, counted from
  that moment on): a decrease never goes below either, because the provider has shown it
  lets that much through.

A header limit is per ``window_seconds`` unless the headers say otherwise: a response with
``limit``, ``remaining`` and ``reset`` (the time until the budget is full again) shows the
refill rate directly, ``(limit - remaining) / reset``, so a provider whose window is not a
minute is paced right too.

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
FALLBACK_PAUSE: Final = 0.25
#: Longest pause without a hint, however many pauses in a row let nothing through.
MAX_FALLBACK_PAUSE: Final = 60.0
#: Learning never paces slower than one request per minute.
MIN_LEARNED_RATE: Final = 1.0 / 60.0
#: Learning raises the pace by at least one request per minute per step.
MIN_INCREASE: Final = 1.0 / 60.0
#: Steady increases are considered once per this fraction of the window.
INCREASE_INTERVAL_FRACTION: Final = 0.1
#: Successes before the first 429 needed to take that 429 as the end of a full bucket.
MIN_PRIOR_SUCCESSES: Final = 20
#: Factor of one probing increase.
PROBE_FACTOR: Final = 2.0
#: Steady increases in a row without a 429 after which probing starts again.
STEADY_STEPS_BEFORE_PROBING: Final = 5
#: Weight of the newest call duration in the running average.
LATENCY_WEIGHT: Final = 0.2
#: Header observations whose refill rates are combined (median) into the window estimate.
WINDOW_SAMPLES: Final = 7
#: Observations needed, and the most their windows may differ (ratio), to trust the estimate.
WINDOW_MIN_SAMPLES: Final = 3
WINDOW_SPREAD: Final = 1.25


@dataclass(frozen=True, slots=True)
class RateScope:
    """Where a rate limit applies: one provider, one API key, one model.

    A 429 pauses only its own scope. ``key_id`` identifies the key without revealing it; build
    it with `from_api_key`.

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


class Admission:
    """A call let through: what it booked and when, for reconciling its outcome later.

    A plain class rather than a dataclass: one is made per call, and a frozen dataclass's
    ``__init__`` costs several times as much.
    """

    __slots__ = ("admitted_at", "episode", "request_serial", "token_serial", "tokens")

    def __init__(
        self, tokens: int, episode: int, request_serial: int, token_serial: int, admitted_at: float
    ) -> None:
        self.tokens = tokens
        self.episode = episode
        self.request_serial = request_serial
        self.token_serial = token_serial
        self.admitted_at = admitted_at

    def __repr__(self) -> str:
        return (
            f"Admission(tokens={self.tokens}, episode={self.episode}, "
            f"request_serial={self.request_serial}, token_serial={self.token_serial}, "
            f"admitted_at={self.admitted_at})"
        )


class _Budget:
    """One dimension (requests or tokens) of a scope: its limit, pacer and header state."""

    __slots__ = (
        "limit",
        "observed_serial",
        "pacer",
        "remaining",
        "serial",
        "source",
        "window_samples",
    )

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
        #: Windows (seconds) implied by recent header observations.
        self.window_samples: deque[float] = deque(maxlen=WINDOW_SAMPLES)

    def window(self, settings: RateSettings) -> float:
        """The length of the provider's window, as its headers imply, else the setting.

        A token bucket (OpenAI, Anthropic) implies the same window in every response; a
        provider with fixed windows, whose reset is the end of the current window, implies
        a different one each time, and then the setting is used.
        """
        samples = sorted(self.window_samples)
        configured = settings.window_seconds
        if len(samples) < WINDOW_MIN_SAMPLES or samples[-1] > WINDOW_SPREAD * samples[0]:
            return configured
        implied = samples[len(samples) // 2]
        # Whole-unit ``remaining`` values make the implied window a little short; a window
        # close to the configured one is the configured one.
        return configured if abs(implied - configured) <= 0.15 * configured else implied

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

    def mirror(
        self, pace: float | None, source: LimitSource | None, now: float, settings: RateSettings
    ) -> None:
        """Pace at `pace` (margin already applied), reported as a limit from `source`."""
        if pace is None:
            self.pacer.set_rate(None, now)
            self.limit = None
            self.source = None
            return
        self.pacer.set_rate(pace, now, burst=default_burst(pace, settings.burst_seconds))
        self.limit = pace if source == "learned" else pace / (1.0 - settings.safety_margin)
        self.source = source

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
            if remaining is not None and reset is not None and reset > 0:
                used = limit - remaining
                # Too little used says little about the refill rate (rounding, one call).
                if used >= max(2.0, 0.05 * limit):
                    self.window_samples.append(limit * reset / used)
            per_second = limit / self.window(settings)
            if self.source != "header" or not math.isclose(
                per_second, self.limit or 0.0, rel_tol=0.02
            ):
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
        reserve = max(1.0, settings.safety_margin * self.limit * self.window(settings))
        available = remaining - (self.serial - serial) - reserve
        self.pacer.sync(available, now, refill_within=reset)
        return changed


class ScopeController:
    """Limits, pacing, pauses, learning and counters of one `RateScope`.

    Per call the controller runs `book` (cancelled with `cancel` and booked again if it goes
    stale while the call waits), then `admit`, then exactly one of `succeeded_with`,
    `rate_limited`, `failed_with`, `quota_exhausted` or `release`, with `observe` for every
    response seen.

    Learning (a limit that is neither configured nor reported in headers):

    * The scope starts unpaced. Its first 429 sets a pace from the *demonstrated* rate
      when there is one, else, after at least `MIN_PRIOR_SUCCESSES` successes, from the
      assumption that a full per-window bucket just ran out (``successes / (window +
      elapsed)``); with neither, the scope stays unpaced and only pauses.
    * A pace set from that assumption *probes*: it doubles after every interval of
      ``max(mean call duration, min(2 calls at the pace, 0.5 s))`` in which calls waited
      for it and no 429 came. So a provider whose window is not a minute is found within a
      few calls.
    * A 429 (once per *episode*: 429s of calls admitted before the last decrease do not
      count again) lowers the pace by ``decrease_factor``, never below the demonstrated rate
      nor the floor, and switches to *steady* increases of ``increase_fraction`` per tenth of
      the window; five clean steady steps in a row start probing again.

    Attributes:
        generation: Bumped whenever bookings made earlier stop holding (a pause began, the
            pace changed, the quota ran out); waiting calls book again.
        episode: Bumped on every learned decrease.
        pauses_since_success: Pauses begun since the last successful call of the scope.
    """

    # Slots: the counters are read and written for every call.
    __slots__ = (
        "_clean_since",
        "_interval_limited",
        "_interval_paced",
        "_interval_start",
        "_last_rejected_at",
        "_latency",
        "_pause_began",
        "_prior",
        "_probing",
        "_recent",
        "_steady_steps",
        "_succeeded_at_rejection",
        "_successes",
        "_waiting_requests",
        "_waiting_tokens",
        "admitted",
        "ceiling",
        "episode",
        "exhausted",
        "exhausted_reason",
        "failed",
        "generation",
        "open",
        "open_permit",
        "paused_until",
        "pauses_since_success",
        "rate_limited_count",
        "rejecting_since",
        "released",
        "requests",
        "scope",
        "settings",
        "share_of",
        "shared",
        "succeeded",
        "tokens",
        "tokens_used",
    )

    def __init__(self, scope: RateScope, settings: RateSettings, now: float) -> None:
        self.scope = scope
        self.settings = settings
        self.requests = _Budget(now)
        self.tokens = _Budget(now)
        #: The pace that learning never exceeds (a configured limit less its margin).
        self.ceiling: float | None = None
        self._probing = False
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
        self._pause_began = -math.inf
        self.pauses_since_success = 0
        self.exhausted_reason: str | None = None
        self.exhausted = False
        self.released = 0
        self.admitted = 0
        self.succeeded = 0
        self.rate_limited_count = 0
        self.failed = 0
        self.tokens_used = 0
        self._recent: deque[float] = deque()
        # When successes completed over the last window.
        self._successes: deque[tuple[float, float]] = deque()
        #: Since when the provider has been rejecting calls (``None``: it has not yet).
        self.rejecting_since: float | None = None
        self._last_rejected_at = -math.inf
        # ``succeeded`` at the last 429 (see `clean_successes`).
        self._succeeded_at_rejection = 0
        self._clean_since = now
        # The rate a full budget that ran out implies (see ``rate_limited``).
        self._prior: float | None = None
        self._latency: float | None = None
        self._steady_steps = 0
        self._interval_start = now
        self._interval_paced = False
        self._interval_limited = False
        #: No limit and no exhausted quota (see `open_at`).
        self.open = True
        #: The permit shared by the calls admitted while open (set by the admission).
        self.open_permit: object = None
        #: Paced through a shared budget: never open (every call asks the budget).
        self.shared = False
        #: Processes sharing the limits while this one paces alone (a lost shared budget):
        #: the provider's headers describe the whole key, this process gets its share.
        self.share_of = 1
        self._refresh_open()

    # -- admission -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished (derived: one counter less to keep per call)."""
        return (
            self.admitted - self.succeeded - self.failed - self.rate_limited_count - self.released
        )

    @property
    def clean_successes(self) -> int:
        """Calls that succeeded since the last 429."""
        return self.succeeded - self._succeeded_at_rejection

    def open_at(self, now: float) -> bool:
        """No limit, no pause, no exhaustion: a call may go at once and books nothing."""
        return self.open and self.paused_until <= now

    def _refresh_open(self) -> None:
        # Kept as a flag because it is read for every call admitted. Once the provider has
        # rejected a call, every call gets a full `Admission`: learning needs their times.
        self.open = (
            self.requests.pacer.rate is None
            and self.tokens.pacer.rate is None
            and not self.exhausted
            and self.rejecting_since is None
            and not self.shared
        )

    def share(self) -> None:
        """Admit through a shared budget from now on (see `SharedRates`)."""
        self.shared = True
        self._refresh_open()

    def mirror_requests(self, pace: float | None, source: LimitSource | None, now: float) -> None:
        """Show the shared request pace (margin applied) as this scope's own."""
        self.requests.mirror(pace, source, now, self.settings)

    def mirror_tokens(self, pace: float | None, source: LimitSource | None, now: float) -> None:
        """Show the shared token pace (margin applied) as this scope's own."""
        self.tokens.mirror(pace, source, now, self.settings)

    def go_local(
        self,
        request_pace: float | None,
        token_pace: float | None,
        share_of: int,
        now: float,
        *,
        after: float,
    ) -> None:
        """Pace locally (the shared budget is unavailable) at these paces, never faster, as
        one of `share_of` processes, the first local call one interval after `after` (the
        last call booked through the shared budget) or `now`, whichever is later."""
        self.share_of = share_of
        self.requests.mirror(
            request_pace, None if request_pace is None else "learned", now, self.settings
        )
        self.tokens.mirror(
            token_pace, None if token_pace is None else "learned", now, self.settings
        )
        self.ceiling = request_pace
        self._void_bookings()
        # Calls admitted through the shared budget may still be on their way: no burst, as
        # if the shared slots went on.
        begin = max(now, after)
        self.requests.pacer.restart(begin, available=0.0)
        self.tokens.pacer.restart(begin, available=0.0)

    def check_open(self) -> None:
        """Raise `QuotaExhaustedError` if the scope's quota has run out."""
        if self.exhausted:
            raise QuotaExhaustedError(self.scope, self.exhausted_reason)

    def book(self, tokens: int, now: float) -> Booking:
        """Book one request and `tokens` tokens; the booking says when the call may go."""
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
        """Whether `booking` still holds (no pause, pace change or exhaustion since)."""
        return booking.generation == self.generation

    def cancel(self, booking: Booking) -> None:
        """Release a booking whose call will not be made (cancelled, or booking again)."""
        if self.is_current(booking):
            self._release_booking(booking)
            self.requests.pacer.refund(1)
            self.tokens.pacer.refund(booking.tokens)
        # A booking that stopped holding was released with all the others at that moment.

    def admit(self, booking: Booking, now: float) -> Admission:
        """Let the call of `booking` (a current one) go now."""
        self.cancel_waiting(booking)
        return self.admit_unbooked(booking.tokens, now)

    def cancel_waiting(self, booking: Booking) -> None:
        """The call of `booking` stops waiting: it goes now (its booking stays used)."""
        self._release_booking(booking)

    def admit_unbooked(self, tokens: int, now: float) -> Admission:
        """Let a call go now without a booking (the scope is `open_at` now)."""
        self.note_admitted(tokens, now)
        return Admission(tokens, self.episode, self.requests.serial, self.tokens.serial, now)

    def admit_open(self) -> None:
        """Count a call let go while the scope is `open_at` now, without an `Admission`.

        The cheapest admission, for the common case of a scope with nothing to pace: the
        call settles with `succeeded_open`, or (rarely) through `open_admission`.
        """
        self.admitted += 1

    def succeeded_open(self, used_tokens: int | None) -> None:
        """A call admitted with `admit_open` completed.

        It is not one of the successes that measure the provider's rate: it was admitted
        before the provider rejected anything (the scope is no longer open after that).
        """
        self.succeeded += 1
        self.pauses_since_success = 0
        if used_tokens:
            self.tokens_used += used_tokens

    def open_admission(self, now: float) -> Admission:
        """What a call admitted with `admit_open` must have booked, for its (rare) outcome
        other than success: admitted now, unless the scope is paused, in which case it was
        in flight when the pause began and belongs to the episode before it."""
        if self.paused_until > now:
            return Admission(
                0, self.episode - 1, self.requests.serial, self.tokens.serial, self._pause_began
            )
        return Admission(0, self.episode, self.requests.serial, self.tokens.serial, now)

    def note_admitted(self, tokens: int, now: float) -> None:
        """Count a call let go now (the caller builds its `Admission` from the counters)."""
        self.admitted += 1
        self.requests.serial += 1
        self.tokens.serial += tokens
        # For the utilisation in snapshots (calls admitted while open are not counted).
        recent = self._recent
        recent.append(now)
        if recent[0] <= now - self.settings.window_seconds:
            self._forget_before(now - self.settings.window_seconds)

    # -- outcomes --------------------------------------------------------------------------

    def observe(self, observation: LimitObservation, admission: Admission, now: float) -> None:
        """Apply what the response to `admission`'s call said about the limits."""
        settings = self.settings
        if self.share_of > 1:
            observation = observation.share(self.share_of)
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
            self._probing = False
            self._repace()
            self._refresh_open()

    def succeeded_with(self, admission: Admission, used_tokens: int | None, now: float) -> None:
        """The call completed; `used_tokens` (when known) replaces its estimate.

        With a token limit from headers the unused part of the estimate is not given back:
        providers such as OpenAI keep what they reserved for ``max_tokens``, and one that
        does give it back reports it as ``remaining``, which the pacer then spends.
        """
        self.succeeded += 1
        self.pauses_since_success = 0
        duration = now - admission.admitted_at
        latency = self._latency
        self._latency = (
            duration if latency is None else latency + LATENCY_WEIGHT * (duration - latency)
        )
        if self.rejecting_since is not None:
            self._record_success(admission.admitted_at, now)
        if used_tokens is None:
            return
        self.tokens_used += used_tokens
        if self.tokens.pacer.rate is None:
            return  # no token pacing to reconcile
        extra = used_tokens - admission.tokens
        if extra > 0:
            # Charged like a booking that does not wait: later calls wait for it instead.
            self.tokens.pacer.reserve(extra, now)
            self.tokens.serial += extra
        elif self.tokens.source != "header":
            self.tokens.pacer.refund(-extra)

    def failed_with(self, admission: Admission, used_tokens: int | None) -> None:
        """The call failed without a rate limit: release its unused tokens, learn nothing."""
        self.failed += 1
        used = used_tokens or 0
        self.tokens_used += used
        self.tokens.pacer.refund(admission.tokens - used)

    def rate_limited(self, admission: Admission, retry_after: float | None, now: float) -> float:
        """The call got a 429: count it, learn (once per episode), pause; return the pause."""
        self.rate_limited_count += 1
        self._interval_limited = True
        self._steady_steps = 0
        clean = self.clean_successes
        if self.requests.pacer.rate is None and clean >= MIN_PRIOR_SUCCESSES:
            # Unpaced calls went through for a while, then this one was rejected: a full
            # budget ran out. Per-window budgets start full, so a bucket of
            # ``limit * window`` that ran out after ``elapsed`` seconds let
            # ``limit * (window + elapsed)`` through.
            elapsed = max(0.0, now - self._clean_since)
            self._prior = clean / (self.settings.window_seconds + elapsed)
            # Those successes came while the provider had budget to spare: they do not
            # measure its sustained rate.
            self.rejecting_since = now
        elif now - self._last_rejected_at > self.settings.window_seconds:
            self.rejecting_since = now
        self._last_rejected_at = now
        self._succeeded_at_rejection = self.succeeded
        self._refresh_open()
        self._clean_since = now
        # A rejected call used no tokens.
        self.tokens.pacer.refund(admission.tokens)
        if self.requests.source != "header" and admission.episode == self.episode:
            self._decrease(now)
        if admission.admitted_at > self._pause_began:
            # Admitted after the last pause began: this 429 starts a pause of its own.
            self.pauses_since_success += 1
            self._pause_began = now
        if retry_after is not None and retry_after >= 0 and math.isfinite(retry_after):
            pause = retry_after
        else:
            pace = self.requests.pacer.rate
            pause = FALLBACK_PAUSE if pace is None else PAUSE_INTERVALS / pace
            # Without a hint, pauses in a row with nothing let through grow exponentially.
            doublings = min(self.pauses_since_success - 1, 16)
            pause = min(max(pause, pause * 2.0**doublings), MAX_FALLBACK_PAUSE)
        self.pause_until(now + pause)
        return pause

    def quota_exhausted(self, reason: str | None) -> None:
        """A hard quota ran out: every later (and every waiting) admission fails."""
        self.exhausted = True
        self.exhausted_reason = reason
        self._void_bookings()
        self._refresh_open()

    def release(self) -> None:
        """A call admitted earlier ends without an outcome to learn from (e.g. cancelled)."""
        self.released += 1

    def pause_until(self, until: float) -> None:
        """Admit nothing before `until`; then restart gently (one request at once)."""
        if until <= self.paused_until:
            return
        self.paused_until = until
        # The waiting calls book again after the pause; what they booked is given back first.
        self._void_bookings()
        self.requests.pacer.restart(until)
        # What the headers promised is void after a 429.
        self.tokens.pacer.clear_credit()

    def pause_remaining(self, now: float) -> float:
        """Seconds until the current pause ends (``0.0`` when not paused)."""
        return max(0.0, self.paused_until - now)

    # -- learning --------------------------------------------------------------------------

    def _record_success(self, admitted_at: float, now: float) -> None:
        successes = self._successes
        successes.append((admitted_at, now))
        cutoff = now - self.settings.window_seconds
        while successes and successes[0][1] <= cutoff:
            successes.popleft()

    def _successes_admitted(self, start: float, end: float) -> int:
        return sum(1 for admitted_at, _ in self._successes if start <= admitted_at <= end)

    def demonstrated_rate(self, now: float) -> float | None:
        """Successful calls per second admitted since the provider started rejecting.

        While calls are rejected the provider's budget is empty, so every success is one it
        refilled: their rate is the provider's sustained rate. Counted by admission time,
        up to one mean call duration ago (later calls may not have answered yet), over the
        last window at most. ``None`` until at least three such successes are known.
        """
        since = self.rejecting_since
        if since is None:
            return None
        latency = self._latency or 0.0
        start = max(since, now - self.settings.window_seconds)
        end = now - latency
        span = end - start
        if span <= max(latency, 0.05):
            return None
        count = self._successes_admitted(start, end)
        return count / span if count >= 3 else None

    def floor_rate(self, now: float) -> float:
        """Successes per second over the last window, counted since the provider started
        rejecting: what it demonstrably let through, which no decrease goes below."""
        since = self.rejecting_since
        if since is None:
            return 0.0
        window = self.settings.window_seconds
        return self._successes_admitted(max(since, now - window), now) / window

    def _decrease(self, now: float) -> None:
        self.episode += 1
        settings = self.settings
        pace = self.requests.pacer.rate
        demonstrated = self.demonstrated_rate(now)
        if pace is None:
            known = [rate for rate in (demonstrated, self._prior) if rate is not None]
            if not known:
                # A 429 with nothing to compare it with: pause, keep sending unpaced.
                self._start_interval(now)
                return
            target = max(known)
            # Both estimates can be low (a window shorter than assumed, pauses in the
            # measurement): probe upwards until the provider objects.
            self._probing = True
        else:
            target = pace * settings.decrease_factor
            if demonstrated is not None:
                target = min(pace, max(target, demonstrated))
            self._probing = False
        target = max(target, self.floor_rate(now), MIN_LEARNED_RATE)
        if self.ceiling is not None:
            target = min(target, self.ceiling)
        if self.requests.set_limit(target, "learned", now, settings):
            self._repace()
        self._refresh_open()
        self._start_interval(now)

    def _increase_interval(self, pace: float) -> float:
        # Long enough for a few calls at the pace, or for one answer at a low pace.
        probing = max(self._latency or 0.0, min(2.0 / pace, 0.5))
        if self._probing:
            return probing
        return max(self.settings.window_seconds * INCREASE_INTERVAL_FRACTION, probing)

    def _consider_increase(self, now: float) -> None:
        pace = self.requests.pacer.rate
        if self.requests.source != "learned" or pace is None:
            return
        if now - self._interval_start < self._increase_interval(pace):
            return
        if self._interval_paced and not self._interval_limited:
            if self._probing:
                raised = pace * PROBE_FACTOR
            else:
                raised = pace + max(pace * self.settings.increase_fraction, MIN_INCREASE)
                self._steady_steps += 1
                if self._steady_steps >= STEADY_STEPS_BEFORE_PROBING:
                    self._probing = True
            if self.ceiling is not None:
                raised = min(raised, self.ceiling)
            if raised > pace and self.requests.set_limit(raised, "learned", now, self.settings):
                self._repace()
        self._start_interval(now)

    def _repace(self) -> None:
        # Calls waiting for their turn were scheduled at the old pace: too fast after a
        # decrease, and after an increase they would overlap the calls booked at the new one.
        self._void_bookings()

    def void_bookings(self) -> None:
        """Make every waiting call book again (see `_void_bookings`)."""
        self._void_bookings()

    def _void_bookings(self) -> None:
        """Make every waiting call book again; give back what they booked, all at once.

        Released one by one instead, each call would book again into the slot it had just
        given back, and all of them would get the last slot.
        """
        self.generation += 1
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
        """The scope's state at `now`."""
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
