"""Two runs on one state file, and Ctrl-C (SIGINT) in the middle of a run.

The simulator holds replies at a gate (`RecordingSimulator.hold`), so each test knows which
calls are in flight when it acts: no sleeps, only polls of what the simulator saw.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Final

from test_cli_support import Background, Cli, RecordingSimulator, StartSimulator, poll

MODEL: Final = "openai:gpt-4o-mini"


def prompts_of(count: int, prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}-{i}", "prompt": f"{prefix} prompt {i}"} for i in range(count)]


def running(run: Background, condition: bool) -> bool:
    """`condition`, failing at once if `run` ended before it held."""
    if run.process.poll() is not None:
        raise AssertionError(f"the run ended early:\n{run.wait()}")
    return condition


def test_a_second_run_on_a_locked_state_exits_2(cli: Cli, start_simulator: StartSimulator) -> None:
    simulator: RecordingSimulator = start_simulator()
    rows = prompts_of(10, "lock")
    cli.write_jsonl("in.jsonl", rows)
    args = ["run", "in.jsonl", "out.jsonl", "-m", MODEL, "--base-url", simulator.openai_base_url]
    simulator.hold(free=3)
    with cli.start(*args, "-c", "1", name="first") as first:
        poll(
            lambda: running(first, simulator.waiting == 1 and simulator.stats.successes == 3),
            "the first run's fourth call",
        )

        second = cli.run(*args, "-c", "1")

        assert second.returncode == 2, str(second)
        assert "lock" in second.stderr.lower(), str(second)
        assert sum(simulator.prompts.values()) == 4, "the second run called the provider"
        simulator.release()
        finished = first.wait()

    assert finished.returncode == 0, str(finished)
    lines = cli.read_jsonl("out.jsonl")
    assert sorted(line["id"] for line in lines) == sorted(row["id"] for row in rows)
    assert all(line["ok"] for line in lines)
    assert simulator.prompts == Counter(row["prompt"] for row in rows)


def test_ctrl_c_finishes_calls_in_flight_and_the_rerun_resumes(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator: RecordingSimulator = start_simulator()
    rows = prompts_of(30, "sigint")
    cli.write_jsonl("in.jsonl", rows)
    args = ["run", "in.jsonl", "out.jsonl", "-m", MODEL, "--base-url", simulator.openai_base_url]
    args += ["-c", "2"]
    # Four calls are answered, the next two (one per worker) wait until the test lets them.
    simulator.hold(free=4)
    with cli.start(*args, name="first") as first:
        poll(
            lambda: running(first, simulator.waiting == 2 and simulator.stats.successes >= 4),
            "four answers and two calls in flight",
        )
        first.process.send_signal(signal.SIGINT)
        poll(lambda: running(first, "Stopping" in first.stderr()), "the run to say it stops")
        simulator.release()
        interrupted = first.wait()

    assert interrupted.returncode == 130, str(interrupted)
    assert "Resume with: abl run in.jsonl out.jsonl" in interrupted.stderr, str(interrupted)
    lines = cli.read_jsonl("out.jsonl")  # every line complete JSON
    # The counts add up: every line is ok, failed or stopped; items without one never started.
    stopped = sum(1 for line in lines if not line["ok"])
    expected = (f"{len(lines)} of 30 item(s) written in ", f"{30 - len(lines) + stopped} not run")
    assert all(part in interrupted.stderr for part in expected), interrupted.stderr
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)), f"duplicate lines: {ids}"
    committed = {line["id"] for line in lines if line["ok"]}
    # The four answered and the two in flight when Ctrl-C came; nothing was started after.
    assert len(committed) == 6, lines
    assert sum(simulator.prompts.values()) == 6
    for line in lines:
        if not line["ok"]:
            assert line["error"]["category"] == "interrupted", line
            assert line["attempts"] == 0, line

    rerun = cli.run(*args)

    assert rerun.returncode == 0, str(rerun)
    lines = cli.read_jsonl("out.jsonl")
    assert sorted(line["id"] for line in lines) == sorted(row["id"] for row in rows)
    for line in lines:
        assert line["ok"] is True, line
        assert line["replayed"] is (line["id"] in committed), line
    # Across both runs: one call per prompt; no committed result was paid for twice.
    assert simulator.prompts == Counter(row["prompt"] for row in rows)


def test_ctrl_c_twice_cancels_the_calls_in_flight(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator: RecordingSimulator = start_simulator()
    cli.write_jsonl("in.jsonl", prompts_of(10, "twice"))
    args = ["run", "in.jsonl", "out.jsonl", "-m", MODEL, "--base-url", simulator.openai_base_url]
    simulator.hold(free=2)
    with cli.start(*args, "-c", "2", name="first") as first:
        poll(
            lambda: running(first, simulator.waiting == 2 and simulator.stats.successes == 2),
            "two answers and two calls in flight",
        )
        first.process.send_signal(signal.SIGINT)
        poll(lambda: running(first, "Stopping" in first.stderr()), "the run to say it stops")
        # The held calls are never answered: only cancelling them ends the run.
        first.process.send_signal(signal.SIGINT)
        interrupted = first.wait()

    assert interrupted.returncode == 130, str(interrupted)
    assert "Resume with:" in interrupted.stderr, str(interrupted)
    lines = cli.read_jsonl("out.jsonl")
    assert len({line["id"] for line in lines}) == len(lines)
    assert sorted(line["id"] for line in lines if line["ok"]) == ["twice-0", "twice-1"]
    assert all(line["error"]["category"] == "interrupted" for line in lines if not line["ok"])
    assert sum(simulator.prompts.values()) == 4
