"""The input side of ``abl run``: reading, validating and normalising a JSONL file.

Every non-blank line of the input is one JSON object, one request. Four shapes are
understood, and every one is normalised to an `InputRecord` (an id, the chat messages, the
generation options):

- ``{"id": ..., "prompt": "text"}``: one user message;
- ``{"id": ..., "messages": [{"role": ..., "content": ...}, ...]}``: an OpenAI-style chat;
- any object with an ``id`` and the fields of a template given by the caller, such as
  ``"Summarize: {text}"`` (template mode);
- a line of an OpenAI Batch API file: ``{"custom_id": ..., "method": "POST",
  "url": "/v1/chat/completions", "body": {"model": ..., "messages": [...], ...}}``.

The first three take the optional keys ``system`` (a system prompt), ``options`` (an object
of generation options, such as ``temperature``) and ``metadata`` (any JSON, passed through
untouched); an OpenAI batch line takes ``metadata``, and its body's other keys are the options.
A ``developer`` message is read as a system message, and content given as text parts
(``[{"type": "text", "text": ...}, ...]``) is their texts joined with newlines; other parts
(images, audio, files) are refused.

Why it is built this way:

- **Streaming, two passes.** `InputFile.validate` reads the whole file once, so that a typo
  on line 90,000 is reported before the first request is paid for; `InputFile.records` reads
  it again to feed the run. Neither keeps the records: memory does not grow with the file,
  except for the ids kept to find duplicates (`InputFile.validate` says how much).
- **Strict keys.** Outside template mode a key that is not part of the shape is an error, so
  that a typo such as ``promt`` cannot silently turn into a request without its prompt.
- **One-shot inputs are spooled.** Standard input (and a pipe or other non-regular file) can
  be read only once, so the first pass copies what it reads to a temporary file that later
  passes read back.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import json
import os
import sqlite3
import stat
import string
import sys
import tempfile
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import closing, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Final, Literal, NoReturn, TypeAlias

__all__ = [
    "ChatMessage",
    "InputError",
    "InputFile",
    "InputFormat",
    "InputRecord",
    "SeenIds",
    "ValidationReport",
    "parse_request",
    "render_request",
]

Role: TypeAlias = Literal["system", "user", "assistant"]
"""The role of a normalised chat message (``developer`` is read as ``system``)."""

InputFormat: TypeAlias = Literal["prompt", "messages", "template", "openai-batch", "mixed", "empty"]
"""The shape of a file's records: one of the four shapes, ``"mixed"`` when the valid records
have more than one, ``"empty"`` when there is no valid record (outside template mode)."""

_Shape: TypeAlias = Literal["prompt", "messages", "template", "openai-batch"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat request.

    Attributes:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        content: The message's text.
    """

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One request of the input file, normalised whatever the shape of its line.

    Attributes:
        line: The line of the file it was read from (1-based, blank lines counted).
        id: The record's id (``id``, or ``custom_id`` in an OpenAI batch file), an integer
            id converted to its decimal string.
        messages: The chat to send: the system prompt first when one was given with
            ``system`` (or by default), then the conversation; the last message is always
            from the user.
        options: The line's generation options (read-only, maybe empty).
        metadata: The line's ``metadata``, as parsed; ``None`` when absent.
        model: ``body.model`` of an OpenAI batch line, else ``None``.
    """

    line: int
    id: str
    messages: tuple[ChatMessage, ...]
    options: Mapping[str, Any]
    metadata: Any
    model: str | None


class InputError(ValueError):
    """One bad line of the input file.

    ``str(error)`` is ``"line <line>: <message>"``.

    Attributes:
        line: The bad line (1-based, blank lines counted).
        message: What is wrong with it.
    """

    line: int
    message: str

    def __init__(self, line: int, message: str) -> None:
        # Both as args, so that the error survives pickling (copy, multiprocessing).
        super().__init__(line, message)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome of `InputFile.validate`.

    Attributes:
        records: The valid records checked; ``records + error_count`` is the number of
            non-blank lines checked.
        errors: The first bad lines, in file order (at most ``max_errors`` of them).
        error_count: Every bad line found, which may exceed ``len(errors)``.
        format: The shape of the valid records (`InputFormat`).
    """

    records: int
    errors: list[InputError] = field(default_factory=list)
    error_count: int = 0
    format: InputFormat = "empty"

    @property
    def ok(self) -> bool:
        """Whether no line is bad."""
        return self.error_count == 0


