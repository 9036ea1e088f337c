"""A rate pacer with a mutable rate: GCRA (generic cell rate algorithm), virtual scheduling.

GCRA keeps one number, the theoretical arrival time (TAT): when the work booked so far would
be paid off at ``rate`` units per second. Booking ``cost`` units pushes the TAT by
``cost / rate``; a booking may start once the TAT is at most ``burst`` units ahead of now.

On top of plain GCRA the pacer holds *credit*: extra units a provider's headers said are spare
(its remaining budget beyond our own burst). Credit only ever lets a booking go at once; a
booking that would still wait for its turn leaves the credit alone.
"""

from __future__ import annotations

import math

__all__ = ["Pacer", "default_burst"]


def default_burst(rate: float | None, burst_seconds: float = 1.0) -> float:
    """``burst_seconds`` worth of ``rate``, at least one unit (one unit when unlimited)."""
    if rate is None:
        return 1.0
    return max(1.0, rate * burst_seconds)


class Pacer:
    """Spaces bookings to ``rate`` units per second, letting ``burst`` units go at once.

    All methods take the current time as ``now`` (seconds on any monotonic clock) and never
    sleep: `reserve` books capacity and answers how long the caller must wait.

    Args:
        rate: Units per second; ``None`` means unlimited (every booking goes at once).
        burst: Units that may go at once after a quiet period; default `default_burst`.
        now: The time the pacer starts, with its full burst available.

    Raises:
        ValueError: If ``rate`` or ``burst`` is not a positive finite number.
    """

    __slots__ = ("_burst", "_credit", "_tat", "rate")

    def __init__(self, rate: float | None, *, burst: float | None = None, now: float) -> None:
        #: Units per second, or ``None`` when unlimited (change it with `set_rate`). A plain
        #: attribute, not a property: it is read for every call admitted.
        self.rate: float | None = None
        self._burst = 1.0
        self._tat = now
        self._credit = 0.0
        self.set_rate(rate, now, burst=burst)

    @property
    def burst(self) -> float:
        """Units that may go at once after a quiet period."""
        return self._burst

    @property
    def credit(self) -> float:
        """Spare units granted by `sync`, spent by bookings they let go at once."""
        return self._credit

    def available(self, now: float) -> float:
        """Units that could be booked at ``now`` without waiting (negative: in debt)."""
        if self.rate is None:
            return math.inf
        return self._credit + self._burst - max(0.0, self._tat - now) * self.rate

    def reserve(self, cost: float, now: float) -> float:
        """Book ``cost`` units; return the seconds until they may be used (``0.0``: at once).

        A cost above the burst is allowed: it goes once earlier bookings are paid off, and
        the bookings after it wait for it. Credit pays for the booking only when that lets it
        go at once.
        """
        rate = self.rate
        if rate is None or cost <= 0:
            return 0.0
        spent = min(self._credit, cost)
        if spent > 0 and (spent >= cost or self._delay(cost - spent, now) <= 0):
            # A booking that would still wait must not use the credit: it is not sent yet, so
            # the provider's next report would show the same spare units and grant them again.
            self._credit -= spent
            cost -= spent
            if cost <= 0:
                return 0.0
        delay = self._delay(cost, now)
        self._tat = max(self._tat, now) + cost / rate
        return delay

    def _delay(self, cost: float, now: float) -> float:
        """The wait `reserve` would answer for ``cost`` (limited pacer), booking nothing."""
        rate = self.rate
        if rate is None:
            return 0.0
        tolerance = max(0.0, self._burst - cost) / rate
        return max(0.0, max(self._tat, now) - now - tolerance)

    def refund(self, cost: float) -> None:
        """Give back ``cost`` booked units that were not used (the next bookings move up)."""
        if self.rate is not None and cost > 0:
            # Below ``now`` the TAT means "idle": ``reserve`` clamps it, so a refund never
            # builds up more than the burst.
            self._tat -= cost / self.rate

    def set_rate(self, rate: float | None, now: float, *, burst: float | None = None) -> None:
        """Change the pace; what may go at once is kept (up to the new burst).

        Work booked beyond that is paid off at the new rate, and a larger burst fills up at
        the new rate rather than at once. ``burst`` defaults to `default_burst` of the
        new rate.
        """
        if rate is not None:
            _check_positive("rate", rate, "units per second; use None for unlimited")
        new_burst = default_burst(rate) if burst is None else burst
        _check_positive("burst", new_burst, "units that may go at once, e.g. 1.0")
        old = self.rate
        if rate is None:
            self._tat = now
        elif old is None:
            self._tat = max(self._tat, now)
        else:
            # Like a provider's bucket when its limit changes: what may go now stays (capped
            # at the new burst) and refills at the new rate. Keeping the booked units instead
            # would make the last second at a higher rate cost seconds at a lower one.
            available = min(self._burst - max(0.0, self._tat - now) * old, new_burst)
            self._tat = now + (new_burst - available) / rate
        self.rate = rate
        self._burst = new_burst

    def restart(self, at: float, *, available: float = 1.0) -> None:
        """Drop the credit; from ``at`` on, at most ``available`` units go at once.

        Used after a rate limit: the work after the pause restarts gently instead of with a
        full burst. Units already booked stay booked (refund the bookings that will not be
        used first): forgetting them would let every pause grant extra units, and frequent
        short pauses would then send faster than the pace.
        """
        self._credit = 0.0
        if self.rate is not None:
            self._tat = max(self._tat, at + max(0.0, self._burst - available) / self.rate)

    def clear_credit(self) -> None:
        """Forget the credit from `sync` (the provider's word no longer holds)."""
        self._credit = 0.0

    def sync(self, available: float, now: float, *, refill_within: float | None = None) -> None:
        """Align with a provider that says ``available`` units can be used from ``now``.

        More than the pacer would give becomes credit; less pushes the TAT back so that the
        next unit waits for the provider to refill it. ``refill_within`` bounds that wait:
        the provider reported being full again by then.
        """
        rate = self.rate
        if rate is None:
            return
        own = self._burst - max(0.0, self._tat - now) * rate
        if available >= own:
            # Credit is what the provider has beyond the pacer's own allowance; a pacer in
            # debt (calls still waiting) gets none, or new calls would jump the queue.
            self._credit = max(0.0, available - max(own, 0.0))
            return
        self._credit = 0.0
        tat = now + (self._burst - available) / rate
        if refill_within is not None:
            # The first unit after the TAT conforms at ``tat - (burst - 1) / rate``.
            tat = min(tat, now + refill_within + max(0.0, self._burst - 1.0) / rate)
        self._tat = max(self._tat, tat)

    def __repr__(self) -> str:
        return (
            f"Pacer(rate={self.rate!r}, burst={self._burst!r}, tat={self._tat!r}, "
            f"credit={self._credit!r})"
        )


def _check_positive(name: str, value: float, meaning: str) -> None:
    # ``not > 0`` also rejects NaN.
    if not (value > 0 and math.isfinite(value)):
        msg = f"{name} must be a positive finite number, got {value!r}; pass {meaning}"
        raise ValueError(msg)
