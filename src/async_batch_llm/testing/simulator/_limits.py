"""Continuously refilling request and token buckets, one pair per API key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Admission", "KeyLimits", "LimitState", "TokenBucket"]

Dimension = Literal["requests", "tokens"]

# Refill arithmetic is floating point: 14 + 17.4 * 100/60 is 42.99999999999999, not 43.
_EPSILON = 1e-9


class TokenBucket:
    """A bucket holding up to ``capacity`` units that refills at ``capacity / window`` per second.

    It starts full. The level may go below zero when usage is charged after the fact (output
    tokens of a request that reserved none), which delays later requests as a provider would.
    """

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: float, window_seconds: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / window_seconds
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what flowed in since the last update (a clock that went back adds nothing)."""
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 when they are now)."""
        missing = amount - self.level
        return missing / self.rate if missing > _EPSILON * max(1.0, amount) else 0.0

    def time_to_full(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    def resize(self, capacity: float, window_seconds: float, now: float) -> None:
        """Change the limit; the current level is kept but never exceeds the new capacity."""
        self.refill(now)
        self.capacity = capacity
        self.rate = capacity / window_seconds
        self.level = min(self.level, capacity)

    def state(self) -> LimitState:
        """The limit, whole units remaining and seconds until full, as headers report them."""
        return LimitState(
            limit=math.floor(self.capacity),
            remaining=max(0, math.floor(self.level + _EPSILON * max(1.0, self.capacity))),
            reset_seconds=self.time_to_full(),
        )


@dataclass(frozen=True, slots=True)
class LimitState:
    """One rate-limit dimension as a provider reports it in headers."""

    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of asking a key's buckets for one request.

    ``retry_after`` is ``None`` when the request was admitted; otherwise it is the wait until it
    would be, and ``blocked_by`` names the exhausted dimension. ``too_large`` marks a request
    whose tokens exceed the whole per-window limit: waiting never helps it.
    """

    retry_after: float | None
    blocked_by: Dimension | None = None
    too_large: bool = False

    @property
    def admitted(self) -> bool:
        """Whether the request may proceed."""
        return self.retry_after is None and not self.too_large


_ADMITTED = Admission(retry_after=None)


class KeyLimits:
    """The request and token buckets of one API key; either may be absent (unlimited)."""

    __slots__ = ("requests", "served", "tokens")

    def __init__(
        self, rpm: float | None, tpm: float | None, window_seconds: float, now: float
    ) -> None:
        self.requests = None if rpm is None else TokenBucket(rpm, window_seconds, now)
        self.tokens = None if tpm is None else TokenBucket(tpm, window_seconds, now)
        self.served = 0

    def admit(self, tokens: int, now: float) -> Admission:
        """Take one request and ``tokens`` tokens if both are there, else say how long to wait."""
        requests, bucket = self.requests, self.tokens
        wait_requests = wait_tokens = 0.0
        if requests is not None:
            requests.refill(now)
            wait_requests = requests.wait_for(1)
        if bucket is not None:
            bucket.refill(now)
            if tokens > bucket.capacity:
                return Admission(retry_after=None, blocked_by="tokens", too_large=True)
            wait_tokens = bucket.wait_for(tokens)
        if wait_requests > 0 or wait_tokens > 0:
            blocked: Dimension = "requests" if wait_requests >= wait_tokens else "tokens"
            return Admission(retry_after=max(wait_requests, wait_tokens), blocked_by=blocked)
        if requests is not None:
            requests.level -= 1
        if bucket is not None:
            bucket.level -= tokens
        return _ADMITTED

    def charge_tokens(self, tokens: int) -> None:
        """Charge tokens after the fact (output of a request that reserved no maximum)."""
        if self.tokens is not None:
            self.tokens.level -= tokens

    def resize(
        self, rpm: float | None, tpm: float | None, window_seconds: float, now: float
    ) -> None:
        """Apply new limits, keeping what each existing bucket currently holds."""
        self.requests = _resized(self.requests, rpm, window_seconds, now)
        self.tokens = _resized(self.tokens, tpm, window_seconds, now)


def _resized(
    bucket: TokenBucket | None, limit: float | None, window_seconds: float, now: float
) -> TokenBucket | None:
    if limit is None:
        return None
    if bucket is None:
        return TokenBucket(limit, window_seconds, now)
    bucket.resize(limit, window_seconds, now)
    return bucket
