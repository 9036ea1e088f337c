"""Rate control against the provider simulator: AdaptiveRateLimitStrategy vs the 0.7.2 default.

Every scenario runs once per side in the same process, each time against a fresh
``ProviderSimulator`` (in-process, 127.0.0.1) through the real SDK clients:

- **adaptive** — ``AdaptiveRateLimitStrategy`` with the response-header hook
  (``httpx_event_hooks()``) on the SDK's HTTP client;
- **0.7.2 default** — the processor's default ``ExponentialBackoffStrategy`` built from the
  ``RateLimitConfig`` defaults (300 s cooldown, x1.5 per consecutive 429, 600 s ceiling, 50
  slow-start items from 2 s down to 0.1 s), every duration divided by the time compression.

Time is compressed by ``COMPRESSION`` (10): the simulator's rate-limit "minute" is 6 s, its
latency 20 ms instead of 200 ms, and every other provider-side duration (cooldowns,
slow-start delays, retry backoff, the stability target) is divided by the same factor, so
one benchmark second stands for ten seconds at a provider. Limits are per simulated minute
(``rpm=300`` means 300 requests per 6 s window). The quota scenario's "fail within 1 s"
measures the library's own reaction and stays in wall time. SDK retries are off on both
sides; the processor owns retrying.

The ideal completion time comes from the quota: the simulator's buckets start full, so N
items at R per window finish at ``max(0, N - R) / R * window + latency`` (tokens likewise,
with the per-request token cost).

Usage::

    python benchmarks/rate_control.py               # every scenario, writes docs/benchmarks.md
    python benchmarks/rate_control.py --quick       # smaller batches, scenarios 1, 3 and 6
    python benchmarks/rate_control.py --scenario 3  # one scenario (repeat the flag for more)

Only a full run (no ``--quick``, every scenario) rewrites the table between the
``rate-control`` markers in ``docs/benchmarks.md``. ``--quick`` is a smoke test: with half
the work beyond the first full bucket, the CPU-bound start weighs more and the ratios are
not comparable with the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx2
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BaseObserver,
    ExponentialBackoffStrategy,
    GeminiStrategy,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitStrategy,
    RetryConfig,
)
from async_batch_llm.models import GeminiModel, gemini_client
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, httpx_event_hooks
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

#: Provider seconds per benchmark second.
COMPRESSION = 10.0
#: The simulator's rate-limit "minute".
WINDOW = 60.0 / COMPRESSION
#: Latency of a successful reply (200 ms at provider scale).
LATENCY = 0.2 / COMPRESSION
#: Length of the sliding window that decides when throughput is stable again (scenario 4).
STABLE_WINDOW = 20.0 / COMPRESSION

ADAPTIVE = "adaptive"
LEGACY = "0.7.2 default"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START_MARKER = "<!-- rate-control:start -->"
END_MARKER = "<!-- rate-control:end -->"


# -- the two sides --------------------------------------------------------------------------


def legacy_strategy() -> ExponentialBackoffStrategy:
    """The processor's default strategy for ``RateLimitConfig()``, durations compressed."""
    return ExponentialBackoffStrategy(
        initial_cooldown=300.0 / COMPRESSION,
        max_cooldown=600.0 / COMPRESSION,
        backoff_multiplier=1.5,
        slow_start_items=50,
        slow_start_initial_delay=2.0 / COMPRESSION,
        slow_start_final_delay=0.1 / COMPRESSION,
    )


def adaptive_strategy() -> AdaptiveRateLimitStrategy:
    """The adaptive strategy with its defaults, told the simulator's window length."""
    return AdaptiveRateLimitStrategy(window_seconds=WINDOW)


