"""The input side of ``abl run``: reading, validating and normalising JSONL files."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from async_batch_llm.cli._input import (
    ChatMessage,
    InputError,
    InputFile,
    InputRecord,
    ValidationReport,
    parse_request,
    render_request,
)

USER: Final = "user"


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write `lines` to `path`: strings as they are, anything else as JSON."""
    with path.open("w", encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Any:
    """A function writing lines to a fresh file and returning its path."""
    count = 0

    def make(*lines: Any) -> Path:
        nonlocal count
        count += 1
        return write_lines(tmp_path / f"input-{count}.jsonl", list(lines))

    return make


def only_record(path: Path, **kwargs: Any) -> InputRecord:
    records = list(InputFile(path, **kwargs).records())
    assert len(records) == 1
    return records[0]


def single_error(path: Path, **kwargs: Any) -> InputError:
    """The one error of validating `path`, after checking records() raises it too."""
    input_file = InputFile(path, **kwargs)
    report = input_file.validate()
    assert report.error_count == 1, report.errors
    [error] = report.errors
    with pytest.raises(InputError) as raised:
        list(input_file.records())
    assert str(raised.value) == str(error)
    return error


def user(text: str) -> ChatMessage:
    return ChatMessage(USER, text)


# --- shapes ---------------------------------------------------------------------------


def test_prompt_line_with_every_optional_key(jsonl: Any) -> None:
    path = jsonl(
        {
            "id": "a",
            "prompt": "Hello",
            "system": "Be brief.",
            "options": {"temperature": 0.2, "max_tokens": 5},
            "metadata": {"source": ["x", 1]},
        }
    )
    record = only_record(path)
    assert record == InputRecord(
        line=1,
        id="a",
        messages=(ChatMessage("system", "Be brief."), user("Hello")),
        options={"temperature": 0.2, "max_tokens": 5},
        metadata={"source": ["x", 1]},
        model=None,
    )


def test_minimal_prompt_line(jsonl: Any) -> None:
    record = only_record(jsonl({"id": 7, "prompt": "Hi"}))
    assert record.id == "7"
    assert record.messages == (user("Hi"),)
    assert dict(record.options) == {}
    assert record.metadata is None
    assert record.model is None


def test_options_are_read_only(jsonl: Any) -> None:
    record = only_record(jsonl({"id": 1, "prompt": "Hi", "options": {"seed": 1}}))
    with pytest.raises(TypeError):
        record.options["seed"] = 2  # type: ignore[index]


def test_null_system_and_options_are_absent(jsonl: Any) -> None:
    record = only_record(
        jsonl({"id": 1, "prompt": "Hi", "system": None, "options": None}), system="default"
    )
    assert record.messages == (ChatMessage("system", "default"), user("Hi"))
    assert dict(record.options) == {}


def test_messages_line(jsonl: Any) -> None:
    messages = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Q2"}, {"type": "text", "text": "more"}],
        },
    ]
    record = only_record(jsonl({"id": "m", "messages": messages, "options": {"top_p": 0.5}}))
    assert record.messages == (
        ChatMessage("system", "Rules."),
        user("Q1"),
        ChatMessage("assistant", "A1"),
        user("Q2\nmore"),
    )
    assert dict(record.options) == {"top_p": 0.5}


def test_messages_line_with_system_key_puts_it_first(jsonl: Any) -> None:
    messages = [{"role": "system", "content": "inner"}, {"role": "user", "content": "Q"}]
    record = only_record(jsonl({"id": 1, "system": "outer", "messages": messages}))
    assert record.messages == (
        ChatMessage("system", "outer"),
        ChatMessage("system", "inner"),
        user("Q"),
    )


def test_openai_batch_line(jsonl: Any) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "temperature": 0,
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "response_format": {"type": "json_object"},
        "seed": 3,
        "top_p": 0.9,
        "stop": ["\n"],
    }
    path = jsonl(
        {
            "custom_id": "req-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
            "metadata": {"k": "v"},
        },
        {"custom_id": "req-2", "method": "POST", "url": "/chat/completions", "body": body},
    )
    first, second = InputFile(path).records()
    assert first.id == "req-1"
    assert first.model == "gpt-4o-mini"
    assert first.messages == (ChatMessage("system", "S"), user("Q"))
    assert dict(first.options) == {
        "temperature": 0,
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "response_format": {"type": "json_object"},
        "seed": 3,
        "top_p": 0.9,
        "stop": ["\n"],
    }
    assert first.metadata == {"k": "v"}
    assert (second.id, second.line, second.metadata) == ("req-2", 2, None)
    assert InputFile(path).validate().format == "openai-batch"


