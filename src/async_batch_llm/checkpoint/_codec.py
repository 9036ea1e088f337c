"""How an item's output is stored: readable where possible, pickled only as a last resort.

Text and plain JSON data are stored as they are (a store can be inspected with any SQLite
tool); pydantic models as their JSON with the class's import path, validated again on
replay; anything else with pickle. An output none of these can store is not replayed:
the item runs again next time, and a warning names the type once.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
from typing import Any, Final

__all__ = ["UNSTORABLE", "decode_output", "encode_output"]

logger = logging.getLogger(__name__)

#: Codec names.
TEXT: Final = "text"
JSON: Final = "json"
PYDANTIC: Final = "pydantic:"
PICKLE: Final = "pickle"

#: Marker returned by `decode_output` when a stored output cannot be rebuilt.
UNSTORABLE: Final = object()

_PLAIN_TYPES: Final = (dict, list, int, float, bool, type(None))
_warned_types: set[str] = set()


def encode_output(output: object) -> tuple[str | None, bytes | None]:
    """``(codec, payload)`` for `output`; ``(None, None)`` when it cannot be stored."""
    kind = type(output)
    if kind is str:
        return TEXT, output.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
    if kind in _PLAIN_TYPES:
        try:
            text = json.dumps(output, separators=(",", ":"), allow_nan=False)
            # Only data that comes back equal (no tuples, no int keys, no subclasses).
            if _same(json.loads(text), output):
                return JSON, text.encode()
        except (TypeError, ValueError, RecursionError):
            pass
    dump_json = getattr(output, "model_dump_json", None)
    if callable(dump_json) and hasattr(kind, "model_validate_json"):
        path = f"{kind.__module__}:{kind.__qualname__}"
        if "<locals>" not in path and _resolve(path) is kind:
            try:
                return PYDANTIC + path, dump_json().encode()
            except Exception:  # a model that cannot serialise itself: try pickle
                pass
    try:
        return PICKLE, pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        name = f"{kind.__module__}.{kind.__qualname__}"
        if name not in _warned_types:
            _warned_types.add(name)
            logger.warning(
                "Outputs of type %s cannot be stored in the checkpoint (%s); items with such "
                "outputs will run again on the next run",
                name,
                exc,
            )
        return None, None


def decode_output(codec: str | None, payload: bytes | None) -> Any:
    """The output `encode_output` stored, or `UNSTORABLE` when it cannot be rebuilt."""
    if codec is None or payload is None:
        return UNSTORABLE
    try:
        if codec == TEXT:
            return payload.decode("utf-8", "surrogatepass")
        if codec == JSON:
            return json.loads(payload)
        if codec.startswith(PYDANTIC):
            model = _resolve(codec[len(PYDANTIC) :])
            if model is None:
                return UNSTORABLE
            return model.model_validate_json(payload)
        if codec == PICKLE:
            return pickle.loads(payload)
    except Exception as exc:
        logger.warning(
            "A stored output (%s) could not be read back (%s); running it again", codec, exc
        )
    return UNSTORABLE


def _resolve(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return target


def _same(copy: object, original: object) -> bool:
    """Equal, with the same types all the way down (``1 == 1.0 == True`` is not enough)."""
    if type(copy) is not type(original):
        return False
    if isinstance(original, dict):
        assert isinstance(copy, dict)
        return copy.keys() == original.keys() and all(
            _same(copy[key], value) for key, value in original.items()
        )
    if isinstance(original, list):
        assert isinstance(copy, list)
        return len(copy) == len(original) and all(map(_same, copy, original))
    return copy == original