def retry_config(max_attempts: int) -> RetryConfig:
    """``RetryConfig()`` with its waits compressed."""
    return RetryConfig(
        max_attempts=max_attempts, initial_wait=1.0 / COMPRESSION, max_wait=60.0 / COMPRESSION
    )


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One workload; ``simulator`` holds the ``SimulatorConfig`` fields that differ."""

    number: str
    title: str
    target: str
    wire: str  # "openai" (pydantic-ai + OpenAI SDK) or "gemini" (google-genai)
    items: int
    workers: int
    simulator: dict[str, Any]
    prompt_chars: int = 40
    max_tokens: int | None = None
    max_attempts: int = 3
    #: ``(seconds after the start, rpm)`` changes of the simulator's request limit.
    limit_changes: tuple[tuple[float, float], ...] = ()
    #: Sides to run: (label, strategy factory, simulator overrides).
    sides: tuple[tuple[str, Callable[[], RateLimitStrategy], dict[str, Any]], ...] = (
        (ADAPTIVE, adaptive_strategy, {}),
        (LEGACY, legacy_strategy, {}),
    )
    #: A side still running after this many provider seconds (or three ideals) is stopped.
    cap: float = 300.0

    @property
    def request_cost(self) -> int:
        """Tokens the simulator books per request: the prompt estimate plus ``max_tokens``."""
        return math.ceil(self.prompt_chars / 4) + (self.max_tokens or 0)

    def ideal(self) -> float | None:
        """Seconds to serve every item from buckets that start full, plus one latency
        (``None`` without a rate limit)."""
        rpm, tpm = self.simulator.get("rpm"), self.simulator.get("tpm")
        if rpm is None and tpm is None:
            return None
        times = [0.0]
        if rpm is not None:
            times.append(_time_to_serve(self.items, rpm, self.limit_changes))
        if tpm is not None:
            times.append(max(0.0, self.items * self.request_cost - tpm) / tpm * WINDOW)
        return max(times) + LATENCY

    def deadline(self) -> float:
        """When a side is stopped: ``cap`` provider seconds, or three ideals if longer."""
        return max(self.cap / COMPRESSION, 3.0 * (self.ideal() or 0.0))


def _time_to_serve(items: int, rpm: float, changes: Sequence[tuple[float, float]]) -> float:
    """When ``items`` requests have been served by a full bucket of ``rpm`` drained greedily.

    A greedy client keeps the bucket empty after the first burst, so the limit changes only
    move the refill rate.
    """
    left = items - rpm
    now, rate = 0.0, rpm / WINDOW
    for at, new_rpm in changes:
        if left <= rate * (at - now):
            break
        left -= rate * (at - now)
        now, rate = at, new_rpm / WINDOW
    return now + max(0.0, left) / rate


def scenarios(quick: bool) -> list[Scenario]:
    """The benchmark's workloads.

    ``quick`` halves the work beyond what the full buckets serve at once, and stops the
    slow side after 100 provider seconds.
    """
    rpm = 300.0

    def size(full: int, first_burst: float) -> int:
        return full if not quick else int(first_burst) + (full - int(first_burst)) // 2

    cap = 100.0 if quick else 300.0
    no_headers = {"rpm": rpm, "send_rate_limit_headers": False}
    return [
        Scenario(
            "1",
            "RPM limit, headers on (OpenAI)",
            "time <= 1.10 x ideal, 429s < 1% of attempts",
            "openai",
            items=size(600, rpm),
            workers=20,
            cap=cap,
            simulator={"rpm": rpm},
        ),
        Scenario(
            "2",
            "TPM limit binding, max_tokens reserved (OpenAI)",
            "time <= 1.15 x ideal",
            "openai",
            items=size(300, 100),
            workers=20,
            cap=cap,
            simulator={"rpm": 3000.0, "tpm": 150_000.0},
            prompt_chars=2000,
            max_tokens=1000,
        ),
        Scenario(
            "3",
            "No headers, unknown RPM (Gemini, RetryInfo hints)",
            "time <= 1.25 x ideal, 429s < 3% of attempts",
            "gemini",
            items=size(600, rpm),
            workers=20,
            cap=cap,
            simulator={"rpm": rpm},
        ),
        Scenario(
            "3b",
            "No headers and no retry hints (OpenAI wire)",
            "time <= 1.25 x ideal, 429s < 3% of attempts",
            "openai",
            items=size(600, rpm),
            workers=20,
            cap=cap,
            simulator={**no_headers, "send_retry_after": False},
        ),
        Scenario(
            "4",
            "Limit halves at 4 s, recovers at 10 s (OpenAI, headers on)",
            f"stable within retry hint + {5.0 / COMPRESSION:.1f} s after each change",
            "openai",
            items=850,
            workers=30,
            cap=cap,
            simulator={"rpm": rpm},
            limit_changes=((4.0, rpm / 2), (10.0, rpm)),
        ),
        Scenario(
            "5",
            "10% injected 503s, no headers (Gemini)",
            "learned limit with 503s >= 0.9 x without",
            "gemini",
            items=size(1200, rpm),
            workers=20,
            cap=cap,
            simulator=dict(no_headers),
            max_attempts=5,
            sides=(
                (ADAPTIVE, adaptive_strategy, {}),
                (f"{ADAPTIVE} + 503s", adaptive_strategy, {"error_rate": 0.1}),
                (f"{LEGACY} + 503s", legacy_strategy, {"error_rate": 0.1}),
            ),
        ),
        Scenario(
            "6",
            "Daily quota exhausted after 200 requests (OpenAI insufficient_quota)",
            "remaining items fail within 1 s, 0 retries",
            "openai",
            items=size(500, 200),
            workers=20,
            simulator={"daily_request_quota": 200},
            cap=cap,
        ),
    ]


# -- measurement ----------------------------------------------------------------------------


class Tally(BaseObserver):
    """Counts attempts per item and the time of every outcome."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.attempts: Counter[str] = Counter()
        self.completed = 0
        self.failed = 0
        self.failure_times: list[float] = []
        self.failure_types: Counter[str] = Counter()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.ITEM_STARTED:
            self.attempts[data["item_id"]] += 1
        elif event is ProcessingEvent.ITEM_COMPLETED:
            self.completed += 1
        elif event is ProcessingEvent.ITEM_FAILED:
            self.failed += 1
            self.failure_times.append(time.monotonic() - self.start)
            self.failure_types[str(data.get("error_type"))] += 1