def test_openai_batch_line_without_model_or_options(jsonl: Any) -> None:
    line = {
        "custom_id": "r",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "Q"}]},
    }
    record = only_record(jsonl(line), system="default")
    assert record.model is None
    assert dict(record.options) == {}
    assert record.messages == (ChatMessage("system", "default"), user("Q"))


def test_template_rendering(jsonl: Any) -> None:
    path = jsonl(
        {
            "id": "t",
            "text": "the text",
            "tags": ["a", "b"],
            "info": {"k": "é"},
            "n": 3,
            "x": 0.5,
            "flag": True,
            "unused": "ignored",
            "prompt": "just a field here",
            "metadata": {"m": 1},
            "options": {"temperature": 1},
        }
    )
    template = (
        "Summarize: {text} | {tags} | {info} | {n} | {x} | {flag} | {n:03d} | {text!r} | {{}}"
    )
    record = only_record(path, template=template)
    assert record.messages == (
        user(
            'Summarize: the text | ["a", "b"] | {"k": "é"} | 3 | 0.5 | true | 003 '
            "| 'the text' | {}"
        ),
    )
    assert record.metadata == {"m": 1}
    assert dict(record.options) == {"temperature": 1}
    assert InputFile(path, template=template).validate().format == "template"


def test_template_with_system_key_and_default(jsonl: Any) -> None:
    path = jsonl({"id": 1, "text": "a", "system": "own"}, {"id": 2, "text": "b"})
    own, default = InputFile(path, template="{text}", system="default").records()
    assert own.messages == (ChatMessage("system", "own"), user("a"))
    assert default.messages == (ChatMessage("system", "default"), user("b"))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Summarize: {text", "invalid template"),
        ("{}", "fields must be named"),
        ("{a[b]}", "nested"),
        ("{a.b}", "nested"),
        ("{a!x}", "unknown conversion"),
        ("{a:{w}}", "nested fields in the format spec"),
    ],
)
def test_invalid_templates_are_refused_at_once(jsonl: Any, template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputFile(jsonl({"id": 1, "a": "x"}), template=template)


def test_template_errors(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "text": "ok"},
        {"id": 2},
        {"id": 3, "text": "x", "messages": [{"role": "user", "content": "Q"}]},
        {"text": "no id"},
        {"id": 5, "text": None},
        {"id": 6, "text": "   "},
    )
    report = InputFile(path, template="{text}").validate()
    assert report.records == 1
    assert [str(error) for error in report.errors] == [
        "line 2: missing template field 'text'",
        "line 3: ambiguous: the line has 'messages' but a template was given; give one of them",
        "line 4: missing 'id'",
        "line 5: template field 'text' is null",
        "line 6: the rendered template is empty",
    ]


def test_template_missing_fields_are_all_named(jsonl: Any) -> None:
    error = single_error(jsonl({"id": 1, "b": 1}), template="{a} {b} {c} {a}")
    assert str(error) == "line 1: missing template fields 'a', 'c'"


def test_template_format_spec_that_does_not_fit(jsonl: Any) -> None:
    error = single_error(jsonl({"id": 1, "n": "text"}), template="{n:d}")
    assert error.message.startswith("cannot format template field 'n' with spec 'd'")


# --- system prompt precedence ----------------------------------------------------------


def test_default_system_applies_only_to_lines_without_their_own(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "prompt": "P"},
        {"id": 2, "prompt": "P", "system": "own"},
        {"id": 3, "messages": [{"role": "user", "content": "Q"}]},
        {
            "id": 4,
            "messages": [{"role": "system", "content": "inner"}, {"role": USER, "content": "Q"}],
        },
        {
            "id": 5,
            "messages": [{"role": "developer", "content": "dev"}, {"role": USER, "content": "Q"}],
        },
    )
    records = list(InputFile(path, system="default").records())
    assert [record.messages[0] for record in records] == [
        ChatMessage("system", "default"),
        ChatMessage("system", "own"),
        ChatMessage("system", "default"),
        ChatMessage("system", "inner"),
        ChatMessage("system", "dev"),
    ]
    assert [len(record.messages) for record in records] == [2, 2, 2, 2, 2]


