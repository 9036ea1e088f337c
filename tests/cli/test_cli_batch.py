"""``abl run --mode batch``: killed or interrupted while its jobs are pending, then rerun.

The simulator runs on the test's manual clock, so a job stays pending until the test moves
the clock: the kill always lands while the job is submitted and not ended. What must hold:

- the job is in the state file before the run waits for it (``abl status`` lists it);
- after ``kill -9`` (or Ctrl-C) the job is still running at the provider, not cancelled;
- the rerun collects it: every line ends in exactly one result, from the batch, and the
  simulator counts one submission in all;
- the results are priced at batch rates and the summary says what that saved.
"""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from typing import Any, Final

import pytest
from test_cli_support import Cli, StartSimulator, poll

from async_batch_llm.checkpoint import SQLiteCheckpointReader
from async_batch_llm.pricing import Pricer

MODELS: Final = {
    "openai": "openai:gpt-4o-mini",
    "anthropic": "anthropic:claude-haiku-4-5",
    "gemini": "google-gla:gemini-2.5-flash",
}
LINES: Final = 6


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _url(simulator: Any, provider: str) -> str:
    if provider == "openai":
        return str(simulator.openai_base_url)
    if provider == "anthropic":
        return str(simulator.anthropic_base_url)
    return str(simulator.gemini_base_url)


def _recorded_jobs(state: str) -> list[str]:
    try:
        with SQLiteCheckpointReader(state) as reader:
            return [key for key in reader.meta() if key.startswith("batch_job:")]
    except Exception:
        return []  # not created yet


@pytest.mark.parametrize(
    ("provider", "stop"),
    # Ctrl-C is the same for every provider: one is enough.
    [("openai", "kill"), ("anthropic", "kill"), ("gemini", "kill"), ("anthropic", "interrupt")],
)
def test_a_stopped_batch_run_resumes_its_jobs_without_submitting_again(
    cli: Cli, start_simulator: StartSimulator, provider: str, stop: str
) -> None:
    clock = ManualClock()
    simulator = start_simulator(clock=clock, batch_latency=100.0)
    cli.write_jsonl("in.jsonl", [{"id": f"q{n}", "prompt": f"question {n}"} for n in range(LINES)])
    args = [
        "run",
        "in.jsonl",
        "out.jsonl",
        "-m",
        MODELS[provider],
        "--base-url",
        _url(simulator, provider),
        "--mode",
        "batch",
        "--batch-poll-interval",
        "0.05",
        "--no-progress",
    ]
    state = str(cli.directory / "out.jsonl.abl-state")
    with cli.start(*args) as background:
        poll(lambda: _recorded_jobs(state), "the job record in the state file")
        if stop == "kill":
            background.process.send_signal(signal.SIGKILL)
            assert background.process.wait(30) == -signal.SIGKILL
        else:
            background.process.send_signal(signal.SIGINT)
            assert background.process.wait(60) == 130, background.stderr()
            assert "rerun" in background.stderr()
    sim_provider = "gemini" if provider == "gemini" else provider
    assert simulator.stats.batch_jobs_created[sim_provider] == 1
    assert simulator.stats.batch_jobs_cancelled[sim_provider] == 0

    status = cli.run("status", state, "--json")
    assert status.returncode == 0, str(status)
    (job,) = json.loads(status.stdout)["batch_jobs"]
    assert job["requests"] == LINES
    assert job["state"] != "ended"

    clock.now += 200.0  # the provider finishes the job
    rerun = cli.run(*args, "--summary-json", "summary.json")
    assert rerun.returncode == 0, str(rerun)
    assert "resumed" in rerun.stderr
    rows = cli.read_jsonl("out.jsonl")
    assert sorted(row["id"] for row in rows) == [f"q{n}" for n in range(LINES)]
    assert all(row["ok"] and row["via"] == "batch" for row in rows)
    assert {row["output"] for row in rows} == {f"Echo: question {n}" for n in range(LINES)}
    # One submission in all: the rerun polled the job the killed run had submitted.
    assert simulator.stats.batch_jobs_created[sim_provider] == 1
    assert simulator.stats.batch_requests == LINES

    summary = json.loads((cli.directory / "summary.json").read_text(), parse_float=Decimal)
    assert summary["via_batch"] == LINES
    assert summary["batch_jobs"] == {"completed": 1}
    batch, online = Pricer(MODELS[provider], batch=True), Pricer(MODELS[provider])
    assert batch.known
    priced = sum(batch.price(row["usage"]) or 0 for row in rows)
    assert sum(row["cost_usd"] for row in rows) == priced
    saved = sum((online.price(row["usage"]) or 0) for row in rows) - priced
    assert Decimal(summary["batch_saved_usd"]) == saved
    assert saved > 0
    assert "saved against online prices" in rerun.stderr
