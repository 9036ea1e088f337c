"""Token-usage arithmetic, and the convention for the tokens of failed calls.

Everything that adds, merges, checks or carries token counts goes through here:

* `UsageNormalizer` turns whatever a strategy returned as usage into a clean `TokenUsage`
  (non-negative integers only), warning once per strategy about what it had to fix;
* `add_usage` / `merged_usage` sum counts;
* a failed call's tokens travel on its exception as ``_failed_token_usage`` (the 0.7.2
  convention that strategies and callers of ``_process_item_with_retries`` rely on):
  `attach_failed_usage` writes it, `failed_usage_of` reads it back cleaned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Final, cast

from async_batch_llm._internal.values import TokenUsage, empty_usage

__all__ = [
    "FAILED_USAGE_ATTR",
    "USAGE_KEYS",
    "UsageNormalizer",
    "add_usage",
    "attach_failed_usage",
    "empty_usage",
    "failed_usage_of",
    "is_clean_usage",
    "merged_usage",
    "total_tokens_of",
    "usage_of_object",
]

logger = logging.getLogger("async_batch_llm.usage")

#: The counts every summary reads.
USAGE_KEYS: Final = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")

#: Attribute of an exception that carries the tokens its failed call(s) used.
FAILED_USAGE_ATTR: Final = "_failed_token_usage"

# Attribute names of usage *objects* (pydantic-ai's RunUsage, older usage records, the
# package's MockUsage) for each count, in order of preference.
_OBJECT_NAMES: Final = {
    "input_tokens": ("input_tokens", "request_tokens"),
    "output_tokens": ("output_tokens", "response_tokens"),
    "total_tokens": ("total_tokens",),
    "cached_input_tokens": ("cache_read_tokens", "cached_input_tokens"),
}


def is_clean_usage(usage: object) -> bool:
    """Whether `usage` is a plain dict whose values are all non-negative ints (bools excluded)."""
    if type(usage) is not dict:
        return False
    # A loop rather than all(...): this runs for every result and a generator costs more.
    for value in usage.values():  # noqa: SIM110
        if type(value) is not int or value < 0:
            return False
    return True


def add_usage(total: dict[str, int], usage: Mapping[str, Any]) -> None:
    """Add the four counts of a clean `usage` into `total` in place (missing counts as 0)."""
    for key in USAGE_KEYS:
        count = usage.get(key)
        if count:
            total[key] = total.get(key, 0) + count


def merged_usage(usage: Mapping[str, Any], earlier: Mapping[str, int]) -> TokenUsage:
    """A new dict: `usage` plus the counts of `earlier` (failed attempts of the same item)."""
    merged: dict[str, Any] = dict(usage)
    add_usage(merged, earlier)
    return cast("TokenUsage", merged)


def total_tokens_of(usage: object) -> int | None:
    """The total a usage dict or count reports (``total_tokens``, else input + output)."""
    if isinstance(usage, bool):
        return None
    if isinstance(usage, int):
        return max(0, usage)
    if not isinstance(usage, Mapping):
        return None
    total = _count(usage.get("total_tokens"))
    if total:
        return total
    parts = [_count(usage.get("input_tokens")), _count(usage.get("output_tokens"))]
    counts = [part for part in parts if part is not None]
    return sum(counts) if counts else None


def attach_failed_usage(exc: BaseException, usage: Mapping[str, int]) -> None:
    """Record an item's summed tokens on the exception it fails with (if it can hold them)."""
    attributes = getattr(exc, "__dict__", None)
    if isinstance(attributes, dict):
        attributes[FAILED_USAGE_ATTR] = dict(usage)


def failed_usage_of(exc: BaseException) -> TokenUsage:
    """The clean usage recorded on `exc` by `attach_failed_usage` or a strategy, else ``{}``."""
    attributes = getattr(exc, "__dict__", None)
    usage = attributes.get(FAILED_USAGE_ATTR) if isinstance(attributes, dict) else None
    if not isinstance(usage, Mapping):
        return {}
    clean, _ = _clean_mapping(usage)
    return clean


