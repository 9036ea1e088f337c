"""A deterministic example value for a JSON Schema, so structured output validates.

It understands what LLM APIs send: JSON Schema (objects, arrays, scalars, ``enum``/``const``,
``$ref`` into ``$defs``/``definitions``, ``anyOf``/``oneOf``/``allOf``, type lists with
``"null"``) and Gemini's OpenAPI subset (upper-case ``type`` names, ``nullable``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["example_for_schema"]

_MAX_DEPTH = 12
_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "duration": "P1D",
}


def example_for_schema(schema: Mapping[str, Any]) -> Any:
    """A value valid for ``schema``, the same every time for the same schema.

    Objects get every listed property (required or not), arrays ``max(minItems, 1)`` items
    (capped by ``maxItems``), strings ``"example"`` (or a value fitting ``enum``, ``format``,
    ``minLength``/``maxLength``), numbers 1 or the nearest value the bounds allow.
    """
    return _Generator(schema).value(schema, depth=0)


class _Generator:
    __slots__ = ("_root",)

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def value(self, schema: Any, *, depth: int) -> Any:
        if not isinstance(schema, Mapping):
            # ``true`` / missing schemas accept anything.
            return "example"
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.value(_first_non_null(branches), depth=depth)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for branch in all_of:
                if isinstance(branch, Mapping):
                    merged.update(self._resolve(branch))
            merged.update({k: v for k, v in schema.items() if k != "allOf"})
            return self.value(merged, depth=depth)
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return _string(schema)
        if kind == "integer":
            return int(_number(schema, integer=True))
        if kind == "number":
            return _number(schema, integer=False)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return "example"

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while isinstance(ref := schema.get("$ref"), str) and seen < 32:
            seen += 1
            target = self._lookup(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if siblings else target
        return schema

    def _lookup(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            return {}
        node: Any = self._root
        for token in ref.lstrip("#").split("/"):
            if not token:
                continue
            token = token.replace("~1", "/").replace("~0", "~")
            node = node.get(token) if isinstance(node, Mapping) else None
        return node if isinstance(node, Mapping) else {}

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        required = schema.get("required")
        required_names = set(required) if isinstance(required, list) else set()
        result: dict[str, Any] = {}
        for name, sub in properties.items():
            # Deep in a recursive schema only what is required keeps the value finite.
            if depth >= _MAX_DEPTH and name not in required_names:
                continue
            result[name] = self.value(sub, depth=depth + 1)
        return result

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        min_items = _int(schema.get("minItems", schema.get("min_items")), 0) or 0
        max_items = _int(schema.get("maxItems", schema.get("max_items")), None)
        count = min_items if depth >= _MAX_DEPTH else max(min_items, 1)
        if max_items is not None:
            count = min(count, max_items)
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        values: list[Any] = []
        for index in range(count):
            if isinstance(prefix, list) and index < len(prefix):
                values.append(self.value(prefix[index], depth=depth + 1))
            else:
                values.append(self.value(items, depth=depth + 1))
        return values


def _first_non_null(branches: list[Any]) -> Any:
    for branch in branches:
        if not (isinstance(branch, Mapping) and _type_of(branch) == "null"):
            return branch
    return branches[0]


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        names = [str(k).lower() for k in kind]
        non_null = [k for k in names if k != "null"]
        return non_null[0] if non_null else "null"
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _int(value: Any, default: int | None) -> int | None:
    # Gemini's schema sends int64 limits as strings.
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    text = _STRING_FORMATS.get(fmt, "example") if isinstance(fmt, str) else "example"
    min_length = _int(schema.get("minLength", schema.get("min_length")), 0) or 0
    max_length = _int(schema.get("maxLength", schema.get("max_length")), None)
    if len(text) < min_length:
        text += "x" * (min_length - len(text))
    if max_length is not None and len(text) > max_length:
        text = text[:max_length]
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> float:
    # 1 rather than 0: constraints such as ``gt=0`` often live only in a description once a
    # provider adapter has simplified the schema, and counts, totals and ids are rarely 0.
    value = 1.0
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")
    exclusive_min = schema.get("exclusiveMinimum")
    exclusive_max = schema.get("exclusiveMaximum")
    step = 1.0 if integer else 0.5
    if isinstance(minimum, int | float) and value < minimum:
        value = float(minimum)
    if isinstance(exclusive_min, int | float) and value <= exclusive_min:
        value = float(exclusive_min) + step
    elif exclusive_min is True and isinstance(minimum, int | float) and value <= minimum:
        value = float(minimum) + step
    if isinstance(maximum, int | float) and value > maximum:
        value = float(maximum)
    if isinstance(exclusive_max, int | float) and value >= exclusive_max:
        value = float(exclusive_max) - step
    elif exclusive_max is True and isinstance(maximum, int | float) and value >= maximum:
        value = float(maximum) - step
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0 and value % multiple:
        value = (value // multiple + 1) * multiple
    if integer:
        value = float(math.ceil(value))
    return value