@dataclass
class SideResult:
    """What one side of a scenario did."""

    label: str
    finished: bool
    elapsed: float
    succeeded: int
    failed: int
    attempts: int
    rate_limited: int
    quota_refused: int
    retries: int
    #: ``(seconds since start, status)`` of every request the simulator answered.
    records: list[tuple[float, int]]
    #: ``(seconds since start, retry hint)`` of every 429 with a ``retry-after`` header.
    hints: list[tuple[float, float]]
    #: ``(seconds since start, requests per window)`` samples of the adaptive pace.
    paces: list[tuple[float, float]] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)


@asynccontextmanager
async def sdk_strategy(
    scenario: Scenario, simulator: ProviderSimulator, on_response: Callable[[Any], Any]
) -> AsyncIterator[LLMCallStrategy[Any]]:
    """The scenario's strategy over a real SDK client whose httpx client has both hooks."""
    hooks = httpx_event_hooks()
    hooks["response"].append(on_response)
    http_client = httpx2.AsyncClient(event_hooks=hooks, timeout=30.0)
    try:
        if scenario.wire == "gemini":
            client = gemini_client(
                "gm-bench", base_url=simulator.gemini_base_url, http_client=http_client
            )
            try:
                yield GeminiStrategy(
                    GeminiModel("gemini-sim", client), response_parser=lambda r: r.text
                )
            finally:
                await client.aio.aclose()
        else:
            provider = OpenAIProvider(
                base_url=simulator.openai_base_url, api_key="sk-bench", http_client=http_client
            )
            settings: Any = {"max_tokens": scenario.max_tokens} if scenario.max_tokens else None
            agent = Agent(OpenAIChatModel("gpt-sim", provider=provider), model_settings=settings)
            yield PydanticAIStrategy(agent)
    finally:
        await http_client.aclose()