def test_empty_default_system_means_none(jsonl: Any) -> None:
    assert only_record(jsonl({"id": 1, "prompt": "P"}), system="").messages == (user("P"),)


# --- ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "'id' is empty"),
        ("  ", "'id' is empty"),
        (None, "'id' must be a string or an integer, got null"),
        (1.5, "'id' must be a string or an integer, got the number 1.5"),
        (1.0, "'id' must be a string or an integer, got the number 1.0"),
        (True, "'id' must be a string or an integer, got a boolean"),
        ({"a": 1}, "'id' must be a string or an integer, got an object"),
        ([1], "'id' must be a string or an integer, got an array"),
    ],
)
def test_bad_ids(jsonl: Any, value: object, message: str) -> None:
    error = single_error(jsonl({"id": value, "prompt": "P"}))
    assert (error.line, error.message) == (1, message)


def test_missing_id(jsonl: Any) -> None:
    assert str(single_error(jsonl({"prompt": "P"}))) == "line 1: missing 'id'"


def test_duplicate_ids_name_both_lines(jsonl: Any) -> None:
    path = jsonl(
        {"id": "a", "prompt": "P"},
        {"id": "b", "prompt": "P"},
        {"id": "c", "prompt": "P"},
        "",
        {"id": 4, "prompt": "P"},
        {"id": "d", "prompt": "P"},
        {"id": "c", "prompt": "again"},
        {"id": "4", "prompt": "same id once normalised"},
    )
    report = InputFile(path).validate()
    assert [str(error) for error in report.errors] == [
        "line 7: duplicate id 'c' (first seen at line 3)",
        "line 8: duplicate id '4' (first seen at line 5)",
    ]
    assert (report.records, report.error_count) == (5, 2)
    records = InputFile(path).records()
    assert [next(records).id for _ in range(5)] == ["a", "b", "c", "4", "d"]
    with pytest.raises(InputError, match=r"^line 7: duplicate id 'c' \(first seen at line 3\)$"):
        next(records)


def test_duplicate_of_a_bad_line_is_reported(jsonl: Any) -> None:
    path = jsonl({"id": "a", "prompt": ""}, {"id": "a", "prompt": "P"})
    assert [str(error) for error in InputFile(path).validate().errors] == [
        "line 1: 'prompt' is empty",
        "line 2: duplicate id 'a' (first seen at line 1)",
    ]


def test_records_without_duplicate_check(jsonl: Any) -> None:
    path = jsonl({"id": "a", "prompt": "P"}, {"id": "a", "prompt": "P"})
    assert len(list(InputFile(path).records(check_duplicates=False))) == 2


# --- line errors -----------------------------------------------------------------------


def test_bad_json_after_a_blank_line_has_its_file_line_number(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "prompt": "P"},
        {"id": 2, "prompt": "P"},
        {"id": 3, "prompt": "P"},
        "   \t",
        '{"id": 5 "prompt": "P"}',
    )
    error = single_error(path)
    assert error.line == 5
    assert str(error) == "line 5: invalid JSON: Expecting ',' delimiter (column 10)"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"text"', "expected a JSON object, got a string"),
        ('{"id": 1, "prompt": "P"} {}', "invalid JSON: Extra data (column 26)"),
        ('{"id": 1, "prompt": NaN}', "invalid JSON: NaN is not valid JSON"),
        ('{"id": 1, "prompt": "P", "options": {"t": -Infinity}}', "invalid JSON: -Infinity is not"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
        ('{"id": 1, "prompt": "P', "invalid JSON: Unterminated string starting at column 21"),
        ('{"id": 1, "prompt": "a\tb"}', "invalid JSON: Invalid control character at column 23"),
    ],
)
def test_lines_that_are_not_objects(jsonl: Any, line: str, message: str) -> None:
    error = single_error(jsonl(line))
    assert error.line == 1
    assert error.message.startswith(message)


