"""The ``abl`` commands (click)."""

from __future__ import annotations

import contextlib
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from async_batch_llm.checkpoint import CheckpointError
from async_batch_llm.cli._output import usd
from async_batch_llm.cli._run import ExitCode, RunOptions, run

__all__ = ["main"]

_RUN_HELP = """Run one LLM request per line of INPUT (JSONL) and write one result line per
request to OUTPUT (JSONL). Use - for standard input / output.

Input lines: {"id", "prompt"} or {"id", "messages"} (OpenAI chat shape), with optional
"system", "options" and "metadata"; or any fields, rendered with --template; or lines of
an OpenAI Batch API file ("custom_id", "method", "url", "body"). The whole file is checked
before the first call.

Rerunning the same command resumes: results committed to the state file are replayed, not
paid for again. Ctrl-C once finishes the calls in flight and exits 130 (resumable); twice
cancels them.

Exit status: 0 all ok, 1 some items failed, 2 usage/input/state error, 3 stopped by a
budget (resumable), 4 state file I/O error, 130 interrupted (resumable).
"""


def _decimal(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount of dollars") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter("must be a finite amount >= 0")
    return amount


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class _Group(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Usage errors exit 2 (click's default); keep it and make KeyboardInterrupt 130.
        try:
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(ExitCode.INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="async-batch-llm", prog_name="abl")
def cli() -> None:
    """async-batch-llm from the command line: JSONL in, JSONL out."""


@cli.command("run", help=_RUN_HELP)
@click.argument("input_path", metavar="INPUT", type=str)
@click.argument("output_path", metavar="[OUTPUT]", required=False, type=str)
@click.option("-m", "--model", required=True, help="provider:model, e.g. openai:gpt-4o-mini")
@click.option("--base-url", help="an OpenAI-compatible (or provider) server to call instead")
@click.option("-s", "--system", help="system prompt for lines without their own")
@click.option(
    "-o",
    "--option",
    "options",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="a generation option (JSON value), e.g. -o temperature 0.2; repeatable",
)
@click.option("--template", help="render prompts from fields, e.g. 'Summarize: {text}'")
@click.option("--schema", type=click.Path(dir_okay=False), help="JSON Schema for structured output")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="requests per minute")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="tokens per minute")
@click.option("--max-cost", callback=_decimal, metavar="USD", help="stop spending past USD")
@click.option(
    "--max-tokens-total", type=click.IntRange(min=0), metavar="N", help="stop past N tokens"
)
@click.option("--state", help="state file (default: OUTPUT.abl-state, or INPUT.abl-state)")
@click.option("--fresh", is_flag=True, help="forget the state file's results and start over")
@click.option("--ordered", is_flag=True, help="write results in input order")
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="only the first N lines")
@click.option("--dry-run", is_flag=True, help="check the input and estimate; call nothing")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0)
@click.option(
    "--mode",
    type=click.Choice(["online", "batch", "auto"]),
    default="online",
    show_default=True,
    help="online calls, provider batch jobs (half price, up to a day), or batch then online",
)
@click.option(
    "--batch-deadline",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="cancel a job still running this long after submission (auto: run the rest online)",
)
@click.option(
    "--batch-poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="first wait before checking a batch job (it grows by half per check)",
)
@click.option("--no-progress", is_flag=True, help="no progress display")
@click.option("-q", "--quiet", is_flag=True, help="no progress and no summary")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="write the summary here")
def run_command(input_path: str, output_path: str | None, **kwargs: Any) -> None:
    options = RunOptions(
        input=input_path,
        output=output_path,
        model=kwargs["model"],
        base_url=kwargs["base_url"],
        system=kwargs["system"],
        options={key: _option_value(value) for key, value in kwargs["options"]},
        template=kwargs["template"],
        schema=kwargs["schema"],
        concurrency=kwargs["concurrency"],
        rpm=kwargs["rpm"],
        tpm=kwargs["tpm"],
        max_cost=kwargs["max_cost"],
        max_tokens_total=kwargs["max_tokens_total"],
        state=kwargs["state"],
        fresh=kwargs["fresh"],
        ordered=kwargs["ordered"],
        limit=kwargs["limit"],
        dry_run=kwargs["dry_run"],
        progress=not kwargs["no_progress"],
        quiet=kwargs["quiet"],
        summary_json=kwargs["summary_json"],
        timeout=kwargs["timeout"],
        mode=kwargs["mode"],
        batch_deadline=kwargs["batch_deadline"],
        batch_poll_interval=kwargs["batch_poll_interval"],
        argv=sys.argv[1:],
    )
    try:
        code = run(options)
    except KeyboardInterrupt:
        # Before the batch started (while the input was being checked): nothing ran.
        click.echo("abl: interrupted before any call", err=True)
        code = ExitCode.INTERRUPTED
    sys.exit(code)


