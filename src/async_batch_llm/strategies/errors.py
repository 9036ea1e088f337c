"""Framework exceptions and error classification.

Exceptions raised by the framework itself:

```text
Exception
├── TokenTrackingError        a failure that still cost tokens (carries the usage)
└── CallInterruptedError      a call ended with a BaseException that is not an error
TimeoutError
├── FrameworkTimeoutError     the framework's own per-attempt deadline expired
└── HookTimeoutError          a user hook (middleware, prepare, ...) overran its bound
```

An `ErrorClassifier` turns any exception raised by a strategy into an `ErrorInfo` that
tells the processor whether to retry, cool down, or give up. A `TokenTrackingError` is
transparent to classification: it is classified as the error it was raised from.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from async_batch_llm._internal.quota import QUOTA_EXHAUSTED_CATEGORY, is_quota_exhausted
from async_batch_llm._internal.values import TokenUsage

__all__ = [
    "TokenTrackingError",
    "FrameworkTimeoutError",
    "HookTimeoutError",
    "CallInterruptedError",
    "ErrorInfo",
    "ErrorClassifier",
    "DefaultErrorClassifier",
    "RATE_LIMIT_PATTERNS",
    "DEFAULT_RATE_LIMIT_WAIT",
]

#: Lower-case substrings that mark an error message as a rate limit.
RATE_LIMIT_PATTERNS: Final[tuple[str, ...]] = ("429", "resource_exhausted", "quota", "rate limit")

#: Seconds suggested as the wait after a rate limit (``ErrorInfo.suggested_wait``).
DEFAULT_RATE_LIMIT_WAIT: Final[float] = 300.0

# Exception types that signal a bug in the caller's code: retrying cannot fix them.
_LOGIC_ERROR_TYPES: Final[tuple[type[Exception], ...]] = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    NameError,
    ZeroDivisionError,
    AssertionError,
)


class TokenTrackingError(Exception):
    """A failed call that still consumed tokens.

    Strategies raise it (chained ``from`` the original error) so that the tokens spent on
    a failed attempt are counted in the item's usage.

    Args:
        message: The error message; ``str(error) == message``.
        token_usage: Tokens consumed by the failed call; ``{}`` when not given.
    """

    def __init__(
        self, message: str, *, token_usage: TokenUsage | dict[str, int] | None = None
    ) -> None:
        super().__init__(message)
        self._failed_token_usage: TokenUsage | dict[str, int] = token_usage or {}

    @property
    def token_usage(self) -> TokenUsage | dict[str, int]:
        """Tokens consumed by the failed call."""
        return self._failed_token_usage

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructor takes keyword-only arguments, which the default exception
        # pickling (``cls(*args)``) cannot pass; the state dict carries any extra attributes.
        rebuild = functools.partial(type(self), token_usage=self._failed_token_usage)
        return (rebuild, self.args, dict(self.__dict__))


class FrameworkTimeoutError(TimeoutError):
    """The framework's per-attempt deadline (``ProcessorConfig.timeout_per_item``) expired.

    Distinguishes the framework's own timeout from a ``TimeoutError`` raised by a provider.

    Args:
        message: The error message.
        item_id: The work item whose attempt timed out.
        elapsed: Seconds the attempt ran before it was stopped.
        timeout_limit: The deadline in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        item_id: str | None = None,
        elapsed: float | None = None,
        timeout_limit: float | None = None,
    ) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.elapsed = elapsed
        self.timeout_limit = timeout_limit

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = functools.partial(
            type(self),
            item_id=self.item_id,
            elapsed=self.elapsed,
            timeout_limit=self.timeout_limit,
        )
        return (rebuild, self.args, dict(self.__dict__))


class HookTimeoutError(TimeoutError):
    """A user hook did not finish within its time bound (see `ProcessorConfig`).

    Raised for ``prepare()`` (the item fails), and used in the logs for middleware hooks,
    ``on_error``, ``cleanup()``, post-processors and observers, whose overrun is treated
    like an exception they raised.

    Args:
        message: The error message.
        hook: What overran, e.g. ``"prepare() of MyStrategy"``.
        timeout: The bound in seconds.
        abandoned: Whether the hook ignored its cancellation and was left running.
    """

    def __init__(
        self,
        message: str,
        *,
        hook: str | None = None,
        timeout: float | None = None,
        abandoned: bool = False,
    ) -> None:
        super().__init__(message)
        self.hook = hook
        self.timeout = timeout
        self.abandoned = abandoned

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = functools.partial(
            type(self), hook=self.hook, timeout=self.timeout, abandoned=self.abandoned
        )
        return (rebuild, self.args, dict(self.__dict__))


class CallInterruptedError(Exception):
    """A strategy call or hook ended with a `BaseException` that is not an error.

    Either a ``CancelledError`` that did not come from cancelling the batch (some SDKs leak
    them from their own timeouts), or a custom `BaseException` subclass. Either fails only
    the attempt it came from: a stray cancellation is retried, anything else is permanent.
    `KeyboardInterrupt`, `SystemExit` and the batch's own cancellation are never turned
    into this error; they propagate.

    Args:
        message: The error message.
        interruption: The `BaseException` that ended the call (also the ``__cause__``).
    """

    def __init__(self, message: str, *, interruption: BaseException | None = None) -> None:
        super().__init__(message)
        self.interruption = interruption

    @property
    def is_stray_cancellation(self) -> bool:
        """Whether the call ended with a ``CancelledError`` nobody asked for."""
        return isinstance(self.interruption, asyncio.CancelledError)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args, dict(self.__dict__))


