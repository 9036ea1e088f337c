"""Deterministic token estimates and text helpers shared by the wire formats."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["count_text_chars", "estimate_tokens", "json_object_or_none", "text_of_parts"]

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of text: about four characters a token, at least one."""
    return max(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


# Values of these keys are message structure (``"role": "user"``), not text the model reads.
_STRUCTURAL_KEYS = frozenset({"role", "type", "mimeType", "mime_type"})


def count_text_chars(*values: Any) -> int:
    """Characters of the strings inside ``values`` (nested dicts and lists).

    Keys, and the values of structural keys such as ``role`` and ``type``, are not counted.
    """
    total = 0
    stack: list[Any] = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, Mapping):
            stack.extend(v for k, v in value.items() if k not in _STRUCTURAL_KEYS)
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return total


def text_of_parts(parts: Iterable[Any], *, key: str = "text") -> str:
    """Join the ``key`` strings of content parts (OpenAI/Anthropic blocks, Gemini parts)."""
    texts = [
        part[key] for part in parts if isinstance(part, Mapping) and isinstance(part.get(key), str)
    ]
    return "\n".join(texts)


def json_object_or_none(text: str) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object, or ``None`` when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
