"""``abl run`` end to end: subprocesses against the provider simulator.

Importing pydantic-ai takes a CLI subprocess a few seconds, so the first run of every scenario
is started at once by the module fixture `first_runs` (they overlap on the cores), and the
reruns by `reruns`; each test checks one scenario. Every scenario has a simulator of its own,
so what a simulator saw is what that scenario's runs sent.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
from test_cli_support import Cli, RecordingSimulator, Result, StartSimulator, parse_jsonl

from async_batch_llm.testing.simulator import ProviderRequest, RawReply

MODELS: Final = {
    "openai": "openai:gpt-4o-mini",
    "anthropic": "anthropic:claude-sonnet-4-5",
    "gemini": "google-gla:gemini-2.5-flash",
}
LINE_KEYS: Final = [
    "id",
    "ok",
    "output",
    "error",
    "usage",
    "attempts",
    "cost_usd",
    "model",
    "via",
    "replayed",
    "metadata",
]
REJECT: Final = "REJECT"
SCHEMA: Final = {
    "title": "summary",
    "type": "object",
    "properties": {"summary": {"type": "string"}, "words": {"type": "integer"}},
    "required": ["summary", "words"],
}
BUDGET_TOKENS: Final = 700


def reject_some(call: ProviderRequest) -> Any:
    """A permanent 400 for prompts that contain `REJECT`, the default reply otherwise."""
    if REJECT not in call.prompt:
        return None
    body = {
        "error": {
            "message": f"Invalid request: {call.prompt}",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return RawReply(body=body, status=400)


class Scenario:
    """One scenario: its simulator, input rows, command and (once run) results."""

    def __init__(self, simulator: RecordingSimulator, rows: list[dict[str, Any]]) -> None:
        self.simulator = simulator
        self.rows = rows
        self.args: list[str] = []
        self.stdin: str | None = None
        self.result: Result
        self.rerun: Result
        self.prompts_before_rerun: Counter[str] = Counter()
        self.requests_before_rerun = 0


def run_concurrently(cli: Cli, jobs: dict[str, tuple[list[str], str | None]]) -> dict[str, Result]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {
            name: pool.submit(cli.run, *args, stdin=stdin) for name, (args, stdin) in jobs.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def first_runs(module_cli: Cli, start_module_simulator: StartSimulator) -> dict[str, Scenario]:
    cli = module_cli
    scenarios: dict[str, Scenario] = {}

    def add(
        name: str, rows: list[dict[str, Any]], *, write: bool = True, **simulator: Any
    ) -> Scenario:
        scenario = Scenario(start_module_simulator(**simulator), rows)
        scenarios[name] = scenario
        if write:
            cli.write_jsonl(f"{name}.jsonl", rows)
        return scenario

    def run_args(name: str, scenario: Scenario, model: str = MODELS["openai"]) -> list[str]:
        url = scenario.simulator.openai_base_url
        if model.startswith("anthropic:"):
            url = scenario.simulator.anthropic_base_url
        elif model.startswith("google-gla:"):
            url = scenario.simulator.gemini_base_url
        return ["run", f"{name}.jsonl", f"{name}.out.jsonl", "-m", model, "--base-url", url]

    # 1. One run per provider route.
    for provider, model in MODELS.items():
        rows = [
            {
                "id": f"{provider}-{i}",
                "prompt": f"Question {i} for {provider}",
                "metadata": {"row": i, "tag": provider, "nested": [i, None, True]},
            }
            for i in range(20)
        ]
        scenario = add(provider, rows)
        scenario.args = [
            *run_args(provider, scenario, model),
            *["-c", "4", "--summary-json", f"{provider}.summary.json"],
        ]

    # 3a. Chat messages (a system prompt and history), first 6 lines, in input order
    # (random latencies make the answers come back in another order).
    rows = [
        {
            "id": f"chat-{i}",
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": f"Chat question {i}"},
            ],
        }
        for i in range(10)
    ]
    scenario = add("messages", rows, latency=(0.0, 0.3), seed=7)
    scenario.args = [*run_args("messages", scenario), "-c", "4", "--ordered", "--limit", "6"]

    # 3b. An OpenAI Batch API file on standard input, results on standard output.
    rows = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Batch prompt {i}"}],
                "max_tokens": 50,
            },
        }
        for i in range(8)
    ]
    scenario = add("batch", rows, write=False)
    scenario.stdin = "".join(json.dumps(row) + "\n" for row in rows)
    url = scenario.simulator.openai_base_url
    scenario.args = ["run", "-", "-", "-m", MODELS["openai"], "--base-url", url]
    scenario.args += ["--state", "batch.abl-state"]

    # 4 and 5. A template, and structured output from a JSON Schema.
    rows = [{"id": f"doc-{i}", "text": f"document number {i}", "lang": "en"} for i in range(6)]
    scenario = add("template", rows)
    (cli.directory / "summary.schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    scenario.args = [*run_args("template", scenario), "--template", "Summarize: {text}"]
    scenario.args += ["--schema", "summary.schema.json"]

    # 10. Some items fail with a permanent error (400).
    rows = [
        {"id": f"f-{i}", "prompt": f"Item {i} {REJECT if i % 3 == 0 else 'fine'}"}
        for i in range(10)
    ]
    scenario = add("failures", rows, answer=reject_some)
    scenario.args = [*run_args("failures", scenario), "--summary-json", "failures.summary.json"]

    # 9. A token budget that stops the run after a few items (one at a time: deterministic).
    filler = "lorem ipsum " * 35
    rows = [{"id": f"b-{i}", "prompt": f"Long question {i}: {filler}"} for i in range(10)]
    scenario = add("budget", rows)
    scenario.args = [*run_args("budget", scenario), "-c", "1"]
    scenario.args += ["--max-tokens-total", str(BUDGET_TOKENS)]

    # 6. An empty input.
    scenario = add("empty", [])
    scenario.args = [*run_args("empty", scenario), "--summary-json", "empty.summary.json"]

    results = run_concurrently(
        cli, {name: (scenario.args, scenario.stdin) for name, scenario in scenarios.items()}
    )
    for name, result in results.items():
        scenarios[name].result = result
    # What the first runs wrote, as reruns overwrite it.
    first = cli.directory / "first"
    first.mkdir()
    for pattern in ("*.out.jsonl", "*.summary.json"):
        for path in cli.directory.glob(pattern):
            shutil.copy2(path, first / path.name)
    return scenarios


def first_run_file(cli: Cli, name: str) -> Path:
    return cli.directory / "first" / name


def without_budget(args: list[str]) -> list[str]:
    at = args.index("--max-tokens-total")
    return args[:at] + args[at + 2 :]


@pytest.fixture(scope="module")
def reruns(first_runs: dict[str, Scenario], module_cli: Cli) -> dict[str, Scenario]:
    """The same OpenAI command again, the budget's command without the budget, and the
    Anthropic command with another model."""
    scenarios = {name: first_runs[name] for name in ("openai", "budget", "anthropic")}
    for scenario in scenarios.values():
        scenario.prompts_before_rerun = scenario.simulator.prompts
        scenario.requests_before_rerun = scenario.simulator.requests
    other_model = list(scenarios["anthropic"].args)
    other_model[other_model.index(MODELS["anthropic"])] = "anthropic:claude-haiku-4-5"
    results = run_concurrently(
        module_cli,
        {
            "openai": (scenarios["openai"].args, None),
            "budget": (without_budget(scenarios["budget"].args), None),
            "anthropic": (other_model, None),
        },
    )
    for name, result in results.items():
        scenarios[name].rerun = result
    return scenarios


def check_line_shape(line: dict[str, Any], model: str) -> None:
    assert list(line) == LINE_KEYS
    assert line["model"] == model
    assert set(line["usage"]) == {"input_tokens", "output_tokens", "cached_tokens"}
    assert type(line["attempts"]) is int


def ok_line(line: dict[str, Any]) -> None:
    """An answered line: ok, no error, tokens used, priced."""
    assert line["ok"] is True, line
    assert line["error"] is None
    assert line["usage"]["input_tokens"] > 0
    assert line["usage"]["output_tokens"] > 0
    assert isinstance(line["cost_usd"], Decimal), line["cost_usd"]
    assert line["cost_usd"] > 0


def total_cost(lines: list[dict[str, Any]]) -> Decimal:
    return sum((line["cost_usd"] for line in lines), Decimal(0))


# -- 1. the three provider routes -----------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_each_provider_route_answers_every_line(
    first_runs: dict[str, Scenario], module_cli: Cli, provider: str
) -> None:
    scenario = first_runs[provider]
    result = scenario.result
    assert result.returncode == 0, str(result)
    lines = module_cli.read_jsonl(first_run_file(module_cli, f"{provider}.out.jsonl"))
    assert len(lines) == 20
    by_id = {line["id"]: line for line in lines}
    assert sorted(by_id) == sorted(row["id"] for row in scenario.rows)
    for row in scenario.rows:
        line = by_id[row["id"]]
        check_line_shape(line, MODELS[provider])
        ok_line(line)
        assert line["output"] == f"Echo: {row['prompt']}"
        assert line["metadata"] == row["metadata"]
        assert line["replayed"] is False
        assert line["attempts"] == 1
    # One request per line, on this provider's wire format.
    assert scenario.simulator.prompts == Counter(row["prompt"] for row in scenario.rows)
    assert scenario.simulator.stats.by_provider == {provider: 20}

    summary = json.loads(first_run_file(module_cli, f"{provider}.summary.json").read_text())
    assert Decimal(summary["cost_usd_this_run"]) == total_cost(lines)
    assert Decimal(summary["cost_usd_all_runs"]) == total_cost(lines)
    assert summary["exit_code"] == 0
    assert (summary["total"], summary["ok"], summary["failed"]) == (20, 20, 0)
    assert summary["tokens"]["input_tokens"] == sum(x["usage"]["input_tokens"] for x in lines)
    assert summary["tokens"]["output_tokens"] == sum(x["usage"]["output_tokens"] for x in lines)
    assert summary["unpriced_items"] == 0


# -- 2. resume: a rerun replays everything --------------------------------------------------


def test_rerun_replays_every_result_without_calling(
    first_runs: dict[str, Scenario], reruns: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = reruns["openai"]
    assert scenario.result.returncode == 0, str(scenario.result)
    rerun = scenario.rerun
    assert rerun.returncode == 0, str(rerun)
    assert scenario.simulator.requests == scenario.requests_before_rerun, "the rerun called"
    lines = module_cli.read_jsonl("openai.out.jsonl")
    assert len(lines) == 20
    assert len({line["id"] for line in lines}) == 20
    first = {
        line["id"]: line
        for line in module_cli.read_jsonl(first_run_file(module_cli, "openai.out.jsonl"))
    }
    for line in lines:
        assert line["replayed"] is True
        # The replayed line is the committed result: output, tokens, cost, metadata.
        assert {**line, "replayed": False} == first[line["id"]]
    summary = json.loads((module_cli.directory / "openai.summary.json").read_text())
    assert summary["replayed"] == 20
    assert Decimal(summary["cost_usd_this_run"]) == 0
    assert Decimal(summary["cost_usd_all_runs"]) == total_cost(lines)


def test_another_model_on_the_same_state_exits_2(
    first_runs: dict[str, Scenario], reruns: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = reruns["anthropic"]
    assert scenario.result.returncode == 0, str(scenario.result)
    rerun = scenario.rerun
    assert rerun.returncode == 2, str(rerun)
    assert "--fresh" in rerun.stderr, str(rerun)
    assert scenario.simulator.requests == scenario.requests_before_rerun
    # The output of the first run is left as it was.
    output = module_cli.directory / "anthropic.out.jsonl"
    assert output.read_bytes() == first_run_file(module_cli, "anthropic.out.jsonl").read_bytes()
    assert not output.with_name(output.name + ".partial").exists()


# -- 3. chat messages and OpenAI batch files ------------------------------------------------


def test_messages_lines_with_ordered_and_limit(
    first_runs: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = first_runs["messages"]
    assert scenario.result.returncode == 0, str(scenario.result)
    lines = module_cli.read_jsonl("messages.out.jsonl")
    # --limit 6: the first six lines, --ordered: in input order.
    assert [line["id"] for line in lines] == [f"chat-{i}" for i in range(6)]
    for i, line in enumerate(lines):
        ok_line(line)
        assert line["output"] == f"Echo: Chat question {i}"
    calls = scenario.simulator.calls
    assert sorted(call.prompt for call in calls) == [f"Chat question {i}" for i in range(6)]
    for call in calls:
        # The system prompt and the history were sent along.
        messages = call.body["messages"]
        roles = [message["role"] for message in messages]
        assert roles == ["system", "user", "assistant", "user"]
        assert messages[0]["content"] == "Answer in one word."
        assert messages[2]["content"] == "Hi!"


def test_openai_batch_file_from_stdin_to_stdout(
    first_runs: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = first_runs["batch"]
    result = scenario.result
    assert result.returncode == 0, str(result)
    lines = parse_jsonl(result.stdout, "stdout")
    assert sorted(line["id"] for line in lines) == sorted(row["custom_id"] for row in scenario.rows)
    for line in lines:
        ok_line(line)
        number = line["id"].removeprefix("request-")
        assert line["output"] == f"Echo: Batch prompt {number}"
    calls = scenario.simulator.calls
    assert len(calls) == 8
    # The body's other keys are the request's options.
    assert {call.max_output_tokens for call in calls} == {50}
    assert (module_cli.directory / "batch.abl-state").is_file()


# -- 4 and 5. templates and schemas ---------------------------------------------------------


def test_template_and_schema(first_runs: dict[str, Scenario], module_cli: Cli) -> None:
    scenario = first_runs["template"]
    assert scenario.result.returncode == 0, str(scenario.result)
    # The simulator saw the rendered prompts.
    assert scenario.simulator.prompts == Counter(
        f"Summarize: {row['text']}" for row in scenario.rows
    )
    lines = module_cli.read_jsonl("template.out.jsonl")
    assert sorted(line["id"] for line in lines) == sorted(row["id"] for row in scenario.rows)
    for line in lines:
        ok_line(line)
        output = line["output"]
        assert isinstance(output, dict), output
        assert set(SCHEMA["required"]) <= set(output)
        assert isinstance(output["summary"], str)
        assert type(output["words"]) is int
    # The schema reached the provider.
    for call in scenario.simulator.calls:
        assert call.output_schema is not None
        assert set(call.output_schema["required"]) == set(SCHEMA["required"])


# -- 6. an empty input ----------------------------------------------------------------------


def test_an_empty_input_writes_an_empty_output(
    first_runs: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = first_runs["empty"]
    assert scenario.result.returncode == 0, str(scenario.result)
    assert (module_cli.directory / "empty.out.jsonl").read_text() == ""
    summary = json.loads((module_cli.directory / "empty.summary.json").read_text())
    assert (summary["total"], summary["done"], summary["exit_code"]) == (0, 0, 0)
    assert scenario.simulator.requests == 0


# -- 10. failed items -----------------------------------------------------------------------


def test_failed_items_exit_1_with_their_errors(
    first_runs: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = first_runs["failures"]
    result = scenario.result
    assert result.returncode == 1, str(result)
    lines = module_cli.read_jsonl("failures.out.jsonl")
    assert sorted(line["id"] for line in lines) == sorted(row["id"] for row in scenario.rows)
    rejected = {row["id"] for row in scenario.rows if REJECT in row["prompt"]}
    assert len(rejected) == 4
    for line in lines:
        check_line_shape(line, MODELS["openai"])
        if line["id"] not in rejected:
            ok_line(line)
            continue
        assert line["ok"] is False
        assert line["output"] is None
        error = line["error"]
        assert set(error) == {"type", "message", "category"}
        assert error["type"].isidentifier(), error
        assert "Invalid request" in error["message"], error
        assert error["category"], error
        assert error["category"] not in ("budget_exhausted", "interrupted"), error
    summary = json.loads((module_cli.directory / "failures.summary.json").read_text())
    assert (summary["exit_code"], summary["ok"], summary["failed"]) == (1, 6, 4)
    # The summary says why, not only how many: the category and the first error.
    category = lines[[line["id"] for line in lines].index(min(rejected))]["error"]["category"]
    assert summary["failures_by_category"] == {category: 4}
    assert "Invalid request" in summary["first_errors"][category]
    assert f"failed: 4 {category}, the first with " in result.stderr, result.stderr
    assert "Invalid request" in result.stderr


def test_permanent_errors_are_not_retried(first_runs: dict[str, Scenario], module_cli: Cli) -> None:
    """A 400 ("invalid request") fails the same way every time: one call, a category that
    says it is the request's fault (not ``unknown``), kept as failed in the state file."""
    scenario = first_runs["failures"]
    assert scenario.result.returncode == 1, str(scenario.result)
    status = module_cli.run("status", "failures.out.jsonl.abl-state", "--json")
    rejected = [line for line in module_cli.read_jsonl("failures.out.jsonl") if not line["ok"]]
    assert len(rejected) == 4
    calls = scenario.simulator.prompts
    assert {prompt: calls[prompt] for prompt in calls if REJECT in prompt} == {
        row["prompt"]: 1 for row in scenario.rows if REJECT in row["prompt"]
    }, "a 400 was sent again"
    for line in rejected:
        assert line["attempts"] == 1, line
        assert line["error"]["category"] != "unknown", line["error"]
    assert status.returncode == 0, str(status)
    info = json.loads(status.stdout)
    assert (info["succeeded"], info["failed"], info["unfinished"]) == (6, 4, 0)


