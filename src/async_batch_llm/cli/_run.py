"""``abl run``: one JSONL file through the library, resumable, priced and within budget."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from async_batch_llm.budget import DEFAULT_OUTPUT_TOKENS_ESTIMATE, Budget
from async_batch_llm.checkpoint import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    ResumePolicy,
    SQLiteCheckpointStore,
)
from async_batch_llm.cli._input import InputFile, InputRecord, render_request
from async_batch_llm.cli._model import (
    ChatStrategy,
    HTTPStatusClassifier,
    ModelSpec,
    UsageError,
    build_strategy,
    load_schema,
    parse_model,
)
from async_batch_llm.cli._output import OutputWriter, error_parts, output_line, usd
from async_batch_llm.cli._progress import Counters, Progress
from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

__all__ = ["ExitCode", "RunOptions", "run"]

logger = logging.getLogger("async_batch_llm.cli")


class ExitCode:
    """The statuses ``abl`` exits with."""

    OK: Final = 0
    FAILED_ITEMS: Final = 1
    USAGE: Final = 2
    BUDGET: Final = 3
    CHECKPOINT_IO: Final = 4
    INTERRUPTED: Final = 130


#: Suffix of the state file kept beside OUTPUT (or INPUT when the output is stdout).
STATE_SUFFIX: Final = ".abl-state"
#: Keys the command line keeps in the store's metadata.
META_MODEL: Final = "abl.model"
META_INPUT: Final = "abl.input"
META_OUTPUT: Final = "abl.output"
META_IDENTITY: Final = "abl.identity"
#: Categories of results that are not the item's outcome: the run stopped before its call.
NOT_RUN: Final = frozenset({"budget_exhausted", "interrupted"})
_ERRORS_SHOWN: Final = 20


@dataclass
class RunOptions:
    """Everything ``abl run`` was asked to do."""

    input: str
    output: str | None
    model: str
    base_url: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    schema: str | None = None
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    max_cost: Decimal | None = None
    max_tokens_total: int | None = None
    state: str | None = None
    fresh: bool = False
    ordered: bool = False
    limit: int | None = None
    dry_run: bool = False
    progress: bool = True
    quiet: bool = False
    summary_json: str | None = None
    timeout: float = 120.0
    mode: str = "online"
    batch_deadline: float | None = None
    batch_poll_interval: float = 30.0
    argv: Sequence[str] = ()


def default_state(options: RunOptions) -> str | None:
    """The state file: ``--state``, else beside OUTPUT, else beside INPUT (``None``: both
    are standard streams, so there is nowhere to keep it)."""
    if options.state:
        return options.state
    for path in (options.output, options.input):
        if path not in (None, "-"):
            return f"{path}{STATE_SUFFIX}"
    return None


class StateFile(SQLiteCheckpointStore):
    """The SQLite store, recording what the command line ran in its metadata."""

    def __init__(self, path: str, meta: Mapping[str, str]) -> None:
        super().__init__(path)
        self._cli_meta = dict(meta)

    def __repr__(self) -> str:
        return repr(str(self.path))

    async def open(self, *, reset: bool = False) -> dict[str, str]:
        meta = await super().open(reset=reset)
        await self.save_meta(self._cli_meta)
        return meta


class _Interrupt:
    """Ctrl-C once: stop taking input and skip queued items; twice: cancel the run."""

    def __init__(self) -> None:
        self.stopping = False
        self.presses = 0
        self.task: asyncio.Task[Any] | None = None
        self.on_first: Any = None

    def __call__(self) -> None:
        self.presses += 1
        if self.presses == 1:
            self.stopping = True
            if self.on_first is not None:
                self.on_first()
        elif self.task is not None:
            self.task.cancel()


class JobWatcher(BaseObserver):
    """Follows the run's provider batch jobs for the progress line."""

    def __init__(self, counters: Counters, progress: Progress) -> None:
        self.counters = counters
        self.progress = progress

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is not ProcessingEvent.BATCH_JOB_UPDATED:
            return
        job_id = str(data.get("job_id"))
        known = job_id in self.counters.jobs
        self.counters.jobs[job_id] = _job_label(data)
        if not known:
            how = "resumed" if data.get("resumed") else "submitted"
            self.progress.print(
                f"batch job {job_id} {how}: {data.get('request_count', 0):,} request(s) "
                f"to {data.get('provider')}:{data.get('model')}"
            )


