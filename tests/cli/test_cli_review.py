"""Regressions from the review of abl: each case failed before its fix."""

from __future__ import annotations

import signal
from typing import Any, Final

from test_cli_support import Cli, RecordingSimulator, StartSimulator, poll

MODEL: Final = "openai:gpt-4o-mini"


def rows(count: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "prompt": f"{prefix} prompt {i}"} for i in range(count)]


def test_refused_setups_exit_2_before_any_call_and_touch_nothing(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator: RecordingSimulator = start_simulator()
    url = ["--base-url", simulator.openai_base_url]
    cli.write_jsonl("in.jsonl", rows(3))
    (cli.directory / "keep.jsonl").write_text('{"kept": true}\n')
    (cli.directory / "notdb.txt").write_text("hello\n")
    (cli.directory / "adir").mkdir()
    run = ["run", "in.jsonl"]
    cases = [
        ([*run, "keep.jsonl", "-m", MODEL, *url, "--state", "notdb.txt"], "not an abl state"),
        ([*run, "in.jsonl", "-m", MODEL, *url], "same file"),
        ([*run, "o.jsonl", "-m", MODEL, *url, "--state", "o.jsonl"], "same file"),
        ([*run, "nodir/o.jsonl", "-m", MODEL, *url, "--state", "s.db"], "does not exist"),
        ([*run, "adir", "-m", MODEL, *url], "is a directory"),
        ([*run, "o2.jsonl", "-m", MODEL, *url, "--summary-json", "nodir/s"], "does not exist"),
        ([*run, "o3.jsonl", "-m", "openai:my-local", *url, "--max-cost", "1"], "has none"),
    ]
    results = cli.run_all(*(args for args, _ in cases))
    for (_, message), result in zip(cases, results, strict=True):
        assert result.returncode == 2, str(result)
        assert message in result.stderr, str(result)
        assert "Traceback" not in result.stderr, str(result)
    assert (cli.directory / "keep.jsonl").read_text() == '{"kept": true}\n'
    assert (cli.directory / "in.jsonl").read_text().count("\n") == 3
    assert sum(simulator.prompts.values()) == 0


def test_another_model_is_refused_before_any_call_and_the_state_keeps_its_model(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator: RecordingSimulator = start_simulator()
    url = ["--base-url", simulator.openai_base_url]
    cli.write_jsonl("tail.jsonl", rows(20)[-3:])
    cli.write_jsonl("all.jsonl", rows(20))
    first = cli.run("run", "tail.jsonl", "out.jsonl", "-m", MODEL, *url, "--state", "s.db")
    assert first.returncode == 0, str(first)
    calls = sum(simulator.prompts.values())
    other = cli.run("run", "all.jsonl", "out.jsonl", "-m", "openai:gpt-4o", *url, "--state", "s.db")
    assert other.returncode == 2, str(other)
    assert "--fresh" in other.stderr
    assert sum(simulator.prompts.values()) == calls, "the refused run called the provider"
    status = cli.run("status", "s.db", "--json")
    assert '"model": "openai:gpt-4o-mini"' in status.stdout, str(status)


def test_sigterm_drains_like_ctrl_c_and_a_queued_item_waits_for_no_rate_slot(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator: RecordingSimulator = start_simulator()
    cli.write_jsonl("in.jsonl", rows(40, "term"))
    args = ["run", "in.jsonl", "out.jsonl", "-m", MODEL, "--base-url", simulator.openai_base_url]
    simulator.hold(free=2)
    # 6 requests a minute: without the drain every queued item would wait 10 s for a slot.
    with cli.start(*args, "-c", "2", "--rpm", "6", name="term") as run:
        poll(lambda: simulator.stats.successes >= 2 and simulator.waiting >= 1, "calls in flight")
        run.process.send_signal(signal.SIGTERM)
        simulator.release()
        finished = run.wait()
    assert finished.returncode == 130, str(finished)
    lines = cli.read_jsonl("out.jsonl")
    ok = [line for line in lines if line["ok"]]
    assert len(ok) == sum(simulator.prompts.values())
    assert all(line["error"]["category"] == "interrupted" for line in lines if not line["ok"])


def test_a_lone_surrogate_is_a_bad_line(cli: Cli) -> None:
    cli.write_jsonl("in.jsonl", ['{"id": "a", "prompt": "x", "metadata": "\\udc80"}'])
    result = cli.run(
        "run", "in.jsonl", "o.jsonl", "-m", MODEL, "--base-url", "http://127.0.0.1:9/v1"
    )
    assert result.returncode == 2, str(result)
    assert "line 1: a string holds the lone surrogate" in result.stderr


def test_a_system_prompt_is_sent_when_the_chat_starts_with_the_assistant(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    seen: list[Any] = []

    def answer(request: Any) -> None:
        seen.append(request)

    simulator: RecordingSimulator = start_simulator(answer)
    messages = [
        {"role": "system", "content": "BE TERSE"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "question"},
    ]
    cli.write_jsonl("in.jsonl", [{"id": "a", "messages": messages}])
    result = cli.run(
        "run", "in.jsonl", "o.jsonl", "-m", MODEL, "--base-url", simulator.openai_base_url
    )
    assert result.returncode == 0, str(result)
    assert seen, "the simulator saw no request"
    assert "BE TERSE" in str(seen[0].body), seen[0]