class _Invalid(Exception):
    """What is wrong with a line, before its line number is attached."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _fail(message: str) -> NoReturn:
    raise _Invalid(message)


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity, which no API accepts and json.dumps writes back
    # as invalid JSON: refuse them at the door.
    raise _NonFiniteNumber(f"{name} is not valid JSON")


# One decoder for every line: json.loads with keyword arguments builds a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_EMPTY_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({})

_ROLES: Final[Mapping[str, Role]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
_MESSAGE_KEYS: Final = frozenset({"role", "content"})
_PROMPT_KEYS: Final = ("id", "prompt", "system", "options", "metadata")
_MESSAGES_KEYS: Final = ("id", "messages", "system", "options", "metadata")
_BATCH_KEYS: Final = ("custom_id", "method", "url", "body", "metadata")
_PROMPT_KEY_SET: Final = frozenset(_PROMPT_KEYS)
_MESSAGES_KEY_SET: Final = frozenset(_MESSAGES_KEYS)
_BATCH_KEY_SET: Final = frozenset(_BATCH_KEYS)
_BATCH_URLS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})
_BATCH_BODY_NOT_OPTIONS: Final = frozenset({"model", "messages"})
_TEXT_PART_JOINER: Final = "\n"
_CONVERSIONS: Final[Mapping[str, Callable[[object], str]]] = {"r": repr, "s": str, "a": ascii}


def _kind(value: object) -> str:
    """The JSON type of `value`, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json makes nothing else


def _quoted(names: Iterable[object]) -> str:
    return ", ".join(repr(name) for name in names)


def _unknown_keys(keys: set[str], allowed: tuple[str, ...], shape: str) -> NoReturn:
    names = sorted(keys)
    plural = "s" if len(names) > 1 else ""
    hint = ""
    for name in names:
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
            break
    _fail(
        f"unknown key{plural} {_quoted(names)} "
        f"(allowed in {shape} lines: {', '.join(allowed)}){hint}"
    )


def _take_id(obj: dict[str, Any], key: str) -> str:
    if key not in obj:
        _fail(f"missing {key!r}")
    value = obj[key]
    kind = type(value)
    if kind is str:
        if value.strip():
            return value  # type: ignore[no-any-return]
        _fail(f"{key!r} is empty")
    if kind is int:
        return str(value)
    got = f"the number {value!r}" if kind is float else _kind(value)
    _fail(f"{key!r} must be a string or an integer, got {got}")


def _text(value: object, what: str) -> str:
    if type(value) is not str:
        _fail(f"{what} must be a string, got {_kind(value)}")
    if not value.strip():
        _fail(f"{what} is empty")
    return value