def unwrap_token_tracking(exception: Exception) -> Exception:
    """The error a `TokenTrackingError` was raised from (itself when it has none)."""
    current = exception
    # A wrapper of a wrapper is still the original error underneath.
    for _ in range(8):
        cause = current.__cause__
        # The exact type: a subclass is an error type of its own, classified as itself.
        if type(current) is not TokenTrackingError or not isinstance(cause, Exception):
            break
        current = cause
    return current


@dataclass
class ErrorInfo:
    """How the processor should treat one error.

    Attributes:
        is_retryable: Whether another attempt may succeed.
        is_rate_limit: Whether the error is a rate limit (triggers the shared cooldown).
        is_timeout: Whether the error is a timeout.
        error_category: A short label such as ``"rate_limit"`` or ``"logic_error"``.
        suggested_wait: Seconds to wait before retrying, when the classifier has a view.
    """

    is_retryable: bool
    is_rate_limit: bool
    is_timeout: bool
    error_category: str
    suggested_wait: float | None = None


def error_info(
    category: str,
    *,
    retryable: bool,
    rate_limit: bool = False,
    timeout: bool = False,
    suggested_wait: float | None = None,
) -> ErrorInfo:
    """An `ErrorInfo` written as one row of a classifier's rule table."""
    return ErrorInfo(
        is_retryable=retryable,
        is_rate_limit=rate_limit,
        is_timeout=timeout,
        error_category=category,
        suggested_wait=suggested_wait,
    )


class ErrorClassifier(ABC):
    """Decides how the processor treats an exception raised by a strategy.

    ``classify`` is called several times for one error, so it must be pure and
    deterministic.
    """

    @abstractmethod
    def classify(self, exception: Exception) -> ErrorInfo:
        """Return how ``exception`` should be handled."""


class DefaultErrorClassifier(ErrorClassifier):
    """A provider-neutral classifier; the first matching rule wins.

    A `TokenTrackingError` is classified as the error it was raised from.

    1. `FrameworkTimeoutError`: retryable framework timeout.
    2. `HookTimeoutError` (e.g. a ``dry_run()`` over its bound): retryable,
       ``hook_timeout``.
    3. `CallInterruptedError`: a stray cancellation is retryable (``"interrupted"``),
       anything else permanent.
    4. A used-up hard quota (a per-day Gemini quota, OpenAI ``insufficient_quota``):
       permanent, ``quota_exhausted``, not a rate limit (a cooldown would not help).
    5. A rate-limit phrase (`RATE_LIMIT_PATTERNS`) in the message: rate limit.
    6. ``TimeoutError`` or ``"timeout"`` in the message: retryable API timeout.
    7. ``ConnectionError`` or ``"connection"`` in the message: retryable connection error.
    8. ``pydantic.ValidationError``: retryable validation error.
    9. ``ValueError``, ``TypeError`` and other bug-like types: permanent logic error.
    10. Anything else: retryable, category ``"unknown"``.
    """

    def classify(self, exception: Exception) -> ErrorInfo:
        """Return how `exception` should be handled, by the rules in the class docstring."""
        exception = unwrap_token_tracking(exception)
        # The framework's own errors first: their messages quote item ids, which may
        # contain anything (an item called "quota-7" must not make its timeout a rate limit).
        if isinstance(exception, FrameworkTimeoutError):
            return error_info("framework_timeout", retryable=True, timeout=True)
        if isinstance(exception, HookTimeoutError):
            return error_info("hook_timeout", retryable=True, timeout=True)
        if isinstance(exception, CallInterruptedError):
            return error_info("interrupted", retryable=exception.is_stray_cancellation)
        if is_quota_exhausted(exception):
            return error_info(QUOTA_EXHAUSTED_CATEGORY, retryable=False)
        msg = _message_of(exception).lower()
        if self._matches_rate_limit(msg):
            wait = DEFAULT_RATE_LIMIT_WAIT
            return error_info("rate_limit", retryable=True, rate_limit=True, suggested_wait=wait)
        if isinstance(exception, TimeoutError) or "timeout" in msg:
            return error_info("api_timeout", retryable=True, timeout=True)
        if isinstance(exception, ConnectionError) or "connection" in msg:
            return error_info("connection_error", retryable=True)
        # Checked before the logic-error types: pydantic's ValidationError is a ValueError.
        if isinstance(exception, ValidationError):
            return error_info("validation_error", retryable=True)
        if isinstance(exception, _LOGIC_ERROR_TYPES):
            return error_info("logic_error", retryable=False)
        return error_info("unknown", retryable=True)

    @staticmethod
    def _matches_rate_limit(error_str: str) -> bool:
        """Whether ``error_str`` contains a rate-limit phrase (case-insensitive)."""
        lowered = error_str.lower()
        return any(pattern in lowered for pattern in RATE_LIMIT_PATTERNS)


def _message_of(exception: BaseException) -> str:
    # A broken ``__str__`` must not turn classification into a second failure; the type
    # rules still apply to such an exception.
    try:
        return str(exception)
    except Exception:
        return ""
