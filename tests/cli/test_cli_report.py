"""``abl report``: the HTML report of a real run against the simulator, opened in Chromium.

The run meets a provider limit (429s with a retry hint) and permanent failures, so every
chart has something to draw. The report must open offline with every chart rendered, no
console or page error and no request, and show the run's own numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from test_cli_support import Cli, StartSimulator

from async_batch_llm.report import load_report
from async_batch_llm.testing.simulator import ProviderRequest, RawReply
from browser import open_page, png_size

LINES: Final = 40
REJECT: Final = "REJECT"
CHARTS: Final = [
    "chart-throughput",
    "chart-scopes",
    "chart-latency",
    "chart-attempts",
    "chart-cost-time",
    "chart-cost-model",
]
CHARTS_DRAWN: Final = """() => {
    const charts = [...document.querySelectorAll("div.chart")];
    return charts.length > 0 && charts.every(
        (c) => c.classList.contains("js-plotly-plot") && c.querySelector("svg.main-svg")
    );
}"""


def reject_some(call: ProviderRequest) -> Any:
    if REJECT not in call.prompt:
        return None
    body = {"error": {"message": f"Invalid request: {call.prompt}", "type": "invalid_request"}}
    return RawReply(body=body, status=400)


def test_the_report_of_a_real_run_opens_offline_with_every_chart(
    cli: Cli, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    # The first three calls get a 429 with a retry hint, whatever the pacing; a limit of 8
    # requests per 0.5 s window gives the scope a limit (from the headers) to ride.
    simulator = start_simulator(reject_some, rpm=8, window_seconds=0.5, latency=0.01)
    simulator.fail_next(3, status=429, retry_after=0.05)
    rows = [
        {"id": f"q{n}", "prompt": f"question {n}" + (f" {REJECT}" if n % 10 == 3 else "")}
        for n in range(LINES)
    ]
    cli.write_jsonl("in.jsonl", rows)
    run = cli.run(
        "run",
        "in.jsonl",
        "out.jsonl",
        "-m",
        "openai:gpt-4o-mini",
        "--base-url",
        str(simulator.openai_base_url),
        "-c",
        "8",
        "--no-progress",
    )
    assert run.returncode == 1, str(run)  # some lines failed
    assert simulator.stats.injected_errors == 3
    state = cli.directory / "out.jsonl.abl-state"

    made = cli.run("report", str(state), "-o", "report.html", "--title", "nightly run")
    assert made.returncode == 0, str(made)
    assert "wrote report.html" in made.stderr
    html_file = cli.directory / "report.html"
    assert html_file.stat().st_size < 6_000_000

    report = load_report(state)
    assert (report.total, report.succeeded, report.failed) == (LINES, LINES - 4, 4)
    assert report.rate_limited >= 3
    assert report.models == ["openai:gpt-4o-mini"]

    screenshot = tmp_path / "report.png"
    with open_page(html_file, wait_for=CHARTS_DRAWN, screenshot=screenshot) as page:
        assert page.console_errors == []
        assert page.page_errors == []
        assert page.requests == []
        for chart in CHARTS:
            traces = page.evaluate(f"() => document.getElementById('{chart}').data.length")
            assert traces > 0, chart
        assert page.count("p.no-data") == 0
        assert "nightly run" in page.text("h1")
        failed = page.text("#table-failed")
        for n in (3, 13, 23, 33):
            assert f"q{n}" in failed
        assert "Invalid request" in failed
        scopes = page.evaluate(
            "() => document.getElementById('chart-scopes').data.map((t) => t.name).join(' ')"
        )
        assert "gpt-4o-mini" in scopes
        limited = page.evaluate(
            """() => document.getElementById('chart-throughput').data
                .filter((t) => t.name.includes('429')).length"""
        )
        assert limited == 1
        latency = page.evaluate(
            "() => JSON.stringify(document.getElementById('chart-latency').data.map(t => t.x))"
        )
        assert "gpt-4o-mini" in latency
    width, height = png_size(screenshot)
    assert width >= 1280
    assert height > 2000
    assert screenshot.stat().st_size > 50_000
    assert report.notes == []


def test_report_of_a_missing_state_file_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("report", "nowhere.abl-state")
    assert result.returncode == 2
    assert "nowhere.abl-state does not exist" in result.stderr


def test_report_to_a_path_that_cannot_be_written_is_a_clear_error(
    cli: Cli, start_simulator: StartSimulator
) -> None:
    simulator = start_simulator()
    cli.write_jsonl("in.jsonl", [{"id": "a", "prompt": "x"}])
    url = str(simulator.openai_base_url)
    run = cli.run("run", "in.jsonl", "out.jsonl", "-m", "openai:gpt-4o-mini", "--base-url", url)
    assert run.returncode == 0, str(run)
    result = cli.run("report", "out.jsonl.abl-state", "-o", "missing-dir/report.html")
    assert result.returncode == 2
    assert "cannot write the report to missing-dir/report.html" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(cli.directory.glob("**/.report.html.tmp"))
