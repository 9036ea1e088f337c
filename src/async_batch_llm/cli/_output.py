"""Output lines of ``abl``: one JSON object per item, and the file they are written to."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

from async_batch_llm._internal.values import split_error

__all__ = ["OutputWriter", "error_parts", "output_line", "usd"]


def usd(value: object) -> str:
    """An amount of US dollars for people: to four decimal places, and an amount below
    that to three significant digits (a run of a few short prompts costs millionths, not
    "$0.0000")."""
    amount = Decimal(str(value))
    if amount == 0 or abs(amount) >= Decimal("0.0001"):
        return f"${amount:,.4f}"
    three_digits = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 2))
    return f"${three_digits:f}"


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def error_parts(error: str | None, category: str | None) -> dict[str, Any] | None:
    """``{"type", "message", "category"}`` of a result's ``"Type: message"`` error text."""
    if error is None:
        return None
    kind, message = split_error(error)
    return {"type": kind, "message": message, "category": category}


def usage_parts(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """The line's ``usage``: input, output and cached input tokens."""
    usage = usage or {}
    return {
        "input_tokens": _count(usage.get("input_tokens")),
        "output_tokens": _count(usage.get("output_tokens")),
        "cached_tokens": _count(usage.get("cached_input_tokens")),
    }


def output_line(
    *,
    item_id: str,
    ok: bool,
    output: Any,
    error: dict[str, Any] | None,
    usage: Mapping[str, Any] | None,
    attempts: int,
    cost: Decimal | None,
    model: str,
    replayed: bool,
    metadata: Any,
    via: str = "online",
) -> str:
    """One output line (with its newline).

    ``via`` is ``"batch"`` for an output from a provider batch job (priced at batch
    rates), else ``"online"``. ``cost_usd`` is written as a JSON number with the exact
    digits of the `Decimal` (read it with ``json.loads(line, parse_float=decimal.Decimal)``
    to keep them), or ``null`` when the model has no known price.
    """
    head = _encode(
        {
            "id": item_id,
            "ok": ok,
            "output": output,
            "error": error,
            "usage": usage_parts(usage),
            "attempts": attempts,
        }
    )
    tail = _encode({"model": model, "via": via, "replayed": replayed, "metadata": metadata})
    price = "null" if cost is None else format(cost, "f")
    return f'{head[:-1]},"cost_usd":{price},{tail[1:]}\n'


class OutputWriter:
    """Writes output lines to a file that is only ever complete, or to standard output.

    A file is written under a temporary name beside it (``.OUTPUT.<random>.partial``) and
    moved into place by `finish`
    (after an ``fsync``), so OUTPUT never holds a torn or half-written run: a crash leaves
    the previous version, and the rerun, which replays what was committed, writes it whole.
    """

    #: Suffix of the file being written.
    PARTIAL_SUFFIX: Final = ".partial"

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None or path == "-" else Path(path)
        self._partial: Path | None = None
        # Opened at the first line (or by `finish`), under a name of its own: a run that
        # cannot start, or another run writing the same OUTPUT, leaves this one's alone.
        self._file: IO[str] | None = sys.stdout if self.path is None else None
        self._done = False
        self.lines = 0

    def _open(self) -> IO[str]:
        assert self.path is not None
        descriptor, name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=self.PARTIAL_SUFFIX, dir=self.path.parent
        )
        self._partial = Path(name)
        self._file = open(descriptor, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        return self._file

    def write(self, line: str) -> None:
        file = self._file if self._file is not None else self._open()
        file.write(line)
        self.lines += 1

    def finish(self) -> None:
        """Make everything written visible at OUTPUT (or flushed to standard output)."""
        if self._done:
            return
        self._done = True
        if self.path is None:
            sys.stdout.flush()
            return
        file = self._file if self._file is not None else self._open()
        assert self._partial is not None
        file.flush()
        os.fsync(file.fileno())
        file.close()
        # mkstemp makes the file private; OUTPUT gets the mode a new file normally has.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._partial, 0o666 & ~umask)
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        """Drop what was written (the run could not start)."""
        if self._done or self._partial is None or self._file is None:
            return
        self._done = True
        self._file.close()
        self._partial.unlink(missing_ok=True)


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0