class UsageNormalizer:
    """Turns the usage a strategy reported into a clean `TokenUsage`, never raising.

    Values that are not non-negative integers are coerced where the meaning is plain
    (``None`` -> 0, ``3.0`` -> 3, ``"10"`` -> 10) and dropped otherwise (negative numbers,
    booleans, other types). A usage *object* (such as pydantic-ai's ``RunUsage``) is read by
    its attributes; anything else counts as no usage. Each strategy instance gets one
    WARNING, naming it, the first time its usage needed fixing.
    """

    def __init__(self) -> None:
        self._warned: set[int] = set()

    def normalize(self, usage: object, strategy: object, source: str | None = None) -> TokenUsage:
        """Return `usage` itself when it is clean, else a cleaned copy.

        Args:
            usage: What was reported.
            strategy: Who reported it; the WARNING is logged once per object.
            source: How the WARNING names the reporter (default: the strategy's class).
        """
        if is_clean_usage(usage):
            return cast("TokenUsage", usage)
        if isinstance(usage, Mapping):
            clean, problems = _clean_mapping(usage)
        elif usage is None:
            clean, problems = empty_usage(), ["no usage (None)"]
        elif isinstance(usage, str | bytes | int | float | list | tuple):
            clean = empty_usage()
            problems = [f"a {type(usage).__name__} instead of a dict ({usage!r:.40})"]
        else:
            clean = usage_of_object(usage)
            problems = [f"a {type(usage).__name__} object instead of a dict"]
        self._warn_once(strategy, source, problems)
        return clean

    def _warn_once(self, strategy: object, source: str | None, problems: list[str]) -> None:
        key = id(strategy)
        if not problems or key in self._warned:
            return
        self._warned.add(key)
        logger.warning(
            "%s reported malformed token usage (%s); counted what was unambiguous. "
            "Return usage as a dict of non-negative ints, e.g. "
            "{'input_tokens': 10, 'output_tokens': 5, 'total_tokens': 15}. "
            "Further problems of this kind are not logged.",
            source or f"Strategy {type(strategy).__name__}",
            "; ".join(problems[:4]),
        )


def _clean_mapping(usage: Mapping[Any, Any]) -> tuple[TokenUsage, list[str]]:
    clean: dict[str, int] = {}
    problems: list[str] = []
    for key, value in usage.items():
        if not isinstance(key, str):
            problems.append(f"key {key!r} is not a string")
            continue
        count = _count(value)
        if count is None:
            problems.append(f"{key}={value!r:.40} dropped")
            continue
        if type(value) is not int:
            problems.append(f"{key}={value!r:.40} read as {count}")
        clean[key] = count
    return cast("TokenUsage", clean), problems


def _count(value: object) -> int | None:
    """`value` as a token count, or ``None`` when it cannot be read as one."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value) if value >= 0 else None
    if isinstance(value, float):
        if math.isfinite(value) and value >= 0 and value.is_integer():
            return int(value)
        return None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isascii() and text.isdigit() else None
    return None


def usage_of_object(usage: object) -> TokenUsage:
    """The counts of a usage *object* (pydantic-ai's ``RunUsage``, older usage records).

    Reads ``input_tokens`` (else ``request_tokens``), ``output_tokens`` (else
    ``response_tokens``), ``total_tokens`` (else their sum) and ``cache_read_tokens`` /
    ``cached_input_tokens`` (only when non-zero). Only real numbers count: test doubles such
    as ``unittest.mock.Mock`` invent any attribute asked for.
    """
    if not usage:
        return empty_usage()
    counts: dict[str, int] = {}
    for key, names in _OBJECT_NAMES.items():
        for name in names:
            try:
                value = getattr(usage, name, None)
            except Exception:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                count = _count(value)
                if count is not None:
                    counts[key] = count
                    break
    input_tokens = counts.get("input_tokens", 0)
    output_tokens = counts.get("output_tokens", 0)
    tokens: TokenUsage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": counts.get("total_tokens", input_tokens + output_tokens),
    }
    cached = counts.get("cached_input_tokens", 0)
    if cached:
        tokens["cached_input_tokens"] = cached
    return tokens
