"""The server's "retry after" hint carried by a rate-limit exception.

Providers say how long to back off in different places: an HTTP ``retry-after-ms`` or
``retry-after`` header (OpenAI, Anthropic, most HTTP APIs), or a ``google.rpc.RetryInfo``
entry in the JSON error body (Gemini). SDKs expose them on the exception they raise, or on
an exception further down its ``__cause__``/``__context__`` chain when a framework such as
pydantic-ai wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from async_batch_llm._internal.exception_chain import exception_chain

__all__ = ["response_headers", "retry_after_seconds"]


def retry_after_seconds(exc: BaseException, *, now: datetime | None = None) -> float | None:
    """Return the seconds the server asked to wait before retrying, or ``None`` without a hint.

    ``exc`` and the exceptions it was raised from (``__cause__``, then ``__context__``) are
    searched outermost first; for each, the sources are, in order:

    1. a numeric ``retry_after`` attribute (seconds);
    2. HTTP headers at ``exc.headers`` or ``exc.response.headers``: ``retry-after-ms``
       (milliseconds), then ``retry-after`` (seconds, or an HTTP date);
    3. a Google ``RetryInfo.retryDelay`` in the error body at ``exc.details`` (google-genai's
       ``APIError``) or ``exc.body``.

    Malformed or negative values are ignored; a date in the past gives ``0.0``. Never raises
    for a malformed exception.

    Args:
        exc: The exception raised by the rate-limited call.
        now: The current time for HTTP-date hints; defaults to the system clock.
    """
    for candidate in exception_chain(exc):
        hint = _hint_of(candidate, now)
        if hint is not None:
            return hint
    return None


def response_headers(exc: BaseException) -> Any | None:
    """The HTTP headers of the response `exc` (or an error it was raised from) came with.

    Looks at ``exc.response.headers`` (openai, anthropic, httpx errors) and ``exc.headers``;
    ``None`` when no exception in the chain carries any.
    """
    for candidate in exception_chain(exc):
        try:
            sources = _header_sources(candidate)
        except Exception:
            continue
        for headers in sources:
            if callable(getattr(headers, "get", None)):
                return headers
    return None


def _hint_of(exc: BaseException, now: datetime | None) -> float | None:
    for source in (_from_attribute, _from_headers, _from_error_body):
        try:
            hint = source(exc, now)
        except Exception:
            # A property that raises, or a value of an unexpected shape: not a usable hint.
            continue
        if hint is not None:
            return hint
    return None


def _from_attribute(exc: BaseException, now: datetime | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, timedelta):
        return _non_negative(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return _non_negative(float(value))


def _from_headers(exc: BaseException, now: datetime | None) -> float | None:
    for headers in _header_sources(exc):
        milliseconds = _parse_number(_header(headers, "retry-after-ms"))
        if milliseconds is not None:
            return milliseconds / 1000.0
        retry_after = _header(headers, "retry-after")
        if retry_after is None:
            continue
        seconds = _parse_number(retry_after)
        if seconds is None:
            seconds = _seconds_until(retry_after, now)
        if seconds is not None:
            return seconds
    return None


def _header_sources(exc: BaseException) -> list[Any]:
    sources = [getattr(exc, "headers", None)]
    response = getattr(exc, "response", None)
    if response is not None:
        sources.append(getattr(response, "headers", None))
    return [headers for headers in sources if headers is not None]


def _header(headers: Any, name: str) -> str | None:
    # ``get`` is case-insensitive on real header containers (httpx.Headers,
    # email.message.Message); a plain dict needs the scan over its keys.
    value = _text(headers.get(name))
    if value is not None:
        return value
    if not callable(getattr(headers, "items", None)):
        return None
    for key, candidate in headers.items():
        key_text = _text(key)
        if key_text is not None and key_text.lower() == name:
            return _text(candidate)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    return None


def _parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return _non_negative(float(text.strip()))
    except ValueError:
        return None


def _seconds_until(http_date: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    return max(0.0, (when - current).total_seconds())


def _from_error_body(exc: BaseException, now: datetime | None) -> float | None:
    for attribute in ("details", "body"):
        hint = _retry_delay_in(getattr(exc, attribute, None))
        if hint is not None:
            return hint
    return None


def _retry_delay_in(body: object) -> float | None:
    # Accepted shapes: the whole body ``{"error": {...}}``, the inner error object, or a
    # list of either (some Google endpoints wrap the body in a one-element array).
    if isinstance(body, list | tuple):
        for element in body:
            hint = _retry_delay_in(element)
            if hint is not None:
                return hint
        return None
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        body = error
    details = body.get("details")
    if not isinstance(details, list | tuple):
        return None
    for detail in details:
        if isinstance(detail, Mapping) and "retryDelay" in detail:
            hint = _parse_duration(detail["retryDelay"])
            if hint is not None:
                return hint
    return None


def _parse_duration(value: object) -> float | None:
    """Seconds of a protobuf ``Duration`` in JSON form ("12s", "1.5s") or as a dict."""
    if isinstance(value, str):
        text = value.strip()
        text = text.removesuffix("s")
        try:
            return _non_negative(float(text))
        except ValueError:
            return None
    if isinstance(value, Mapping):
        if "seconds" not in value and "nanos" not in value:
            return None
        try:
            seconds = float(value.get("seconds", 0) or 0)
            nanos = float(value.get("nanos", 0) or 0)
        except (TypeError, ValueError):
            return None
        return _non_negative(seconds + nanos / 1e9)
    return None


def _non_negative(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
