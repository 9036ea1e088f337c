"""``abl`` refusing bad input before any call, and the commands that call nothing.

Every bad input exits 2, says which line (or file, or model) is wrong, and sends nothing:
the whole file is checked before the first request.
"""

from __future__ import annotations

from typing import Any, Final

import pytest
from test_cli_support import Cli, RecordingSimulator, StartSimulator

MODEL: Final = "openai:gpt-4o-mini"


def good(i: int) -> dict[str, Any]:
    return {"id": f"q{i}", "prompt": f"Question {i}"}


#: A file with one bad line of each kind, and what stderr must say about each line.
BAD_LINES: Final[list[tuple[Any, str | None]]] = [
    (good(1), None),
    (good(2), None),
    ('{"id": "q3", "prompt": "unterminated', "invalid JSON: Unterminated string"),
    ({"prompt": "no id here"}, "missing 'id'"),
    ({"id": "q5"}, "missing 'prompt' or 'messages'"),
    ({"id": "q1", "prompt": "again"}, "duplicate id 'q1' (first seen at line 1)"),
    ({"id": "q7", "promt": "typo"}, "unknown key 'promt'"),
    ("", None),  # blank lines are skipped, and counted in the line numbers
    ("[1, 2]", "expected a JSON object, got an array"),
    ({"id": "q10", "prompt": 42}, "'prompt' must be a string, got a number"),
    (good(11), None),
]


@pytest.fixture
def simulator(start_simulator: StartSimulator) -> RecordingSimulator:
    return start_simulator()


def test_bad_inputs_exit_2_and_send_nothing(cli: Cli, simulator: RecordingSimulator) -> None:
    cli.write_jsonl("bad.jsonl", [line for line, _ in BAD_LINES])
    cli.write_jsonl("good.jsonl", [good(1), good(2)])
    (cli.directory / "broken.schema.json").write_text('{"type": "object",\n  oops}\n')
    run = ["run", "-m", MODEL, "--base-url", simulator.openai_base_url]
    cases = {
        "bad lines": (
            [*run, "bad.jsonl", "out-0.jsonl"],
            ["7 invalid line(s) in bad.jsonl; nothing was run", "did you mean 'prompt'?"],
        ),
        "missing input file": (
            [*run, "nope.jsonl", "out-1.jsonl"],
            ["cannot read nope.jsonl: No such file or directory"],
        ),
        "bad provider": (
            ["run", "good.jsonl", "out-2.jsonl", "-m", "mistral:large"],
            ["unsupported model 'mistral:large'"],
        ),
        "unreadable schema": (
            [*run, "good.jsonl", "out-3.jsonl", "--schema", "missing.schema.json"],
            ["cannot read the schema file missing.schema.json"],
        ),
        "schema not JSON": (
            [*run, "good.jsonl", "out-4.jsonl", "--schema", "broken.schema.json"],
            ["the schema file broken.schema.json is not valid JSON", "(line 2)"],
        ),
    }
    results = dict(zip(cases, cli.run_all(*(args for args, _ in cases.values())), strict=True))

    failures = []
    for number, (label, (_, says)) in enumerate(cases.items()):
        result = results[label]
        missing = [text for text in says if text not in result.stderr]
        if result.returncode != 2 or missing:
            failures.append(f"{label}: missing {missing}\n{result}")
        for leftover in (f"out-{number}.jsonl", f"out-{number}.jsonl.abl-state"):
            if (cli.directory / leftover).exists():
                failures.append(f"{label}: {leftover} was created\n{result}")
    # Each bad line is named, with what is wrong with it; the good ones are not.
    reported = {
        line.split(": ", 2)[1]: line
        for line in results["bad lines"].stderr.splitlines()
        if line.startswith("abl: bad.jsonl:line ")
    }
    expected = {
        f"bad.jsonl:line {number}": what
        for number, (_, what) in enumerate(BAD_LINES, 1)
        if what is not None
    }
    if sorted(reported) != sorted(expected):
        failures.append(f"lines reported: {sorted(reported)}, expected {sorted(expected)}")
    for where, what in expected.items():
        if what not in reported.get(where, ""):
            failures.append(f"{where}: {what!r} not in {reported.get(where)!r}")
    assert not failures, "\n\n".join(failures)
    assert simulator.requests == 0


def test_help_and_dry_run(cli: Cli, simulator: RecordingSimulator) -> None:
    cli.write_jsonl("in.jsonl", [good(i) for i in range(5)])
    main_help, run_help, simulate_help, dry_run = cli.run_all(
        ["--help"],
        ["run", "--help"],
        ["simulate", "--help"],
        ["run", "in.jsonl", "out.jsonl", "-m", MODEL, "--base-url",
         simulator.openai_base_url, "--dry-run"],
    )  # fmt: skip
    assert main_help.returncode == 0, str(main_help)
    for command in ("run", "status", "export", "cost", "simulate"):
        assert command in main_help.stdout
    assert run_help.returncode == 0, str(run_help)
    for option in ("--model", "--base-url", "--max-tokens-total", "--ordered", "--dry-run"):
        assert option in run_help.stdout
    assert simulate_help.returncode == 0, str(simulate_help)
    assert "--rpm" in simulate_help.stdout
    assert "abl simulate" in simulate_help.stdout

    assert dry_run.returncode == 0, str(dry_run)
    assert "5 valid request(s)" in dry_run.stderr
    assert "nothing was called" in dry_run.stderr
    assert not (cli.directory / "out.jsonl").exists()
    assert not (cli.directory / "out.jsonl.abl-state").exists()
    assert simulator.requests == 0
