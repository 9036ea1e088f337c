"""What a provider's response headers say about its rate limits.

Recognised headers (names are case-insensitive):

* OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go durations
  such as ``"1s"``, ``"6m0s"``, ``"120ms"`` or ``"1h2m3.5s"``.
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}``; resets are RFC 3339 timestamps. The ``tokens`` group is the most
  restrictive token limit in effect, so it is preferred; without it the tighter of the input
  and output groups is used.
* Any provider: ``retry-after-ms`` (milliseconds), then ``retry-after`` (seconds or an HTTP date).

Gemini sends none of these; its 429 carries a ``RetryInfo`` in the body instead (see
``_internal/retry_hints``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import httpx2

__all__ = ["LimitObservation", "parse_rate_limit_headers"]

# One Go duration component: a number and its unit ("1h", "2m", "3.5s", "120ms").
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# A bare number this large is a Unix timestamp, not a number of seconds (2001-09-09 onwards).
_EPOCH_THRESHOLD: Final = 1e9


@dataclass(frozen=True, slots=True)
class LimitObservation:
    """The rate-limit state one response reported; ``None`` where it said nothing.

    Attributes:
        limit_requests: Requests allowed per window.
        remaining_requests: Requests left in the window when the response was produced.
        reset_requests_s: Seconds until the request budget is full again.
        limit_tokens: Tokens allowed per window.
        remaining_tokens: Tokens left when the response was produced.
        reset_tokens_s: Seconds until the token budget is full again.
        retry_after_s: Seconds the server asked to wait before retrying.
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def is_empty(self) -> bool:
        """Whether the response carried no rate-limit information at all."""
        return self == _EMPTY

    def share(self, processes: int) -> LimitObservation:
        """What one of `processes` sharing the key may take from it: an equal share of the
        limits, and nothing about what remains (the others' calls, which this process does
        not count, used part of it)."""

        def part(value: float | None) -> float | None:
            return None if value is None else value / processes

        return replace(
            self,
            limit_requests=part(self.limit_requests),
            remaining_requests=None,
            limit_tokens=part(self.limit_tokens),
            remaining_tokens=None,
        )


_EMPTY: Final = LimitObservation()


def parse_rate_limit_headers(
    headers: Mapping[str, str] | httpx2.Headers | None, *, now: float
) -> LimitObservation:
    """Read the rate-limit headers of one response.

    Malformed, negative or non-finite values are treated as absent; this never raises.

    Args:
        headers: The response headers (any mapping; names are matched case-insensitively).
        now: The current wall-clock time in Unix seconds, to turn timestamps (RFC 3339 resets,
            HTTP-date ``retry-after``) into seconds from now.
    """
    fields = _lowercase(headers)
    if not fields:
        return _EMPTY
    try:
        return _observation(fields, now)
    except Exception:
        # Only an unforeseen value shape gets here; no information beats a failed request.
        return _EMPTY


def _observation(fields: Mapping[str, str], now: float) -> LimitObservation:
    requests = _group(fields, "requests", now)
    tokens = _token_group(fields, now)
    return LimitObservation(
        limit_requests=requests[0],
        remaining_requests=requests[1],
        reset_requests_s=requests[2],
        limit_tokens=tokens[0],
        remaining_tokens=tokens[1],
        reset_tokens_s=tokens[2],
        retry_after_s=_retry_after(fields, now),
    )


_Group = tuple[float | None, float | None, float | None]


def _lowercase(headers: object) -> dict[str, str]:
    items = getattr(headers, "items", None)
    if not callable(items):
        return {}
    fields: dict[str, str] = {}
    try:
        pairs: Iterable[tuple[object, object]] = items()
        for key, value in pairs:
            key_text, value_text = _text(key), _text(value)
            if key_text is not None and value_text is not None:
                fields[key_text.strip().lower()] = value_text.strip()
    except Exception:
        # A header container that fails half-way: use what was read.
        return fields
    return fields


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _group(fields: Mapping[str, str], dimension: str, now: float) -> _Group:
    """(limit, remaining, reset seconds) of ``dimension`` in OpenAI or Anthropic form."""
    openai = (
        _count(fields.get(f"x-ratelimit-limit-{dimension}")),
        _count(fields.get(f"x-ratelimit-remaining-{dimension}")),
        _seconds_until_reset(fields.get(f"x-ratelimit-reset-{dimension}"), now),
    )
    if openai != (None, None, None):
        return openai
    prefix = f"anthropic-ratelimit-{dimension}"
    return (
        _count(fields.get(f"{prefix}-limit")),
        _count(fields.get(f"{prefix}-remaining")),
        _seconds_until_reset(fields.get(f"{prefix}-reset"), now),
    )


def _token_group(fields: Mapping[str, str], now: float) -> _Group:
    combined = _group(fields, "tokens", now)
    if combined != (None, None, None):
        return combined
    candidates = [
        group
        for group in (_group(fields, "input-tokens", now), _group(fields, "output-tokens", now))
        if group != (None, None, None)
    ]
    if not candidates:
        return (None, None, None)
    # The tighter group runs out first: fewer tokens remaining, or a lower limit.
    return min(candidates, key=lambda group: (_or_inf(group[1]), _or_inf(group[0])))


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _count(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _seconds_until_reset(text: str | None, now: float) -> float | None:
    """A reset as seconds from ``now``: a Go duration, a number of seconds, or a timestamp."""
    if not text:
        return None
    duration = _go_duration(text)
    if duration is not None:
        return duration
    number = _count(text)
    if number is not None:
        return max(0.0, number - now) if number >= _EPOCH_THRESHOLD else number
    return _seconds_until_timestamp(text, now)


def _go_duration(text: str) -> float | None:
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text) or not math.isfinite(total):
        return None
    return total


def _seconds_until_timestamp(text: str, now: float) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            # Providers send UTC; a timestamp without an offset is read as UTC too.
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp() - now)
    except (ValueError, OverflowError, OSError):
        return None


def _retry_after(fields: Mapping[str, str], now: float) -> float | None:
    milliseconds = _count(fields.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    text = fields.get("retry-after")
    if not text:
        return None
    seconds = _count(text)
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        # HTTP dates are always GMT; "-0000" parses as naive.
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)