def _options(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("options")
    if value is None:
        return _EMPTY_OPTIONS
    if type(value) is not dict:
        _fail(f"'options' must be an object, got {_kind(value)}")
    return MappingProxyType(value) if value else _EMPTY_OPTIONS


def _content(value: object, number: int) -> str:
    if type(value) is str:
        text = value
    elif type(value) is list:
        texts: list[str] = []
        for index, part in enumerate(value, 1):
            if type(part) is not dict:
                _fail(
                    f"message {number}: content part {index} must be an object, got {_kind(part)}"
                )
            kind = part.get("type")
            if kind != "text":
                _fail(
                    f"message {number}: content part {index} has type {kind!r}; only text parts "
                    '({"type": "text", "text": "..."}) are supported'
                )
            part_text = part.get("text")
            if type(part_text) is not str:
                _fail(
                    f"message {number}: content part {index} 'text' must be a string, "
                    f"got {_kind(part_text)}"
                )
            texts.append(part_text)
        text = _TEXT_PART_JOINER.join(texts)
    else:
        _fail(
            f"message {number}: 'content' must be a string or an array of text parts, "
            f"got {_kind(value)}"
        )
    if not text.strip():
        _fail(f"message {number}: content is empty")
    return text


def _conversation(value: object, where: str) -> tuple[list[ChatMessage], bool]:
    """The messages of `value` and whether one of them is a system message."""
    if type(value) is not list:
        _fail(f"{where} must be an array of messages, got {_kind(value)}")
    if not value:
        _fail(f"{where} is empty")
    messages: list[ChatMessage] = []
    has_system = False
    for number, message in enumerate(value, 1):
        if type(message) is not dict:
            _fail(f"message {number} must be an object, got {_kind(message)}")
        if "role" not in message:
            _fail(f"message {number} has no 'role'")
        raw_role = message["role"]
        role = _ROLES.get(raw_role) if type(raw_role) is str else None
        if role is None:
            _fail(
                f"message {number} has unsupported role {raw_role!r} "
                "(supported: system, user, assistant, developer)"
            )
        if "content" not in message:
            _fail(f"message {number} has no 'content'")
        if len(message) > 2:
            extra = sorted(message.keys() - _MESSAGE_KEYS)
            _fail(
                f"message {number} has unsupported key{'s' if len(extra) > 1 else ''} "
                f"{_quoted(extra)} (only 'role' and 'content' are supported)"
            )
        has_system = has_system or role == "system"
        messages.append(ChatMessage(role, _content(message["content"], number)))
    if messages[-1].role != "user":
        _fail(f"the last message must be from 'user', not {value[-1]['role']!r}")
    return messages, has_system


_Piece: TypeAlias = tuple[str, str | None, str | None, str]
"""A compiled template piece: literal text, field name, conversion, format spec."""


def _compile_template(template: str) -> tuple[tuple[_Piece, ...], tuple[str, ...]]:
    """The pieces of `template` and its field names (each once, in order of appearance)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    pieces: list[_Piece] = []
    names: dict[str, None] = {}
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None, None, ""))
            continue
        if not name:
            raise ValueError(
                f"invalid template {template!r}: fields must be named after a key of the "
                "input lines, like {text}; '{}' is not supported"
            )
        if "." in name or "[" in name:
            raise ValueError(
                f"invalid template {template!r}: field {{{name}}} is nested, only top-level "
                "keys of the input lines are supported"
            )
        if conversion is not None and conversion not in _CONVERSIONS:
            raise ValueError(
                f"invalid template {template!r}: unknown conversion '!{conversion}' in field "
                f"{{{name}}} (use !r, !s or !a)"
            )
        if spec and "{" in spec:
            raise ValueError(
                f"invalid template {template!r}: nested fields in the format spec of "
                f"{{{name}}} are not supported"
            )
        pieces.append((literal, name, conversion, spec or ""))
        names[name] = None
    return tuple(pieces), tuple(names)


def _field_text(name: str, value: object) -> object:
    """`value` as a template renders it without a conversion: JSON for what is not text."""
    if value is None:
        _fail(f"template field {name!r} is null")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _check_surrogates(obj: object) -> None:
    """Refuse a lone surrogate escape (``"\\ud800"``): JSON allows it, UTF-8 cannot hold it,
    so it would fail the line's request, its checkpoint entry or its output line."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(exc.object[exc.start])
        _fail(f"a string holds the lone surrogate \\u{code:04x}, which is not valid Unicode")


class SeenIds:
    """The ids seen so far with their first line numbers, in bounded memory.

    The latest `memory_limit` ids are kept in a dict; older ones move to an indexed table
    in a temporary SQLite file, which each new id is looked up in. A set of every id would
    grow with the file: about 130 bytes per short id, 1.3 GB for 10 million lines.
    """

    def __init__(self, memory_limit: int = 50_000) -> None:
        self._memory_limit = memory_limit
        self._recent: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    def setdefault(self, key: str, number: int) -> int:
        """The line `key` was first seen at, recording `number` when it is new."""
        first = self._recent.get(key)
        if first is not None:
            return first
        if self._db is not None:
            row = self._db.execute("SELECT line FROM ids WHERE id = ?", (key,)).fetchone()
            if row is not None:
                return int(row[0])
        self._recent[key] = number
        if len(self._recent) >= self._memory_limit:
            self._spill()
        return number

    def _spill(self) -> None:
        if self._db is None:
            self._directory = tempfile.TemporaryDirectory(prefix="abl-ids-")
            self._db = sqlite3.connect(os.path.join(self._directory.name, "ids.sqlite"))
            # A scratch file: nothing to recover after a crash.
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        with self._db:
            self._db.executemany("INSERT INTO ids VALUES (?, ?)", self._recent.items())
        self._recent.clear()

    def close(self) -> None:
        """Drop what was kept (the temporary file included)."""
        self._recent.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> SeenIds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InputFile:
    """A JSONL input file, read in streaming passes.

    Standard input, and any path that is not a regular file (a pipe, ``<(command)``), can
    be read only once: the first pass copies each line it reads to a temporary file (as
    large as the input), and later passes read that copy, then carry on with the input
    where the first pass stopped. The copy is deleted by `close` (or at exit). Passes over
    such an input must not overlap.

    Args:
        path: The file; ``None`` or ``"-"`` for standard input (``"./-"`` for a file
            named ``-``).
        template: A template such as ``"Summarize: {text}"`` (`str.format` fields naming
            top-level keys, with optional conversion and format spec): every line is an
            object with an ``id`` and the template's fields, and its prompt is the rendered
            template. Strings are inserted as they are, objects, arrays and booleans as
            JSON, numbers with `str` (or their format spec); a null field is an error.
            Other keys of the line are allowed, and ``system``, ``options`` and
            ``metadata`` keep their meaning.
        system: The system prompt of the lines that have none of their own (no ``system``
            key and no system or developer message); empty means none.

    Raises:
        FileNotFoundError: `path` does not exist.
        IsADirectoryError: `path` is a directory.
        PermissionError: `path` cannot be read.
        ValueError: `template` is not a valid template.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        template: str | None = None,
        system: str | None = None,
    ) -> None:
        self.path: Path | None = None if path is None or os.fspath(path) == "-" else Path(path)
        self.template = template
        self.system = system or None
        self._pieces: tuple[_Piece, ...] = ()
        self._fields: tuple[str, ...] = ()
        if template is not None:
            self._pieces, self._fields = _compile_template(template)
        self._one_shot = self.path is None
        if self.path is not None:
            mode = os.stat(self.path).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
            if stat.S_ISREG(mode):
                # Fail now on an unreadable file rather than in the middle of a command.
                with open(self.path, "rb"):
                    pass
            else:
                # Opening a pipe blocks until its writer comes: leave it to the first pass.
                self._one_shot = True
        self._closed = False
        # One-shot inputs only: the stream being read, the spool copy of what was read.
        self._stream: Iterator[bytes] | None = None
        self._stream_file: IO[bytes] | None = None
        self._stream_done = False
        self._spool: str | None = None
        self._spool_busy = False
        self._cleanup: weakref.finalize[[str], InputFile] | None = None

    @property
    def name(self) -> str:
        """The path as given, or ``"<stdin>"``."""
        return "<stdin>" if self.path is None else str(self.path)

    def validate(self, *, limit: int | None = None, max_errors: int = 20) -> ValidationReport:
        """Check every line in one streaming pass.

        Duplicate ids are found across the whole file (or the first `limit` records): the
        ids seen are kept with their line numbers, the latest ones in memory and the rest in
        a temporary SQLite file (`SeenIds`), so memory does not grow with the file.

        Args:
            limit: Check only the first `limit` records (non-blank lines, bad ones
                included), as ``records(limit=limit)`` would read them.
            max_errors: The number of bad lines to keep in the report; the others are
                only counted.

        Returns:
            The report; the file is usable when ``report.ok``.

        Raises:
            ValueError: `limit` or `max_errors` is negative, or the file is closed.
            OSError: The file cannot be read.
        """
        _check_count("limit", limit)
        _check_count("max_errors", max_errors)
        report = ValidationReport(records=0)
        shapes: set[_Shape] = set()
        # Checked, not built: validation is the pass that reads the file for nothing else.
        with SeenIds() as seen, closing(self._scan(limit, seen, build=False)) as scan:
            for item in scan:
                if type(item) is InputError:
                    report.error_count += 1
                    if len(report.errors) < max_errors:
                        report.errors.append(item)
                else:
                    report.records += 1
                    shapes.add(item[0])  # type: ignore[index]
        if self.template is not None:
            report.format = "template"
        elif len(shapes) > 1:
            report.format = "mixed"
        elif shapes:
            report.format = shapes.pop()
        return report

    def records(
        self, *, limit: int | None = None, check_duplicates: bool = True
    ) -> Iterator[InputRecord]:
        """Read the records in a streaming pass.

        Args:
            limit: Yield only the first `limit` records (non-blank lines).
            check_duplicates: Fail on a duplicate id (the ids are kept as `validate`
                keeps them); turn it off after a successful `validate` of an input that
                cannot have changed, to skip that work.

        Yields:
            The records, in file order.

        Raises:
            InputError: A bad line (the file changed since `validate`, or it was not run).
            ValueError: `limit` is negative, or the file is closed.
            OSError: The file cannot be read.
        """
        _check_count("limit", limit)
        return self._records(limit, SeenIds() if check_duplicates else None)

    def close(self) -> None:
        """Delete the copy of a one-shot input; passes are refused afterwards."""
        self._closed = True
        if self._stream_file is not None:
            self._stream_file.close()
            self._stream_file = None
        self._stream = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _records(self, limit: int | None, seen: SeenIds | None) -> Iterator[InputRecord]:
        with (
            seen if seen is not None else nullcontext(),
            closing(self._scan(limit, seen, build=True)) as scan,
        ):
            for item in scan:
                if type(item) is InputError:
                    raise item
                yield item[1]  # type: ignore[index, misc]

    def _scan(
        self, limit: int | None, seen: SeenIds | None, *, build: bool
    ) -> Generator[tuple[_Shape, InputRecord | None] | InputError, None, None]:
        """One pass: each non-blank line as its shape and record (if `build`), or its error."""
        if self._closed:
            raise ValueError(f"{self.name} is closed")
        if limit == 0:
            return
        checked = 0
        with closing(self._lines()) as lines:
            for number, raw in enumerate(lines, 1):
                if raw.isspace():
                    continue
                checked += 1
                try:
                    item: tuple[_Shape, InputRecord | None] | InputError = self._parse_line(
                        raw, number, seen, build
                    )
                except _Invalid as exc:
                    item = InputError(number, exc.message)
                yield item
                if checked == limit:
                    return

    def _parse_line(
        self, raw: bytes, number: int, seen: SeenIds | None, build: bool
    ) -> tuple[_Shape, InputRecord | None]:
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            # Windows editors put a BOM before the first line.
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line")
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            _fail(_json_error(text, exc))
        except RecursionError:
            _fail("invalid JSON: nested too deeply")
        except ValueError as exc:
            # NaN / Infinity, or an integer longer than int() accepts.
            _fail(f"invalid JSON: {exc}")
        if type(obj) is not dict:
            _fail(f"expected a JSON object, got {_kind(obj)}")
        if "\\ud" in text or "\\uD" in text:
            _check_surrogates(obj)
        if self.template is not None:
            return "template", self._from_template(obj, number, seen, build)
        if "custom_id" in obj or "body" in obj:
            return "openai-batch", self._from_batch(obj, number, seen, build)
        if "prompt" in obj:
            if "messages" in obj:
                _fail("has both 'prompt' and 'messages'; give one of them")
            return "prompt", self._from_prompt(obj, number, seen, build)
        if "messages" in obj:
            return "messages", self._from_messages(obj, number, seen, build)
        unknown = obj.keys() - _PROMPT_KEY_SET
        if unknown:
            _unknown_keys(unknown, (*_PROMPT_KEYS, "messages"), "prompt or messages")
        _fail("missing 'prompt' or 'messages'")

    @staticmethod
    def _register(record_id: str, number: int, seen: SeenIds | None) -> None:
        if seen is not None:
            first = seen.setdefault(record_id, number)
            if first != number:
                _fail(f"duplicate id {record_id!r} (first seen at line {first})")

    def _system_of(self, obj: Mapping[str, Any], has_system: bool) -> str | None:
        """The system prompt to put first: the line's ``system``, else the default."""
        value = obj.get("system")
        if value is not None:
            return _text(value, "'system'")
        return None if has_system else self.system

    def _from_prompt(
        self, obj: dict[str, Any], number: int, seen: SeenIds | None, build: bool
    ) -> InputRecord | None:
        unknown = obj.keys() - _PROMPT_KEY_SET
        if unknown:
            _unknown_keys(unknown, _PROMPT_KEYS, "prompt")
        record_id = _take_id(obj, "id")
        self._register(record_id, number, seen)
        prompt = _text(obj["prompt"], "'prompt'")
        return self._record(obj, number, record_id, prompt, False, build)

    def _from_messages(
        self, obj: dict[str, Any], number: int, seen: SeenIds | None, build: bool
    ) -> InputRecord | None:
        unknown = obj.keys() - _MESSAGES_KEY_SET
        if unknown:
            _unknown_keys(unknown, _MESSAGES_KEYS, "messages")
        record_id = _take_id(obj, "id")
        self._register(record_id, number, seen)
        messages, has_system = _conversation(obj["messages"], "'messages'")
        return self._record(obj, number, record_id, messages, has_system, build)

    def _from_batch(
        self, obj: dict[str, Any], number: int, seen: SeenIds | None, build: bool
    ) -> InputRecord | None:
        unknown = obj.keys() - _BATCH_KEY_SET
        if unknown:
            _unknown_keys(unknown, _BATCH_KEYS, "OpenAI batch")
        record_id = _take_id(obj, "custom_id")
        self._register(record_id, number, seen)
        if "method" not in obj:
            _fail('missing \'method\' (an OpenAI batch line needs "method": "POST")')
        if obj["method"] != "POST":
            _fail(f"unsupported method {obj['method']!r}: only 'POST' is supported")
        if "url" not in obj:
            _fail('missing \'url\' (an OpenAI batch line needs "url": "/v1/chat/completions")')
        if obj["url"] not in _BATCH_URLS:
            _fail(
                f"unsupported url {obj['url']!r}: only '/v1/chat/completions' "
                "(chat completions) is supported"
            )
        if "body" not in obj:
            _fail("missing 'body'")
        body = obj["body"]
        if type(body) is not dict:
            _fail(f"'body' must be an object, got {_kind(body)}")
        if "messages" not in body:
            _fail("'body' has no 'messages'")
        model = body.get("model")
        if model is not None and (type(model) is not str or not model.strip()):
            _fail(f"'body.model' must be a non-empty string, got {_kind(model)}")
        messages, has_system = _conversation(body["messages"], "'body.messages'")
        if not build:
            return None
        if self.system is not None and not has_system:
            messages.insert(0, ChatMessage("system", self.system))
        options = {key: value for key, value in body.items() if key not in _BATCH_BODY_NOT_OPTIONS}
        return InputRecord(
            line=number,
            id=record_id,
            messages=tuple(messages),
            options=MappingProxyType(options) if options else _EMPTY_OPTIONS,
            metadata=obj.get("metadata"),
            model=model,
        )

    def _from_template(
        self, obj: dict[str, Any], number: int, seen: SeenIds | None, build: bool
    ) -> InputRecord | None:
        if "messages" in obj:
            _fail("ambiguous: the line has 'messages' but a template was given; give one of them")
        record_id = _take_id(obj, "id")
        self._register(record_id, number, seen)
        missing = [name for name in self._fields if name not in obj]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            _fail(f"missing template field{plural} {_quoted(missing)}")
        parts: list[str] = []
        for literal, name, conversion, spec in self._pieces:
            if literal:
                parts.append(literal)
            if name is None:
                continue
            value = obj[name]
            if conversion is None and not spec and type(value) is str:
                parts.append(value)
                continue
            rendered = (
                _field_text(name, value) if conversion is None else _CONVERSIONS[conversion](value)
            )
            try:
                parts.append(format(rendered, spec))
            except (ValueError, TypeError) as exc:
                _fail(f"cannot format template field {name!r} with spec {spec!r}: {exc}")
        prompt = "".join(parts)
        if not prompt.strip():
            _fail("the rendered template is empty")
        return self._record(obj, number, record_id, prompt, False, build)

    def _record(
        self,
        obj: dict[str, Any],
        number: int,
        record_id: str,
        conversation: list[ChatMessage] | str,
        has_system: bool,
        build: bool,
    ) -> InputRecord | None:
        """The record of a prompt, messages or template line, once the common keys check.

        `conversation` is the messages, or the text of the one user message.
        """
        system = self._system_of(obj, has_system)
        options = _options(obj)
        if not build:
            return None
        messages = (
            [ChatMessage("user", conversation)] if isinstance(conversation, str) else conversation
        )
        if system is not None:
            messages.insert(0, ChatMessage("system", system))
        return InputRecord(
            line=number,
            id=record_id,
            messages=tuple(messages),
            options=options,
            metadata=obj.get("metadata"),
            model=None,
        )

    def _lines(self) -> Generator[bytes, None, None]:
        """The raw lines of the input, for one pass."""
        if not self._one_shot:
            assert self.path is not None
            with open(self.path, "rb") as file:
                yield from file
            return
        if self._spool_busy:
            raise RuntimeError(f"{self.name} can be read only once: passes must not overlap")
        self._spool_busy = True
        try:
            if self._spool is not None:
                with open(self._spool, "rb") as copy:
                    yield from copy
            if self._stream_done:
                return
            stream = self._open_stream()
            if self._spool is None:
                descriptor, self._spool = tempfile.mkstemp(prefix="abl-input-", suffix=".jsonl")
                os.close(descriptor)
                self._cleanup = weakref.finalize(self, _remove, self._spool)
            with open(self._spool, "ab") as copy:
                for line in stream:
                    # Written before it is yielded: a pass that stops here leaves a copy of
                    # exactly what was consumed, which the next pass reads back first.
                    copy.write(line)
                    yield line
            self._stream_done = True
            if self._stream_file is not None:
                self._stream_file.close()
                self._stream_file = None
        finally:
            self._spool_busy = False

    def _open_stream(self) -> Iterator[bytes]:
        if self._stream is None:
            if self.path is not None:
                self._stream_file = open(self.path, "rb")  # noqa: SIM115 - kept across passes
                self._stream = iter(self._stream_file)
            else:
                buffer = getattr(sys.stdin, "buffer", None)
                if buffer is not None:
                    self._stream = iter(buffer)
                else:
                    # A text stdin (replaced by an embedding program): back to bytes, with
                    # undecodable input kept undecodable, so that it is reported.
                    self._stream = (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        return self._stream


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    if text.endswith("\n"):
        # The line's own newline reads as a control character inside an unterminated
        # string; without it json names the actual problem.
        try:
            _DECODER.decode(text.rstrip("\r\n"))
        except json.JSONDecodeError as stripped:
            exc = stripped
        except ValueError:
            pass
    if exc.msg.endswith(" at"):  # "Unterminated string starting at"
        return f"invalid JSON: {exc.msg} column {exc.colno}"
    return f"invalid JSON: {exc.msg} (column {exc.colno})"


def _remove(path: str) -> None:
    with suppress(FileNotFoundError):
        os.remove(path)


def _check_count(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def render_request(record: InputRecord) -> str:
    """The canonical JSON text of the request `record` makes: its messages and options.

    The same request gives the same text whatever the key order of its line (keys sorted,
    compact separators, ASCII only), so that a digest of it changes exactly when the
    request does; the line number, id, metadata and model are not part of it.
    `parse_request` reads it back.
    """
    return json.dumps(
        {
            "messages": [{"role": m.role, "content": m.content} for m in record.messages],
            "options": dict(record.options),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def parse_request(text: str) -> tuple[tuple[ChatMessage, ...], dict[str, Any]]:
    """The messages and options of a request written by `render_request`.

    Raises:
        ValueError: `text` is not a request written by `render_request`.
    """
    request = json.loads(text)
    if type(request) is not dict or request.keys() != {"messages", "options"}:
        raise ValueError("not a request written by render_request()")
    messages, options = request["messages"], request["options"]
    if type(messages) is not list or type(options) is not dict:
        raise ValueError("not a request written by render_request()")
    parsed: list[ChatMessage] = []
    for message in messages:
        if (
            type(message) is not dict
            or message.keys() != {"role", "content"}
            or message["role"] not in ("system", "user", "assistant")
            or type(message["content"]) is not str
        ):
            raise ValueError(f"not a message written by render_request(): {message!r}")
        parsed.append(ChatMessage(message["role"], message["content"]))
    return tuple(parsed), options