def test_huge_integer_is_invalid_json(jsonl: Any) -> None:
    error = single_error(jsonl('{"id": ' + "9" * 5000 + ', "prompt": "P"}'))
    assert error.message.startswith("invalid JSON: Exceeds the limit")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": 1, "prompt": "ok"}\n\n{"id": 2, "prompt": "caf\xe9"}\n')
    error = single_error(path)
    assert str(error) == "line 3: invalid UTF-8: byte 0xe9 at byte 25 of the line"


def test_utf8_text_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": 1, "prompt": "caf\xc3\xa9 \xf0\x9f\x98\x80"}\r\n'
        b'{"id": 2, "prompt": "x"}'
    )
    first, second = InputFile(path).records()
    assert first.messages == (user("café 😀"),)
    assert (second.id, second.line) == ("2", 2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"id": 1, "promt": "P"},
            "unknown key 'promt' (allowed in prompt or messages lines: id, prompt, system, "
            "options, metadata, messages); did you mean 'prompt'?",
        ),
        ({"id": 1}, "missing 'prompt' or 'messages'"),
        (
            {"id": 1, "prompt": "P", "temperature": 0, "model": "m"},
            "unknown keys 'model', 'temperature' "
            "(allowed in prompt lines: id, prompt, system, options, metadata)",
        ),
        (
            {"id": 1, "messages": [{"role": "user", "content": "Q"}], "sytem": "S"},
            "unknown key 'sytem' "
            "(allowed in messages lines: id, messages, system, options, metadata); "
            "did you mean 'system'?",
        ),
        (
            {"id": 1, "prompt": "P", "messages": [{"role": "user", "content": "Q"}]},
            "has both 'prompt' and 'messages'; give one of them",
        ),
        ({"id": 1, "prompt": ""}, "'prompt' is empty"),
        ({"id": 1, "prompt": " \n"}, "'prompt' is empty"),
        ({"id": 1, "prompt": None}, "'prompt' must be a string, got null"),
        ({"id": 1, "prompt": ["P"]}, "'prompt' must be a string, got an array"),
        ({"id": 1, "prompt": "P", "system": 3}, "'system' must be a string, got a number"),
        ({"id": 1, "prompt": "P", "system": ""}, "'system' is empty"),
        ({"id": 1, "prompt": "P", "options": "t=0"}, "'options' must be an object, got a string"),
    ],
)
def test_prompt_line_errors(jsonl: Any, line: dict[str, Any], message: str) -> None:
    error = single_error(jsonl(line))
    assert (error.line, error.message) == (1, message)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("Q", "'messages' must be an array of messages, got a string"),
        ([], "'messages' is empty"),
        (["Q"], "message 1 must be an object, got a string"),
        ([{"content": "Q"}], "message 1 has no 'role'"),
        (
            [{"role": "tool", "content": "Q"}],
            "message 1 has unsupported role 'tool' (supported: system, user, assistant, developer)",
        ),
        ([{"role": "user"}], "message 1 has no 'content'"),
        (
            [{"role": "user", "content": "Q", "name": "bob"}],
            "message 1 has unsupported key 'name' (only 'role' and 'content' are supported)",
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "the last message must be from 'user', not 'assistant'",
        ),
        (
            [{"role": "system", "content": "S"}],
            "the last message must be from 'user', not 'system'",
        ),
        (
            [{"role": "user", "content": None}],
            "message 1: 'content' must be a string or an array of text parts, got null",
        ),
        ([{"role": "user", "content": ""}], "message 1: content is empty"),
        ([{"role": "user", "content": []}], "message 1: content is empty"),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
            ],
            "message 3: content part 2 has type 'image_url'; only text parts "
            '({"type": "text", "text": "..."}) are supported',
        ),
        (
            [{"role": "user", "content": ["Q"]}],
            "message 1: content part 1 must be an object, got a string",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 3}]}],
            "message 1: content part 1 'text' must be a string, got a number",
        ),
    ],
)
def test_messages_errors(jsonl: Any, messages: object, message: str) -> None:
    error = single_error(jsonl({"id": 1, "messages": messages}))
    assert (error.line, error.message) == (1, message)