def _job_label(data: dict[str, Any]) -> str:
    """submitted, in progress, completed, expired, cancelled or failed."""
    status = str(data.get("provider_status") or "").lower()
    for word in ("expired", "cancel", "fail", "partially", "succeeded", "completed", "ended"):
        if word in status:
            return {
                "cancel": "cancelled",
                "fail": "failed",
                "partially": "completed",
                "succeeded": "completed",
                "ended": "completed",
            }.get(word, word)
    if data.get("state") == "ended":
        return "completed"
    return "in progress" if data.get("counts") or "progress" in status else "submitted"


def _print(text: str, *, quiet: bool = False) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _quiet_item_logs() -> None:
    # Each item's errors and retries are in its output line; logged too, they would bury
    # the warnings that matter (a budget spent, a provider's limit) on a long run.
    logging.getLogger("async_batch_llm._internal.item_runner").setLevel(logging.CRITICAL)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def _check_paths(options: RunOptions) -> None:
    """Refuse before any call what would fail after every call, or destroy a file."""
    state = default_state(options)
    named = {"INPUT": options.input, "OUTPUT": options.output, "--state": state}
    files = [(what, path) for what, path in named.items() if path is not None and path != "-"]
    for index, (what, path) in enumerate(files):
        for other_what, other in files[index + 1 :]:
            if _same_file(path, other):
                msg = f"{what} and {other_what} are the same file ({path}); give another name"
                raise UsageError(msg)
    for what, given in [("OUTPUT", options.output), ("--summary-json", options.summary_json)]:
        if given is None or given == "-":
            continue
        path = given
        if os.path.isdir(path):
            raise UsageError(f"{what} {path} is a directory")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"the directory of {what} {path} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"cannot write {what} {path}: its directory is not writable")
    if state is not None and os.path.isdir(state):
        raise UsageError(f"the state file {state} is a directory")


