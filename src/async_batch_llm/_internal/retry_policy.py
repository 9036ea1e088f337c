"""How long to wait before retrying a failed attempt.

The policy (which errors wait how long) is ours; the arithmetic of exponential growth, the
cap and the jitter is tenacity's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenacity import RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

if TYPE_CHECKING:
    from async_batch_llm.core.config import RetryConfig
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["RetryPolicy", "is_validation_error"]

_VALIDATION_NAME_MARKERS = ("validation", "parse", "unexpectedmodelbehavior")


def is_validation_error(exc: BaseException, info: ErrorInfo) -> bool:
    """True for errors where the model answered but the answer did not validate.

    Such an attempt is retried at once: waiting does not make a malformed answer less likely.
    """
    name = type(exc).__name__.lower()
    if any(marker in name for marker in _VALIDATION_NAME_MARKERS):
        return True
    if "result validation" in str(exc).lower():
        return True
    return info.error_category == "validation_error"


class RetryPolicy:
    """Backoff for retryable errors: ``initial_wait * exponential_base ** (n - 1)``, capped.

    With ``jitter`` the wait is drawn uniformly from ``[0.5, 1.0)`` of that value ("equal
    jitter"), built from tenacity as half the exponential wait plus a random part of up to
    the other half.
    """

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        half_initial = config.initial_wait / 2
        half_max = config.max_wait / 2
        base = config.exponential_base
        self._wait: wait_base
        if config.jitter:
            self._wait = wait_exponential(
                multiplier=half_initial, max=half_max, exp_base=base
            ) + wait_random_exponential(multiplier=half_initial, max=half_max, exp_base=base)
        else:
            self._wait = wait_exponential(
                multiplier=config.initial_wait, max=config.max_wait, exp_base=base
            )

    def backoff(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure of an item (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = failed_attempts
        return float(self._wait(state))

    def wait_for(self, exc: BaseException, info: ErrorInfo, failed_attempts: int) -> float:
        """The wait before the next attempt: none for validation errors, else `backoff`."""
        if is_validation_error(exc, info):
            return 0.0
        return self.backoff(failed_attempts)
