"""What makes two runs "the same run": item keys and strategy fingerprints.

An item is found in a store by its id and matches its entry only when the prompt hash and
the strategy fingerprint match too. The fingerprint describes what the strategy calls
(provider, model, generation options), never its code: editing a parser or fixing a typo
in a strategy class must not throw away what was paid for. Strategies describe themselves
with ``checkpoint_identity()``; one without it is known by its class.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["describe_strategy", "fingerprint", "prompt_hash", "stable_value"]

#: Nesting beyond which a value is described by its type only (cycles, huge structures).
_MAX_DEPTH: Final = 8


def prompt_hash(prompt: str) -> str:
    """A short, stable digest of a prompt (hex)."""
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def describe_strategy(strategy: object) -> dict[str, Any]:
    """The JSON-able description of a strategy that its fingerprint is computed from.

    Raises:
        TypeError: ``checkpoint_identity()`` returned something that is not made of
            strings, numbers, booleans, ``None``, lists and dicts with string keys (after
            the conversions `stable_value` makes).
    """
    cls = type(strategy)
    description: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    hook = getattr(strategy, "checkpoint_identity", None)
    identity = hook() if callable(hook) else None
    if identity is not None:
        description["identity"] = stable_value(identity)
    try:
        json.dumps(description, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = (
            f"{cls.__name__}.checkpoint_identity() must return JSON-like data (str, int, "
            f"float, bool, None, lists, dicts with str keys): {exc}"
        )
        raise TypeError(msg) from None
    return description


def fingerprint(description: Mapping[str, Any]) -> str:
    """A short digest of a strategy description (hex)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def stable_value(value: object, depth: int = 0) -> Any:
    """`value` as JSON-like data that is the same in every process.

    Plain data is kept; pydantic models and dataclasses become dicts; enums their value;
    functions and classes their qualified name; any other object its type name. Nothing
    depends on memory addresses or ``repr``, which often includes them.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if depth >= _MAX_DEPTH:
        return _type_name(value)
    if isinstance(value, enum.Enum):
        return stable_value(value.value, depth + 1)
    if isinstance(value, Mapping):
        return {str(key): stable_value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [stable_value(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        items = [stable_value(item, depth + 1) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, bytes):
        return hashlib.blake2b(value, digest_size=16).hexdigest()
    if isinstance(value, type) or callable(value):
        return _qualified_name(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        try:
            return stable_value(model_dump(mode="json"), depth + 1)
        except Exception:  # not a pydantic model after all, or one that cannot dump
            return _type_name(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: stable_value(getattr(value, field.name), depth + 1)
            for field in dataclasses.fields(value)
        }
    return _type_name(value)


def _qualified_name(value: object) -> str:
    target = getattr(value, "__func__", value)  # a bound method: its function
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}" if module else name


def _type_name(value: object) -> str:
    cls = type(value)
    return f"<{cls.__module__}.{cls.__qualname__}>"