async def run_side(
    scenario: Scenario,
    label: str,
    make_strategy: Callable[[], RateLimitStrategy],
    overrides: dict[str, Any],
) -> SideResult:
    """Run ``scenario`` once with ``make_strategy()`` against a fresh simulator."""
    settings = {**scenario.simulator, **overrides}
    config = SimulatorConfig(
        window_seconds=WINDOW,
        latency=LATENCY,
        error_statuses=(503,),
        seed=7,
        recent_requests=100_000,
        **settings,
    )
    hints: list[tuple[float, float]] = []
    start = time.monotonic()

    async def on_response(response: Any) -> None:
        if response.status_code == 429:
            value = response.headers.get("retry-after-ms")
            if value is not None:
                hints.append((time.monotonic() - start, float(value) / 1000.0))

    async with (
        ProviderSimulator(config) as simulator,
        sdk_strategy(scenario, simulator, on_response) as strategy,
    ):
        rate_strategy = make_strategy()
        tally = Tally(start)
        processor = ParallelBatchProcessor[str, Any, None](
            config=ProcessorConfig(
                max_workers=scenario.workers, retry=retry_config(scenario.max_attempts)
            ),
            rate_limit_strategy=rate_strategy,
            observers=[tally],
        )
        prompt_body = "x" * max(0, scenario.prompt_chars - 12)
        finished = False
        paces: list[tuple[float, float]] = []
        async with processor:
            for i in range(scenario.items):
                prompt = f"item {i:06d} {prompt_body}"[: scenario.prompt_chars]
                await processor.add_work(
                    LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt=prompt)
                )
            start = tally.start = time.monotonic()
            background = [asyncio.create_task(_change_limits(simulator, scenario, start))]
            if isinstance(rate_strategy, AdaptiveRateLimitStrategy):
                background.append(asyncio.create_task(_sample_pace(rate_strategy, start, paces)))
            try:
                async with asyncio.timeout(scenario.deadline()):
                    await processor.process_all()
                finished = True
            except TimeoutError:
                pass
            finally:
                elapsed = time.monotonic() - start
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        stats = simulator.stats
        records = [(record.time - start, record.status) for record in stats.recent]
        return SideResult(
            label=label,
            finished=finished,
            elapsed=elapsed,
            succeeded=tally.completed,
            failed=tally.failed,
            attempts=stats.requests_total,
            rate_limited=stats.rate_limited,
            quota_refused=stats.quota_exhausted,
            retries=sum(count - 1 for count in tally.attempts.values()),
            records=records,
            hints=hints,
            paces=paces,
            failure_times=tally.failure_times,
        )


async def _change_limits(simulator: ProviderSimulator, scenario: Scenario, start: float) -> None:
    for at, rpm in scenario.limit_changes:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        simulator.set_limits(rpm=rpm)


async def _sample_pace(
    strategy: AdaptiveRateLimitStrategy, start: float, paces: list[tuple[float, float]]
) -> None:
    while True:
        await asyncio.sleep(0.05)
        for snapshot in strategy.snapshot():
            if snapshot.requests_per_minute is not None:
                per_window = snapshot.requests_per_minute / 60.0 * WINDOW
                paces.append((time.monotonic() - start, per_window))


# -- scenario-specific checks ---------------------------------------------------------------