def _batch(**changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": "r",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "Q"}]},
    }
    line.update(changes)
    return {key: value for key, value in line.items() if value is not ...}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            _batch(url="/v1/embeddings"),
            "unsupported url '/v1/embeddings': only '/v1/chat/completions' (chat completions) "
            "is supported",
        ),
        (
            _batch(url="/v1/responses"),
            "unsupported url '/v1/responses': only '/v1/chat/completions' (chat completions) "
            "is supported",
        ),
        (_batch(method="GET"), "unsupported method 'GET': only 'POST' is supported"),
        (
            _batch(method=...),
            'missing \'method\' (an OpenAI batch line needs "method": "POST")',
        ),
        (
            _batch(url=...),
            'missing \'url\' (an OpenAI batch line needs "url": "/v1/chat/completions")',
        ),
        (_batch(custom_id=...), "missing 'custom_id'"),
        (_batch(custom_id=""), "'custom_id' is empty"),
        (_batch(body=...), "missing 'body'"),
        (_batch(body=[]), "'body' must be an object, got an array"),
        (_batch(body={"model": "m"}), "'body' has no 'messages'"),
        (
            _batch(body={"model": 4, "messages": [{"role": "user", "content": "Q"}]}),
            "'body.model' must be a non-empty string, got a number",
        ),
        (
            _batch(body={"messages": []}),
            "'body.messages' is empty",
        ),
        (
            _batch(id="r"),
            "unknown key 'id' "
            "(allowed in OpenAI batch lines: custom_id, method, url, body, metadata)",
        ),
    ],
)
def test_openai_batch_errors(jsonl: Any, line: dict[str, Any], message: str) -> None:
    error = single_error(jsonl(line))
    assert (error.line, error.message) == (1, message)


def test_input_error_is_a_value_error_and_pickles() -> None:
    error = InputError(3, "bad")
    assert isinstance(error, ValueError)
    assert str(error) == "line 3: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.line, copy.message, str(copy)) == (3, "bad", "line 3: bad")


# --- the report ------------------------------------------------------------------------


def test_report_counts_and_mixed_format(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "prompt": "P"},
        {"id": 2, "messages": [{"role": "user", "content": "Q"}]},
        {"id": 3},
    )
    report = InputFile(path).validate()
    assert report == ValidationReport(
        records=2, errors=report.errors, error_count=1, format="mixed"
    )
    assert not report.ok
    assert [error.line for error in report.errors] == [3]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"id": 1, "prompt": "P"}], "prompt"),
        ([{"id": 1, "messages": [{"role": "user", "content": "Q"}]}], "messages"),
        ([], "empty"),
        (["", "  "], "empty"),
        ([{"id": 1}], "empty"),
    ],
)
def test_report_format(jsonl: Any, lines: list[Any], expected: str) -> None:
    assert InputFile(jsonl(*lines)).validate().format == expected


def test_empty_file_with_template_is_template(jsonl: Any) -> None:
    report = InputFile(jsonl(), template="{x}").validate()
    assert (report.ok, report.records, report.format) == (True, 0, "template")


def test_max_errors_keeps_the_first_and_counts_all(jsonl: Any) -> None:
    lines = [{"id": n, "prompt": "P" if n % 2 else ""} for n in range(1, 101)]
    path = jsonl(*lines)
    report = InputFile(path).validate(max_errors=3)
    assert report.error_count == 50
    assert report.records == 50
    assert [error.line for error in report.errors] == [2, 4, 6]
    none_kept = InputFile(path).validate(max_errors=0)
    assert (none_kept.errors, none_kept.error_count) == ([], 50)


def test_limit_counts_records_not_lines(jsonl: Any) -> None:
    path = jsonl(
        "",
        {"id": 1, "prompt": "P"},
        "",
        {"id": 2, "prompt": ""},
        {"id": 3, "prompt": "P"},
        {"id": 1, "prompt": "duplicate beyond the limit"},
        "not even JSON",
    )
    report = InputFile(path).validate(limit=3)
    assert (report.records, report.error_count) == (2, 1)
    assert [str(error) for error in report.errors] == ["line 4: 'prompt' is empty"]
    assert InputFile(path).validate(limit=0) == ValidationReport(records=0)
    good = jsonl({"id": 1, "prompt": "P"}, {"id": 2, "prompt": "P"}, "junk")
    assert [record.id for record in InputFile(good).records(limit=2)] == ["1", "2"]
    assert list(InputFile(good).records(limit=0)) == []
    assert InputFile(good).validate(limit=10).error_count == 1


