"""How an admitted call ended, and the permit it is reported on (see `admission`)."""

from __future__ import annotations

import enum
from typing import Final, Protocol

__all__ = ["SUCCEEDED", "Outcome", "Permit"]


class Outcome(enum.Enum):
    """How an admitted call ended."""

    SUCCEEDED = "succeeded"
    """It returned; the detail is its token usage."""
    FAILED = "failed"
    """It raised an error that is not a rate limit; the detail is the exception."""
    RATE_LIMITED = "rate_limited"
    """The provider rejected it with a rate limit; the detail is the exception."""
    QUOTA_EXHAUSTED = "quota_exhausted"
    """The provider's hard quota is used up; the detail is the exception."""
    RELEASED = "released"
    """It was not made, or ended without an outcome to learn from (cancelled, skipped)."""


#: `Outcome.SUCCEEDED`, for the paths that run for every call: on Python 3.11 reading an
#: enum member through its class costs about as much as the rest of settling a permit.
SUCCEEDED: Final = Outcome.SUCCEEDED


class Permit(Protocol):
    """Leave to make one call; hand it back with the outcome."""

    def settle(self, outcome: Outcome, detail: object = None) -> None:
        """Report how the call ended; later calls are ignored."""

    def describe(self) -> dict[str, object] | None:
        """What events about this call should say about the limit it went through."""