def stabilisation(
    result: SideResult, scenario: Scenario
) -> list[tuple[float, float | None, float]]:
    """Per limit change: ``(change time, seconds until stable or None, retry hint)``.

    Stable at ``s``: the window ``[s, s + STABLE_WINDOW)`` holds no 429, its successes are
    within 10% of the new limit's rate, and so are those of each of its quarters within
    25% (no gap made up by a burst). The hint is the longest ``retry-after`` received in
    the first ``STABLE_WINDOW`` after the change.
    """
    changes = list(scenario.limit_changes)
    found: list[tuple[float, float | None, float]] = []
    for index, (at, rpm) in enumerate(changes):
        until = changes[index + 1][0] if index + 1 < len(changes) else result.elapsed
        rate = rpm / WINDOW
        hint = max((h for t, h in result.hints if at <= t < at + STABLE_WINDOW), default=0.0)
        stable_after: float | None = None
        s = at
        while s + STABLE_WINDOW <= until + 1e-9:
            if _is_stable(result.records, s, rate):
                stable_after = s - at
                break
            s += 0.01
        found.append((at, stable_after, hint))
    return found


def _is_stable(records: list[tuple[float, int]], start: float, rate: float) -> bool:
    window = [(t, status) for t, status in records if start <= t < start + STABLE_WINDOW]
    if any(status == 429 for _, status in window):
        return False
    ok = [t for t, status in window if status == 200]
    if abs(len(ok) - rate * STABLE_WINDOW) > 0.1 * rate * STABLE_WINDOW:
        return False
    quarter = STABLE_WINDOW / 4
    for k in range(4):
        low = start + k * quarter
        count = sum(1 for t in ok if low <= t < low + quarter)
        if abs(count - rate * quarter) > 0.25 * rate * quarter:
            return False
    return True


def average_pace(result: SideResult, after: float) -> float | None:
    """The mean learned pace (requests per window) sampled after ``after`` seconds."""
    values = [pace for t, pace in result.paces if t >= after]
    return sum(values) / len(values) if values else None


# -- reporting ------------------------------------------------------------------------------


@dataclass
class Row:
    """One side of one scenario, judged."""

    scenario: Scenario
    result: SideResult
    ideal: float | None
    passed: bool | None  # None: a reference run with no target of its own
    detail: str = ""


def evaluate(scenario: Scenario, results: list[SideResult]) -> list[Row]:
    """Rows for the table, with each side judged against the scenario's target."""
    ideal = scenario.ideal()
    rows: list[Row] = []
    baseline_pace: float | None = None
    for result in results:
        ratio = result.elapsed / ideal if ideal else math.inf
        share = result.rate_limited / result.attempts if result.attempts else 0.0
        done = result.finished and result.failed == 0
        number = scenario.number
        if number == "1":
            rows.append(Row(scenario, result, ideal, done and ratio <= 1.10 and share < 0.01))
        elif number == "2":
            rows.append(Row(scenario, result, ideal, done and ratio <= 1.15))
        elif number in ("3", "3b"):
            rows.append(Row(scenario, result, ideal, done and ratio <= 1.25 and share < 0.03))
        elif number == "4":
            rows.append(_judge_stability(scenario, result, ideal))
        elif number == "5":
            row = _judge_learned_limit(scenario, result, ideal, baseline_pace)
            if baseline_pace is None and row.passed is None and result.paces:
                baseline_pace = average_pace(result, after=WINDOW / 2)
            rows.append(row)
        else:
            rows.append(_judge_quota(scenario, result))
    return rows


def _judge_stability(scenario: Scenario, result: SideResult, ideal: float | None) -> Row:
    parts = []
    passed = result.finished
    for at, after, hint in stabilisation(result, scenario):
        if after is None:
            parts.append(f"after {at:g} s: never stable")
            passed = False
        else:
            parts.append(f"after {at:g} s: stable in {after:.2f} s (hint {hint:.2f} s)")
            passed = passed and after <= hint + 5.0 / COMPRESSION
    return Row(scenario, result, ideal, passed, "; ".join(parts))


def _judge_learned_limit(
    scenario: Scenario, result: SideResult, ideal: float | None, baseline: float | None
) -> Row:
    pace = average_pace(result, after=WINDOW / 2)
    if pace is None:
        return Row(scenario, result, ideal, None, "learns no limit")
    detail = f"mean learned limit {pace:.0f}/window (quota {scenario.simulator['rpm']:g})"
    if baseline is None:
        return Row(scenario, result, ideal, None, detail)
    detail += f", {pace / baseline:.0%} of the run without 503s"
    return Row(scenario, result, ideal, pace >= 0.9 * baseline, detail)