def test_negative_counts_are_refused(jsonl: Any) -> None:
    input_file = InputFile(jsonl({"id": 1, "prompt": "P"}))
    with pytest.raises(ValueError, match="limit"):
        input_file.validate(limit=-1)
    with pytest.raises(ValueError, match="max_errors"):
        input_file.validate(max_errors=-1)
    with pytest.raises(ValueError, match="limit"):
        input_file.records(limit=-1)


def test_records_sees_a_file_changed_after_validation(jsonl: Any) -> None:
    path = jsonl({"id": 1, "prompt": "P"})
    input_file = InputFile(path)
    assert input_file.validate().ok
    write_lines(path, [{"id": 1, "prompt": "P"}, {"id": 2, "prompt": 2}])
    records = input_file.records()
    assert next(records).id == "1"
    with pytest.raises(InputError, match=r"^line 2: 'prompt' must be a string, got a number$"):
        next(records)


# --- files and standard input ----------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        InputFile(tmp_path / "nope.jsonl")
    with pytest.raises(IsADirectoryError):
        InputFile(tmp_path)


class FakeStdin:
    """A ``sys.stdin`` whose bytes come from a `BytesIO`, counting how often it is read."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


STDIN_DATA = (
    b'{"id": 1, "prompt": "one"}\n\n'
    b'{"id": 2, "prompt": "two"}\n'
    b'{"id": 3, "prompt": "three"}'  # no final newline
)


@pytest.mark.parametrize("path", [None, "-", Path("-")])
def test_stdin_is_spooled_for_the_second_pass(
    monkeypatch: pytest.MonkeyPatch, path: str | Path | None
) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(STDIN_DATA))
    with InputFile(path) as input_file:
        assert input_file.name == "<stdin>"
        report = input_file.validate()
        assert (report.ok, report.records) == (True, 3)
        assert sys.stdin.buffer.read() == b""  # the first pass read all of it
        records = list(input_file.records())
        assert [(record.id, record.line) for record in records] == [("1", 1), ("2", 3), ("3", 4)]
        assert [record.messages[-1].content for record in input_file.records()] == [
            "one",
            "two",
            "three",
        ]
        spool = input_file._spool
        assert spool is not None
        assert Path(spool).read_bytes() == STDIN_DATA
    assert not Path(spool).exists()
    with pytest.raises(ValueError, match="closed"):
        input_file.validate()


def test_stdin_pass_stopped_early_continues_on_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(STDIN_DATA))
    with InputFile(None) as input_file:
        assert input_file.validate(limit=1).records == 1
        assert [record.id for record in input_file.records()] == ["1", "2", "3"]
        assert input_file.validate().records == 3


def test_stdin_records_first_without_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(STDIN_DATA))
    with InputFile("-") as input_file:
        records = input_file.records()
        assert next(records).id == "1"
        with pytest.raises(RuntimeError, match="must not overlap"):
            input_file.validate()
        assert [record.id for record in records] == ["2", "3"]
        assert input_file.validate().records == 3


def test_stdin_errors_have_line_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(b'{"id": 1, "prompt": "P"}\n\n\xff\n'))
    with InputFile(None) as input_file:
        [error] = input_file.validate().errors
        assert str(error) == "line 3: invalid UTF-8: byte 0xff at byte 1 of the line"


def test_text_only_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"id": 1, "prompt": "é"}\n'))
    with InputFile(None) as input_file:
        assert input_file.validate().ok
        assert [record.messages for record in input_file.records()] == [(user("é"),)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_spooled_like_stdin(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("wb") as writer:
            writer.write(STDIN_DATA)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with InputFile(fifo) as input_file:
            assert input_file.validate().records == 3
            assert [record.id for record in input_file.records()] == ["1", "2", "3"]
    finally:
        writer.join(timeout=10)


# --- the canonical request ---------------------------------------------------------------


def test_render_request_is_canonical(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "prompt": "P", "options": {"b": {"y": 1, "x": 2}, "a": 1}, "metadata": 1},
        {"options": {"a": 1, "b": {"x": 2, "y": 1}}, "prompt": "P", "id": 2, "metadata": 2},
    )
    first, second = InputFile(path).records()
    text = render_request(first)
    assert text == render_request(second)
    assert text == (
        '{"messages":[{"content":"P","role":"user"}],"options":{"a":1,"b":{"x":2,"y":1}}}'
    )


def test_render_request_depends_on_messages_and_options_only(jsonl: Any) -> None:
    path = jsonl(
        {"id": 1, "prompt": "P"},
        {"id": 2, "prompt": "P", "options": {"temperature": 0}},
        {"id": 3, "prompt": "P", "system": "S"},
        {"id": 4, "messages": [{"role": "user", "content": "P"}], "metadata": {"x": 1}},
    )
    texts = [render_request(record) for record in InputFile(path).records()]
    assert len(set(texts[:3])) == 3
    assert texts[3] == texts[0]


def test_render_and_parse_request_roundtrip(jsonl: Any) -> None:
    messages = [
        {"role": "system", "content": 'Sé 😀 \u2028 "quoted"'},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q2"},
    ]
    options = {"temperature": 0.7, "stop": ["\n"], "response_format": {"type": "json_object"}}
    record = only_record(jsonl({"id": 1, "messages": messages, "options": options}))
    text = render_request(record)
    assert text.isascii()
    assert parse_request(text) == (record.messages, options)


def test_a_lone_surrogate_is_refused_but_a_pair_is_one_character(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": 1, "prompt": "half \\ud800 pair"}\n{"id": 2, "prompt": "\\ud83d\\ude00"}\n'
    )
    report = InputFile(path).validate()
    assert [str(error) for error in report.errors] == [
        "line 1: a string holds the lone surrogate \\ud800, which is not valid Unicode"
    ]
    assert report.records == 1


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"messages": []}',
        '{"messages": {}, "options": {}}',
        '{"messages": [{"role": "tool", "content": "x"}], "options": {}}',
        '{"messages": [{"role": "user", "content": 1}], "options": {}}',
        '{"messages": [{"role": "user"}], "options": {}}',
    ],
)
def test_parse_request_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="render_request"):
        parse_request(text)


# --- scale ---------------------------------------------------------------------------------


def _big_lines(count: int) -> Iterator[bytes]:
    filler = "lorem ipsum dolor sit amet " * 8
    for number in range(count):
        line = {
            "id": f"item-{number:06d}",
            "prompt": f"Summarize document {number}: {filler}",
            "options": {"temperature": 0.2},
            "metadata": {"n": number},
        }
        yield json.dumps(line).encode() + b"\n"


def test_validation_memory_is_bounded_by_the_ids(tmp_path: Path) -> None:
    count = 100_000
    path = tmp_path / "big.jsonl"
    with path.open("wb") as file:
        file.writelines(_big_lines(count))
    bound = 20 * 1024 * 1024
    # Keeping the records would take far more than the bound: the file alone is larger.
    assert path.stat().st_size > bound
    input_file = InputFile(path)
    tracemalloc.start()
    try:
        report = input_file.validate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.ok, report.records) == (True, count)
    # The ids and their line numbers take about 13 MB; everything else is per line.
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB"
    assert sum(1 for _ in input_file.records(check_duplicates=False)) == count


class TestSeenIdsSpillToDisk:
    def test_old_ids_are_found_after_they_left_memory(self) -> None:
        from async_batch_llm.cli._input import SeenIds

        with SeenIds(memory_limit=3) as seen:
            for number in range(1, 11):
                assert seen.setdefault(f"id-{number}", number) == number
            assert seen.setdefault("id-1", 99) == 1  # spilled long ago
            assert seen.setdefault("id-10", 99) == 10  # still in memory
            assert seen.setdefault("id-11", 11) == 11

    def test_a_duplicate_far_apart_is_reported_with_both_lines(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from async_batch_llm.cli import _input

        monkeypatch.setattr(_input.SeenIds.__init__, "__defaults__", (4,))
        path = tmp_path / "in.jsonl"
        lines = [json.dumps({"id": f"a{i}", "prompt": "p"}) for i in range(20)]
        lines.append(json.dumps({"id": "a2", "prompt": "again"}))
        path.write_text("\n".join(lines) + "\n")
        report = _input.InputFile(path).validate()
        assert [str(e) for e in report.errors] == [
            "line 21: duplicate id 'a2' (first seen at line 3)"
        ]
