"""Time formats providers use in headers and error bodies."""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = [
    "go_duration",
    "proto_duration",
    "retry_after_headers",
    "rfc3339",
]


def go_duration(seconds: float) -> str:
    """``seconds`` the way OpenAI's ``x-ratelimit-reset-*`` headers write it (Go's duration).

    Examples: ``"0s"``, ``"120ms"``, ``"1s"``, ``"7.66s"``, ``"6m0s"``, ``"1h2m3s"``.
    Rounded up to the millisecond so a client never waits too little.
    """
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def proto_duration(seconds: float) -> str:
    """``seconds`` as a protobuf JSON ``Duration`` (``"39s"``, ``"0.25s"``), rounded up (ms)."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    whole, fraction = divmod(millis, 1000)
    if fraction:
        return f"{whole}.{fraction:03d}".rstrip("0") + "s"
    return f"{whole}s"


def rfc3339(epoch_seconds: float) -> str:
    """An RFC 3339 UTC timestamp with millisecond precision, e.g. ``2024-01-01T00:00:12.500Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up) and the exact ``retry-after-ms``."""
    millis = max(1, math.ceil(seconds * 1000 - 1e-6))
    return {
        "retry-after": str(max(1, math.ceil(millis / 1000))),
        "retry-after-ms": str(millis),
    }