def _identity(options: RunOptions, schema: Mapping[str, Any] | None) -> str:
    """What a state file's results were made with: a rerun must match it."""
    return json.dumps(
        {"model": str(parse_model(options.model)), "options": options.options, "schema": schema},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


def _check_state(options: RunOptions, identity: str) -> None:
    """Refuse, before any call, a state file that is not one or holds another run."""
    from async_batch_llm.checkpoint import SQLiteCheckpointReader

    state = default_state(options)
    if state is None or not os.path.exists(state) or os.path.getsize(state) == 0:
        return  # a new state file (an empty one, e.g. from mktemp, is new too)
    try:
        with SQLiteCheckpointReader(state) as reader:
            stored = reader.meta().get(META_IDENTITY)
    except CheckpointError as exc:
        msg = f"{state} is not an abl state file ({exc}); pass another --state"
        raise UsageError(msg) from None
    if stored is not None and stored != identity and not options.fresh:
        before = json.loads(stored)
        msg = (
            f"the state file {state} holds results made with {before['model']} "
            f"(options {before['options']}, schema {'set' if before['schema'] else 'none'}); "
            "this run asks for something else. Rerun with --fresh to start over (its "
            "results are then forgotten), or use another --state."
        )
        raise UsageError(msg)


def run(options: RunOptions) -> int:
    """Run ``abl run`` and return its exit status."""
    from async_batch_llm.pricing import Pricer

    _quiet_item_logs()
    try:
        spec = parse_model(options.model)
        schema = load_schema(options.schema) if options.schema else None
        source = InputFile(options.input, template=options.template, system=options.system)
    except UsageError as exc:
        _print(f"abl: error: {exc}")
        return ExitCode.USAGE
    except ValueError as exc:  # a bad --template
        _print(f"abl: error: {exc}")
        return ExitCode.USAGE
    except OSError as exc:
        _print(f"abl: error: cannot read {options.input}: {exc.strerror or exc}")
        return ExitCode.USAGE
    try:
        _check_paths(options)
        _check_state(options, _identity(options, schema))
        if options.max_cost is not None and not Pricer(str(spec)).known:
            msg = f"--max-cost needs prices for {spec}, and genai-prices has none"
            raise UsageError(msg)
    except UsageError as exc:
        source.close()
        _print(f"abl: error: {exc}")
        return ExitCode.USAGE
    with source:
        report = source.validate(limit=options.limit, max_errors=_ERRORS_SHOWN)
        if not report.ok:
            for error in report.errors:
                _print(f"abl: {source.name}:{error}")
            if report.error_count > len(report.errors):
                _print(f"abl: ... and {report.error_count - len(report.errors)} more errors")
            _print(f"abl: {report.error_count} invalid line(s) in {source.name}; nothing was run")
            return ExitCode.USAGE
        if options.dry_run:
            return _dry_run(options, spec, report.records, source)
        if options.input != "-":
            options.input = os.path.abspath(options.input)
        if options.output not in (None, "-"):
            options.output = os.path.abspath(options.output)
        try:
            return asyncio.run(_run(options, spec, schema, source, report.records))
        except UsageError as exc:
            _print(f"abl: error: {exc}")
            return ExitCode.USAGE


def _dry_run(options: RunOptions, spec: ModelSpec, records: int, source: InputFile) -> int:
    from async_batch_llm.pricing import Pricer

    input_tokens = sum(
        len(render_request(record)) // 4 + 1 for record in source.records(limit=options.limit)
    )
    pricer = Pricer(str(spec), batch=options.mode != "online")
    cost = pricer.price({"input_tokens": input_tokens}) if pricer.known else None
    state = default_state(options)
    lines = [
        f"{records:,} valid request(s) in {source.name} for {spec}",
        f"about {input_tokens:,} input tokens"
        + ("" if cost is None else f", about {usd(cost)} before output tokens")
        + (" (at batch prices)" if options.mode != "online" and cost is not None else ""),
        f"state: {state or 'none (both input and output are standard streams)'}",
        "dry run: nothing was called",
    ]
    for line in lines:
        _print(line)
    return ExitCode.OK


async def _run(
    options: RunOptions,
    spec: ModelSpec,
    schema: dict[str, Any] | None,
    source: InputFile,
    total: int,
) -> int:
    from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig, RetryConfig
    from async_batch_llm.pricing import Pricer, price_data_version
    from async_batch_llm.rate_control import AdaptiveRateLimitStrategy

    batch = options.mode != "online"
    strategy: ChatStrategy = build_strategy(
        spec, base_url=options.base_url, options=options.options, schema=schema, batch=batch
    )
    if options.mode == "batch" and strategy.batch_api() is None:
        msg = f"--mode batch: {spec} has no batch API in pydantic-ai; use --mode auto or online"
        raise UsageError(msg)
    state = default_state(options)
    input_path = options.input
    model_name = str(spec)
    pricer = Pricer(model_name)
    batch_pricer = Pricer(model_name, batch=True)
    budget = None
    if options.max_cost is not None or options.max_tokens_total is not None:
        expected_output = options.options.get("max_tokens")
        budget = Budget(
            max_total_cost=options.max_cost,
            max_total_tokens=options.max_tokens_total,
            # Priced with genai-prices, batch requests at batch rates.
            model=model_name if pricer.known else None,
            output_tokens_estimate=expected_output
            if isinstance(expected_output, int) and expected_output >= 0
            else DEFAULT_OUTPUT_TOKENS_ESTIMATE,
        )
    interrupt = _Interrupt()
    interrupt.task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    checkpoint = None
    if state is not None:
        checkpoint = StateFile(
            state,
            {
                META_MODEL: model_name,
                META_INPUT: input_path,
                META_OUTPUT: options.output or "-",
                META_IDENTITY: _identity(options, schema),
            },
        )
    config = ProcessorConfig(
        max_workers=options.concurrency,
        timeout_per_item=options.timeout,
        retry=RetryConfig(max_attempts=3),
        mode=options.mode,  # type: ignore[arg-type]
        batch_deadline=options.batch_deadline,
        batch_poll_interval=options.batch_poll_interval,
        batch_max_poll_interval=max(options.batch_poll_interval, 600.0),
    )
    rate = AdaptiveRateLimitStrategy(rpm=options.rpm, tpm=options.tpm)
    counters = Counters(total=total)
    progress = Progress(
        counters,
        sys.stderr,
        live=options.progress and not options.quiet and sys.stderr.isatty(),
    )
    writer = OutputWriter(options.output)

    def items() -> Iterator[LLMWorkItem[str, Any, Any]]:
        warned_model = False
        for record in source.records(limit=options.limit, check_duplicates=False):
            if interrupt.stopping:
                return
            if record.model and record.model != spec.name and not warned_model:
                warned_model = True
                progress.print(
                    f"abl: note: line {record.line} names model {record.model!r}; every "
                    f"line runs on {model_name} (-m)"
                )
            yield LLMWorkItem(
                item_id=record.id,
                strategy=strategy,
                prompt=render_request(record),
                context=record,
            )

    processor: Any = ParallelBatchProcessor(
        config=config,
        observers=[JobWatcher(counters, progress)] if batch else [],
        rate_limit_strategy=rate,
        error_classifier=HTTPStatusClassifier(),
        checkpoint=checkpoint,
        resume=ResumePolicy.NONE if options.fresh else ResumePolicy.REUSE_SUCCESSES,
        budget=budget,
    )
    counters.rate_limits = lambda: processor._stats.rate_limit_count

    def stop_gracefully() -> None:
        processor.drain()
        if batch and interrupt.task is not None:
            if state is None:
                # Nothing could collect them later: they are cancelled at the provider.
                progress.print("Stopping: cancelling the batch jobs (no state file) ...")
            else:
                # Submitted jobs are in the state file: a rerun collects them.
                progress.print("Stopping: the batch jobs keep running; rerun to collect them ...")
            interrupt.task.cancel()
            return
        progress.print("Stopping: finishing the calls in flight (Ctrl-C again to cancel them) ...")

    interrupt.on_first = stop_gracefully
    tokens = {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}
    # Failed items by category, and the first error of each: the summary says why.
    failures: dict[str, int] = {}
    first_errors: dict[str, str | None] = {}
    all_runs_cost = Decimal(0)
    exit_code = ExitCode.OK
    budget_stopped = False
    started = time.monotonic()
    if not options.quiet and options.progress:
        progress.start()
    try:
        async with processor:
            async for result in processor.stream(items(), ordered=options.ordered):
                record: InputRecord = result.context
                category = result.error_category
                error: dict[str, Any] | None
                if not result.success and category == "interrupted" and interrupt.stopping:
                    error = {
                        "type": "Interrupted",
                        "message": "the run was stopping; not called (again)",
                        "category": category,
                    }
                else:
                    error = error_parts(result.error, category)
                usage: Any = result.token_usage
                via_batch = result.via == "batch"
                cost = None
                if pricer.known:
                    cost = (batch_pricer if via_batch else pricer).price(usage)
                if via_batch and not result.replayed and cost is not None:
                    online_cost = pricer.price(usage)
                    if online_cost is not None:
                        counters.batch_saved += online_cost - cost
                if via_batch:
                    counters.via_batch += 1
                counters.done += 1
                if result.replayed:
                    counters.replayed += 1
                elif usage:
                    for key in tokens:
                        tokens[key] += usage.get(key, 0)
                if cost is None:
                    if usage and usage.get("total_tokens"):
                        counters.unpriced += 1
                else:
                    all_runs_cost += cost
                    if not result.replayed:
                        counters.cost += cost
                if result.success:
                    counters.ok += 1
                elif category in NOT_RUN:
                    counters.not_run += 1
                    budget_stopped = budget_stopped or category == "budget_exhausted"
                else:
                    counters.failed += 1
                    kind = category or "error"
                    failures[kind] = failures.get(kind, 0) + 1
                    first_errors.setdefault(kind, result.error)
                writer.write(
                    output_line(
                        item_id=result.item_id,
                        ok=result.success,
                        output=result.output,
                        error=error,
                        usage=usage,
                        attempts=result.attempts,
                        cost=cost,
                        model=model_name,
                        replayed=result.replayed,
                        metadata=record.metadata,
                        via=result.via,
                    )
                )
    except asyncio.CancelledError:
        exit_code = ExitCode.INTERRUPTED
    except (CheckpointLockedError, CheckpointMismatchError) as exc:
        await progress.stop()
        writer.discard()
        hint = (
            " (rerun with --fresh to start over)"
            if isinstance(exc, CheckpointMismatchError)
            else ""
        )
        _print(f"abl: error: {exc}{hint}")
        return ExitCode.USAGE
    except CheckpointError as exc:
        await progress.stop()
        if writer.lines:
            # What was committed before the failure is still worth having.
            writer.finish()
        else:
            writer.discard()
        _print(f"abl: error: the state file failed: {exc}")
        return ExitCode.CHECKPOINT_IO
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await progress.stop()
    writer.finish()
    if interrupt.presses:
        exit_code = ExitCode.INTERRUPTED
    elif budget_stopped:
        exit_code = ExitCode.BUDGET
    elif counters.failed:
        exit_code = ExitCode.FAILED_ITEMS
    summary = {
        "exit_code": exit_code,
        "total": total,
        "done": counters.done,
        "ok": counters.ok,
        "failed": counters.failed,
        "replayed": counters.replayed,
        "not_run": counters.not_run + max(0, total - counters.done),
        "stopped": counters.not_run,
        "failures_by_category": dict(sorted(failures.items())),
        "first_errors": dict(sorted(first_errors.items())),
        "wall_seconds": round(time.monotonic() - started, 3),
        "tokens": tokens,
        "cost_usd_this_run": format(counters.cost, "f"),
        "cost_usd_all_runs": format(all_runs_cost, "f"),
        "unpriced_items": counters.unpriced,
        "prices": price_data_version(),
        "rate_limits": processor._stats.rate_limit_count,
        "mode": options.mode,
        "via_batch": counters.via_batch,
        "batch_jobs": dict(counters.jobs_by_state()),
        "batch_saved_usd": format(counters.batch_saved, "f"),
        "model": model_name,
        "output": options.output or "-",
        "state": state,
    }
    _summarize(summary, options, exit_code)
    if options.summary_json:
        with open(options.summary_json, "w", encoding="utf-8") as file:  # noqa: ASYNC230
            file.write(json.dumps(summary, indent=2) + "\n")
    return exit_code


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _summarize(summary: dict[str, Any], options: RunOptions, exit_code: int) -> None:
    if options.quiet:
        return
    tokens = summary["tokens"]
    not_run = f"{summary['not_run']:,} not run"
    if summary["stopped"] and summary["not_run"] > summary["stopped"]:
        not_started = summary["not_run"] - summary["stopped"]
        not_run += f" ({summary['stopped']:,} stopped, {not_started:,} not started)"
    lines = [
        f"{summary['done']:,} of {summary['total']:,} item(s) written in "
        f"{summary['wall_seconds']:.1f}s: {summary['ok']:,} ok, {summary['failed']:,} failed "
        f"({summary['replayed']:,} of these replayed), {not_run}",
        f"tokens this run: {tokens['input_tokens']:,} in ({tokens['cached_input_tokens']:,} "
        f"cached), {tokens['output_tokens']:,} out; {summary['rate_limits']:,} rate limit(s)",
        f"cost: {usd(summary['cost_usd_this_run'])} this run, "
        f"{usd(summary['cost_usd_all_runs'])} for all results "
        f"({summary['unpriced_items']:,} unpriced; prices: {summary['prices']})",
    ]
    for name, count in summary["failures_by_category"].items():
        lines.append(
            f"failed: {count:,} {name}, the first with "
            f"{_shortened(summary['first_errors'][name] or 'no error message')} "
            "(every error is in its output line)"
        )
    if summary["mode"] != "online":
        jobs = ", ".join(f"{n} {state}" for state, n in sorted(summary["batch_jobs"].items()))
        lines.append(
            f"batch: {summary['via_batch']:,} result(s) from batch jobs ({jobs or 'no jobs'}); "
            f"{usd(summary['batch_saved_usd'])} saved against online prices"
        )
    if exit_code in (ExitCode.INTERRUPTED, ExitCode.BUDGET):
        why = "interrupted" if exit_code == ExitCode.INTERRUPTED else "stopped by the budget"
        command = shlex.join(["abl", *options.argv]) if options.argv else "the same command"
        if summary["state"] is None:
            lines.append(f"{why}; with no state file (pass --state) nothing can be resumed")
        elif exit_code == ExitCode.BUDGET:
            lines.append(
                f"{why}; committed results are kept. The budget is per run: rerun with the "
                f"budget you want for the rest (the same command spends it again): {command}"
            )
        else:
            lines.append(f"{why}; committed results are kept. Resume with: {command}")
    for line in lines:
        _print(line)
