"""An error classifier tuned for Google Gemini (google-genai) and pydantic-ai errors.

Unlike `DefaultErrorClassifier`, it reads the HTTP status of
google-genai's ``APIError`` (and pydantic-ai's ``ModelHTTPError``) before the message, so a
400 is permanent even when its text mentions a quota, and a 5xx is retried.
"""

from __future__ import annotations

from typing import Final

from async_batch_llm._internal.optional import loaded
from async_batch_llm._internal.quota import QUOTA_EXHAUSTED_CATEGORY, is_quota_exhausted
from async_batch_llm._internal.retry_hints import retry_after_seconds
from async_batch_llm.strategies.errors import (
    CallInterruptedError,
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    HookTimeoutError,
    error_info,
    unwrap_token_tracking,
)

__all__ = [
    "GeminiErrorClassifier",
    "RATE_LIMIT_PATTERNS",
    "TIMEOUT_PATTERNS",
    "DEFAULT_RATE_LIMIT_WAIT",
]

#: Lower-case substrings that mark an error message as a rate limit.
RATE_LIMIT_PATTERNS: Final[tuple[str, ...]] = ("429", "resource_exhausted", "quota", "rate limit")

#: Lower-case substrings that mark an error message as a timeout.
TIMEOUT_PATTERNS: Final[tuple[str, ...]] = ("timeout", "504", "deadline")

#: Seconds suggested as the wait after a rate limit without a server hint.
DEFAULT_RATE_LIMIT_WAIT: Final[float] = 300.0

_HTTP_TOO_MANY_REQUESTS: Final = 429
_HTTP_REQUEST_TIMEOUT: Final = 408


def _matches_any_pattern(error_str: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``error_str`` contains any of ``patterns`` (case-insensitive)."""
    lowered = error_str.lower()
    return any(pattern.lower() in lowered for pattern in patterns)


def _http_status(exception: Exception) -> int | None:
    """The HTTP status of a google-genai or pydantic-ai HTTP error, else ``None``."""
    # Loaded only if the SDK was: an error of a library nobody imported cannot exist.
    genai_error = loaded("google.genai.errors", "APIError")
    http_error = loaded("pydantic_ai.exceptions", "ModelHTTPError")
    if genai_error is not None and isinstance(exception, genai_error):
        code: object = exception.code
    elif http_error is not None and isinstance(exception, http_error):
        code = exception.status_code
    else:
        return None
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    return code


def _message_of(exception: BaseException) -> str:
    # A broken ``__str__`` must not turn classification into a second failure.
    try:
        return str(exception)
    except Exception:
        return ""


class GeminiErrorClassifier(ErrorClassifier):
    """Classifies Gemini errors; the first matching rule wins.

    1. `FrameworkTimeoutError`: retryable, ``framework_timeout``; `HookTimeoutError`
       (e.g. a ``dry_run()`` over its bound): retryable, ``hook_timeout``.
    2. A hard quota used up (a per-day Gemini quota, OpenAI ``insufficient_quota``):
       permanent, ``quota_exhausted``, not a rate limit (a cooldown would not help).
    3. An HTTP error with a status (google-genai ``APIError.code``, pydantic-ai
       ``ModelHTTPError.status_code``): 429 is a rate limit; 408 and 5xx are retryable
       (``server_timeout`` for 504 or a deadline message, else ``server_error``/``timeout``);
       any other 4xx is permanent (``client_error``).
    4. pydantic-ai ``UnexpectedModelBehavior`` (e.g. output that failed validation after the
       agent's own output retries): retryable at once, ``validation_error``.
    5. A rate-limit phrase (`RATE_LIMIT_PATTERNS`) in the message: rate limit.
    6. A timeout phrase (`TIMEOUT_PATTERNS`) in the message: retryable, ``timeout``.
    7. Anything else as `DefaultErrorClassifier`.

    Rate limits are reported with ``is_retryable=False``: the processor still retries them
    after the shared cooldown, without spending one of ``retry.max_attempts``.
    ``suggested_wait`` is the server's retry hint when the error carries one (``Retry-After``
    header, Gemini ``RetryInfo``), else `DEFAULT_RATE_LIMIT_WAIT`.
    """

    def __init__(self) -> None:
        self._fallback = DefaultErrorClassifier()

    def classify(self, exception: Exception) -> ErrorInfo:
        """Return how ``exception`` should be handled, by the rules in the class docstring."""
        exception = unwrap_token_tracking(exception)
        if isinstance(exception, FrameworkTimeoutError):
            return error_info("framework_timeout", retryable=True, timeout=True)
        if isinstance(exception, HookTimeoutError):
            return error_info("hook_timeout", retryable=True, timeout=True)
        if isinstance(exception, CallInterruptedError):
            return error_info("interrupted", retryable=exception.is_stray_cancellation)
        if is_quota_exhausted(exception):
            return error_info(QUOTA_EXHAUSTED_CATEGORY, retryable=False)
        msg = _message_of(exception)
        status = _http_status(exception)
        if status is not None:
            info = self._classify_status(exception, status, msg)
            if info is not None:
                return info
        unexpected = loaded("pydantic_ai.exceptions", "UnexpectedModelBehavior")
        if unexpected is not None and isinstance(exception, unexpected):
            return error_info("validation_error", retryable=True)
        if _matches_any_pattern(msg, RATE_LIMIT_PATTERNS):
            return self._rate_limit(exception)
        if _matches_any_pattern(msg, TIMEOUT_PATTERNS):
            return error_info("timeout", retryable=True, timeout=True)
        return self._fallback.classify(exception)

    def _classify_status(self, exception: Exception, status: int, msg: str) -> ErrorInfo | None:
        if status == _HTTP_TOO_MANY_REQUESTS:
            return self._rate_limit(exception)
        if status == _HTTP_REQUEST_TIMEOUT:
            return error_info("timeout", retryable=True, timeout=True)
        if 500 <= status < 600:
            timed_out = _matches_any_pattern(msg, TIMEOUT_PATTERNS)
            category = "server_timeout" if timed_out else "server_error"
            return error_info(category, retryable=True, timeout=timed_out)
        if 400 <= status < 500:
            return error_info("client_error", retryable=False)
        # Not an HTTP error status (e.g. a websocket close code): judge by the message.
        return None

    @staticmethod
    def _rate_limit(exception: Exception) -> ErrorInfo:
        hint = retry_after_seconds(exception)
        wait = DEFAULT_RATE_LIMIT_WAIT if hint is None else hint
        return error_info("rate_limit", retryable=False, rate_limit=True, suggested_wait=wait)