# -- 11. status, cost and export ------------------------------------------------------------


def test_status_cost_and_export_read_the_state(
    first_runs: dict[str, Scenario], module_cli: Cli
) -> None:
    for name in ("openai", "failures"):
        assert first_runs[name].result.returncode in (0, 1), str(first_runs[name].result)
    status, cost, export, export_failed, failures_status = module_cli.run_all(
        ["status", "openai.out.jsonl.abl-state", "--json"],
        ["cost", "openai.out.jsonl.abl-state", "--json"],
        ["export", "openai.out.jsonl.abl-state", "openai.export.jsonl"],
        ["export", "failures.out.jsonl.abl-state", "--failed"],
        ["status", "failures.out.jsonl.abl-state", "--json"],
    )
    output = module_cli.read_jsonl("openai.out.jsonl")

    assert status.returncode == 0, str(status)
    info = json.loads(status.stdout)
    assert info["model"] == MODELS["openai"]
    counts = (info["succeeded"], info["failed"], info["unfinished"], info["entries"])
    assert counts == (20, 0, 0, 20)
    assert info["runs"] >= 1

    assert cost.returncode == 0, str(cost)
    costs = json.loads(cost.stdout)
    assert costs["model"] == MODELS["openai"]
    assert Decimal(costs["cost_usd"]) == total_cost(output)
    assert costs["by_state"]["succeeded"]["items"] == 20
    assert costs["by_state"]["succeeded"]["input_tokens"] == sum(
        line["usage"]["input_tokens"] for line in output
    )
    assert costs["unpriced_items"] == 0

    assert export.returncode == 0, str(export)
    exported = module_cli.read_jsonl("openai.export.jsonl")
    assert sorted(line["id"] for line in exported) == sorted(line["id"] for line in output)
    by_id = {line["id"]: line for line in output}
    for line in exported:
        assert line["ok"] is True
        assert line["output"] == by_id[line["id"]]["output"]
        assert line["usage"] == by_id[line["id"]]["usage"]
        assert line["cost_usd"] == by_id[line["id"]]["cost_usd"]

    assert export_failed.returncode == 0, str(export_failed)
    failed = parse_jsonl(export_failed.stdout, "export --failed")
    rejected = sorted(row["id"] for row in first_runs["failures"].rows if REJECT in row["prompt"])
    assert sorted(line["id"] for line in failed) == rejected
    for line in failed:
        assert line["ok"] is False
        assert "Invalid request" in line["error"]["message"]

    assert failures_status.returncode == 0, str(failures_status)
    info = json.loads(failures_status.stdout)
    assert (info["succeeded"], info["failed"] + info["unfinished"], info["entries"]) == (6, 4, 10)