def _state_command(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except CheckpointError as exc:
        click.echo(f"abl: error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)


@cli.command("status")
@click.argument("state")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option(
    "-w", "--watch", is_flag=True, help="show the run's progress live until Ctrl-C (while it runs)"
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="seconds between refreshes of --watch",
)
def status_command(state: str, as_json: bool, watch: bool, interval: float) -> None:
    """What the state file STATE holds: results by state, the model, the runs.

    With --watch: items done, the rates now (items, calls and 429s per minute), cost,
    each rate-limit scope's limit against the rate achieved and latency per model,
    refreshed while another process runs the batch.
    """
    if watch:
        if as_json:
            raise click.UsageError("--watch draws a live view; it cannot be combined with --json")
        from rich.console import Console

        from async_batch_llm.cli._watch import watch as watch_state

        with contextlib.suppress(KeyboardInterrupt):  # stopping the view is not an error
            watch_state(state, interval=interval, console=Console(stderr=False))
        return
    from async_batch_llm.cli._state import status

    info = _state_command(status, state)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"{info['state']}: {info['entries']:,} item(s) — {info['succeeded']:,} succeeded, "
        f"{info['failed']:,} failed, {info['unfinished']:,} unfinished"
    )
    click.echo(f"model: {info['model']}; {info['runs']} run(s); last writer: {info['writer']}")
    click.echo(f"input: {info['input']}; output: {info['output']}")
    jobs = info["batch_jobs"]
    if jobs:
        click.echo(f"batch jobs: {len(jobs)}")
        for job in jobs:
            counts = ", ".join(f"{n} {name}" for name, n in sorted(job["counts"].items()))
            click.echo(
                f"  {job['id']} ({job['provider']}:{job['model']}): {job['provider_status']}, "
                f"{job['requests']:,} request(s)" + (f" ({counts})" if counts else "")
            )


@cli.command("report")
@click.argument("state")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="the HTML file to write (default: STATE with .html added)",
)
@click.option("--title", help="the report's title")
def report_command(state: str, output: str | None, title: str | None) -> None:
    """Write a self-contained HTML report of the state file STATE.

    Throughput and 429s over time, each rate-limit scope's limit against the rate
    achieved, latency per model, attempts per item, cost over time and by model, the
    slowest and the failed items. One file: it opens offline, with no server.
    """
    from async_batch_llm.report import write_report

    if not Path(state).exists():
        click.echo(f"abl: error: {state} does not exist", err=True)
        sys.exit(ExitCode.USAGE)
    target = output or f"{state}.html"
    try:
        path = _state_command(write_report, state, target, title=title)
    except OSError as exc:
        click.echo(f"abl: error: cannot write the report to {target}: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 1_000_000:.1f} MB)", err=True)


@cli.command("export")
@click.argument("state")
@click.argument("output", required=False)
@click.option("--failed", is_flag=True, help="only the failed and unfinished items")
def export_command(state: str, output: str | None, failed: bool) -> None:
    """Write the results stored in STATE as JSONL to OUTPUT (default: standard output)."""
    from async_batch_llm.cli._state import export

    count = _state_command(export, state, output, failed_only=failed)
    if output not in (None, "-"):
        click.echo(f"{count:,} line(s) written to {output}", err=True)


@cli.command("cost")
@click.argument("state")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def cost_command(state: str, as_json: bool) -> None:
    """Tokens and cost of the results stored in STATE."""
    from async_batch_llm.cli._state import cost

    info = _state_command(cost, state)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for name, bucket in sorted(info["by_state"].items()):
        click.echo(
            f"{name:>12}: {bucket['items']:,} item(s), {bucket['input_tokens']:,} in, "
            f"{bucket['output_tokens']:,} out, {usd(bucket['cost_usd'])}"
        )
    click.echo(
        f"total: {usd(info['cost_usd'])} for {info['model']} "
        f"({info['unpriced_items']:,} unpriced; prices: {info['prices']})"
    )


@cli.command(
    "simulate",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def simulate_command(args: tuple[str, ...]) -> None:
    """Serve the bundled provider simulator (try: abl simulate --help)."""
    from async_batch_llm.testing.simulator._cli import main as simulator_main

    sys.exit(simulator_main(list(args), prog="abl simulate"))


def main() -> None:
    """The ``abl`` / ``async-batch-llm`` entry point."""
    cli()