def _judge_quota(scenario: Scenario, result: SideResult) -> Row:
    first_refusal = min((t for t, status in result.records if status == 429), default=None)
    if first_refusal is None:
        return Row(scenario, result, None, False, "the quota was never reached")
    spread = max(result.failure_times, default=first_refusal) - first_refusal
    passed = result.finished and spread <= 1.0 and result.retries == 0
    detail = (
        f"last item failed {spread * 1000:.0f} ms after the first refusal; "
        f"{result.quota_refused} requests sent into the exhausted quota"
    )
    return Row(scenario, result, None, passed, detail)


HEADER = (
    "| # | scenario | side | done | time (ideal) | time / ideal | 429s (% of attempts) "
    "| retries | failed | target | result |"
)
RULE = "|---|---|---|---|---|---|---|---|---|---|---|"


def format_row(row: Row) -> str:
    """One markdown table row."""
    r = row.result
    done = f"{r.succeeded + r.failed}/{row.scenario.items}"
    ideal = "" if row.ideal is None else f" ({row.ideal:.2f} s)"
    if r.finished:
        time_text = f"{r.elapsed:.2f} s{ideal}"
    else:
        time_text = f"not finished in {r.elapsed:.0f} s{ideal}"
    ratio = "—" if row.ideal is None else f"{r.elapsed / row.ideal:.2f}x"
    share = r.rate_limited / r.attempts if r.attempts else 0.0
    verdict = {True: "**pass**", False: "miss", None: "reference"}[row.passed]
    if row.detail:
        verdict += f": {row.detail}"
    return (
        f"| {row.scenario.number} | {row.scenario.title} | {r.label} | {done} | {time_text} "
        f"| {ratio} | {r.rate_limited} ({share:.1%}) | {r.retries} | {r.failed} "
        f"| {row.scenario.target} | {verdict} |"
    )


def write_docs(lines: list[str]) -> None:
    """Replace the table between the markers in docs/benchmarks.md (append them if absent)."""
    text = DOCS.read_text(encoding="utf-8")
    block = "\n".join([START_MARKER, *lines, END_MARKER])
    pattern = re.compile(re.escape(START_MARKER) + r".*?" + re.escape(END_MARKER), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text, encoding="utf-8")


async def run(selected: list[Scenario]) -> list[str]:
    lines = [HEADER, RULE]
    print(HEADER)
    print(RULE, flush=True)
    for scenario in selected:
        results = [
            await run_side(scenario, label, factory, overrides)
            for label, factory, overrides in scenario.sides
        ]
        for row in evaluate(scenario, results):
            line = format_row(row)
            lines.append(line)
            print(line, flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches; scenarios 1, 3, 6")
    parser.add_argument(
        "--scenario", action="append", metavar="N", help="run scenario N (repeatable)"
    )
    args = parser.parse_args(argv)
    every = scenarios(args.quick)
    wanted = args.scenario or (["1", "3", "6"] if args.quick else [s.number for s in every])
    unknown = sorted(set(wanted) - {s.number for s in every})
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(unknown)}; choose from "
            f"{', '.join(s.number for s in every)}"
        )
    selected = [s for s in every if s.number in wanted]
    # Failed items are logged as errors; the table says everything.
    logging.basicConfig(level=logging.CRITICAL)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}; "
        f"time compressed {COMPRESSION:g}x (window {WINDOW:g} s, latency {LATENCY * 1000:g} ms)"
    )
    lines = asyncio.run(run(selected))
    if not args.quick and len(selected) == len(every):
        lines.append("")
        lines.append(
            f"Measured {date.today().isoformat()} on {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.machine()} ({sys.platform})."
        )
        write_docs(lines)
        print(f"\nWrote the table to {DOCS}")


if __name__ == "__main__":
    main()