# -- 9. budgets -----------------------------------------------------------------------------


def test_budget_stops_with_3_and_a_rerun_finishes(
    first_runs: dict[str, Scenario], reruns: dict[str, Scenario], module_cli: Cli
) -> None:
    scenario = reruns["budget"]
    result = scenario.result
    assert result.returncode == 3, str(result)
    assert "rerun with the budget you want" in result.stderr, str(result)
    assert "abl run budget.jsonl budget.out.jsonl" in result.stderr, str(result)
    first = module_cli.read_jsonl(first_run_file(module_cli, "budget.out.jsonl"))
    assert sorted(line["id"] for line in first) == sorted(row["id"] for row in scenario.rows)
    done = {line["id"] for line in first if line["ok"]}
    stopped = {line["id"] for line in first if not line["ok"]}
    assert done, "the budget admitted no call"
    assert stopped, "the budget stopped nothing"
    for line in first:
        if line["ok"]:
            ok_line(line)
        else:
            assert line["error"]["category"] == "budget_exhausted", line
            assert line["attempts"] == 0
    # The budget fails closed: what was spent fits in it.
    spent = sum(line["usage"]["input_tokens"] + line["usage"]["output_tokens"] for line in first)
    assert spent <= BUDGET_TOKENS
    assert sum(scenario.prompts_before_rerun.values()) == len(done)

    # The same command without the budget finished the rest, replaying what was done.
    assert scenario.rerun.returncode == 0, str(scenario.rerun)
    lines = module_cli.read_jsonl("budget.out.jsonl")
    assert sorted(line["id"] for line in lines) == sorted(row["id"] for row in scenario.rows)
    for line in lines:
        ok_line(line)
        assert line["replayed"] is (line["id"] in done), line
    new_calls = scenario.simulator.prompts - scenario.prompts_before_rerun
    prompts = {row["id"]: row["prompt"] for row in scenario.rows}
    assert new_calls == Counter(prompts[item_id] for item_id in stopped)
