"""Token usage carried by failed calls, so that failed attempts are counted too."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from async_batch_llm._internal.usage import FAILED_USAGE_ATTR, USAGE_KEYS

__all__ = ["TokenExtractor"]

logger = logging.getLogger(__name__)

_TOKEN_KEYS: Final[tuple[str, ...]] = USAGE_KEYS

#: All four counts at zero; read-only, copy it before filling in.
_EMPTY_USAGE: Final[Mapping[str, int]] = MappingProxyType(dict.fromkeys(_TOKEN_KEYS, 0))

# Attribute names read for each count, in order of preference. Current SDKs (pydantic-ai's
# ``RunUsage``) use ``input_tokens``/``output_tokens``; older usage objects and the package's
# own ``MockUsage`` only have ``request_tokens``/``response_tokens``.
_SOURCE_NAMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "input_tokens": ("input_tokens", "request_tokens"),
        "output_tokens": ("output_tokens", "response_tokens"),
        "total_tokens": ("total_tokens",),
        "cached_input_tokens": ("cached_input_tokens",),
    }
)


class TokenExtractor:
    """Reads the token usage attached to an exception raised by a failed attempt."""

    def extract_from_exception(self, exception: BaseException) -> dict[str, int]:
        """Return a new dict with the tokens ``exception`` reports, zeros when it reports none.

        The result always holds ``input_tokens``, ``output_tokens``, ``total_tokens`` and
        ``cached_input_tokens``. Sources, first match wins:

        1. ``exception.__cause__.result.usage`` (pydantic-ai run errors), a method or a value.
        2. ``exception.usage``, a method or a value.
        3. ``exception._failed_token_usage``, a dict set by the framework or a strategy;
           its integer entries overlay the zeros (extra integer keys are kept).

        An error while reading is logged at DEBUG and gives zeros;
        ``asyncio.CancelledError`` and other ``BaseException`` subclasses propagate.
        """
        try:
            return _extract(exception)
        except Exception as exc:
            logger.debug(
                "Could not read token usage from %s: %r",
                type(exception).__name__,
                exc,
                exc_info=True,
            )
            return dict(_EMPTY_USAGE)

    @staticmethod
    def accumulate(cumulative: dict[str, int], attempt_tokens: Mapping[str, int]) -> None:
        """Add ``attempt_tokens`` into ``cumulative`` in place, missing keys counting as 0."""
        for key in _TOKEN_KEYS:
            cumulative[key] = cumulative.get(key, 0) + attempt_tokens.get(key, 0)


def _extract(exception: BaseException) -> dict[str, int]:
    cause = exception.__cause__
    if cause is not None:
        result = getattr(cause, "result", None)
        if result is not None:
            usage = _resolve(getattr(result, "usage", None))
            if usage is not None:
                return _coerce_usage(usage)

    usage = _resolve(getattr(exception, "usage", None))
    if usage is not None:
        return _coerce_usage(usage)

    attached = getattr(exception, "__dict__", {}).get(FAILED_USAGE_ATTR)
    tokens = dict(_EMPTY_USAGE)
    if isinstance(attached, dict):
        for key, value in attached.items():
            if isinstance(value, int):
                tokens[key] = int(value)
    return tokens


def _resolve(usage: object) -> object:
    # SDKs expose usage either as a method (``result.usage()``) or as a property. Current
    # pydantic-ai usage objects are callable only through a deprecated shim, so an object
    # that already holds counts is used as it is.
    if callable(usage) and not _holds_counts(usage):
        return usage()
    return usage


def _holds_counts(usage: object) -> bool:
    return any(
        isinstance(getattr(usage, name, None), numbers.Number)
        for names in _SOURCE_NAMES.values()
        for name in names
    )


def _coerce_usage(usage: object) -> dict[str, int]:
    """Return the four counts of a usage object (attributes) or mapping (keys)."""
    return {key: _read_count(usage, names) for key, names in _SOURCE_NAMES.items()}


def _read_count(usage: object, names: tuple[str, ...]) -> int:
    # Only numbers count: test doubles such as ``unittest.mock.Mock`` invent any attribute
    # asked for, and ``int(MagicMock())`` is 1.
    for name in names:
        value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        if isinstance(value, numbers.Number):
            return _int(value)
    return 0


def _int(value: Any) -> int:
    """``int(value)``, with 0 for ``None`` and for values that are not whole counts."""
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
