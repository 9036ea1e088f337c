"""`LLMStage` against Ray Data LLM's HTTP request processor, on the same simulator and actors.

Both sides run in one local Ray cluster (2 CPUs unless ``--cpus``), with the same number of
actors (``--actors``, 2) reserving a quarter CPU each, and call the same
``ProviderSimulator`` (OpenAI ``/v1/chat/completions``, served from a thread of this
process) with the same prompts:

- **baseline: Ray HTTP processor** — ``ray.data.llm.build_processor`` with an
  ``HttpRequestProcessorConfig`` (aiohttp; retries 429s with exponential backoff,
  ``max_retries=12`` from 0.05 s, since its default of 0 fails the job at the first 429;
  batches of 16 rows: it sends a batch's requests one after the other and runs at most 4
  batches per actor, so small batches give it its highest concurrency);
- **LLMStage (openai SDK)** — `LLMStage` with a strategy making one chat completion per
  attempt through the openai SDK (SDK retries off), ``max_workers=32`` per actor,
  `AdaptiveRateLimitStrategy` reading the simulator's rate-limit headers; with a
  ``redis-server`` on PATH the actors share one ``RedisBudget``, else each gets its share
  of the limit (``rpm / actors``);
- **LLMStage (pydantic-ai)** — the same with the library's `PydanticAIStrategy` over
  pydantic-ai's OpenAI model (which costs more CPU per call than the bare SDK).

Scenarios (the simulator answers each admitted request after a fixed latency):

1. **no limit** — 100 ms latency, no quota: what concurrency buys;
2. **rate limited** — 100 ms latency, 40 requests a second for the account (``rpm=240``
   over a 6 s "minute"): what pacing buys.

Printed per side: rows/s, 429s the simulator sent, requests in flight at most (admitted
requests waiting out their latency at the same moment, from the simulator's latency hook),
rows that failed, and the ratios to the baseline measured in the same run.

Usage::

    python benchmarks/ray_stage.py            # both scenarios
    python benchmarks/ray_stage.py --quick    # a third of the rows
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import ray
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from ray.data.llm import HttpRequestProcessorConfig, build_processor

from async_batch_llm import LLMCallStrategy, PydanticAIStrategy, RetryState, TokenUsage
from async_batch_llm.integrations.ray import LLMStage, llm_stage_options
from async_batch_llm.rate_control import RateScope, httpx_event_hooks
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"
LATENCY = 0.1
WORKERS_PER_ACTOR = 32
BATCH_SIZE = 64
#: Ray's HTTP stage sends the requests of a batch one after the other, and an actor runs at
#: most 4 batches at once (Ray Data's async UDF limit): small batches give it its most
#: concurrency, 4 requests per actor.
RAY_HTTP_BATCH_SIZE = 16


# -- the simulator, in a thread, with a latency hook that records each admitted request --


class InFlight:
    """The simulator's latency: a fixed delay, and the start of every delayed reply."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.starts: list[float] = []

    def __call__(self) -> float:
        self.starts.append(time.monotonic())
        return self.delay

    def reset(self) -> None:
        self.starts = []

    def peak(self) -> int:
        """The most replies waiting out their delay at one moment."""
        starts = sorted(self.starts)
        best = 0
        for index, start in enumerate(starts):
            # Replies started in (start - delay, start] are all still waiting at `start`.
            first = bisect.bisect_right(starts, start - self.delay, 0, index + 1)
            best = max(best, index + 1 - first)
        return best


class ThreadedSimulator:
    """A `ProviderSimulator` on its own event loop in a daemon thread (actors call it over
    HTTP from their processes; this process reads its counters)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.simulator = self._call(self._start(config))

    async def _start(self, config: SimulatorConfig) -> ProviderSimulator:
        simulator = ProviderSimulator(config)
        await simulator.start()
        return simulator

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def reset(self, rpm: float | None) -> None:
        """Forget buckets and counters, and set the account's limit."""

        async def reset() -> None:
            self.simulator.reset()
            self.simulator.set_limits(rpm=rpm)

        self._call(reset())

    def stop(self) -> None:
        self._call(self.simulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway ``redis-server`` (its URL), or ``None`` when there is none on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="abl-bench-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


# -- the strategies, built inside the actors --------------------------------------------


class OpenAISDKStrategy(LLMCallStrategy[str]):
    """One chat completion per attempt through the openai SDK (no SDK retries)."""

    def __init__(self, base_url: str) -> None:
        self.http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks(), timeout=60.0)
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=API_KEY, max_retries=0, http_client=self.http_client
        )

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        completion = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
        usage = completion.usage
        counts: TokenUsage = {}
        if usage is not None:
            counts = {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        return completion.choices[0].message.content or "", counts

    def rate_limit_scope(self) -> RateScope | None:
        return RateScope.from_api_key(provider="openai", api_key=API_KEY, model=MODEL)

    async def cleanup(self) -> None:
        await self.http_client.aclose()


def sdk_strategy(base_url: str) -> LLMCallStrategy[str]:
    return OpenAISDKStrategy(base_url)


def pydantic_ai_strategy(base_url: str) -> LLMCallStrategy[str]:
    http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks(), timeout=60.0)
    provider = OpenAIProvider(base_url=base_url, api_key=API_KEY, http_client=http_client)
    return PydanticAIStrategy(Agent(OpenAIChatModel(MODEL, provider=provider)))


# -- the sides ----------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    rows: int
    rpm: float | None  # per 6 s window
    window: float = 6.0


@dataclass
class Outcome:
    side: str
    elapsed: float
    rows: int
    failed: int
    rate_limited: int
    requests: int
    peak: int

    @property
    def throughput(self) -> float:
        return self.rows / self.elapsed


def dataset(count: int) -> Any:
    rows = [{"id": f"row-{i}", "prompt": f"Summarise item {i}"} for i in range(count)]
    return ray.data.from_items(rows, override_num_blocks=max(8, count // 250))


def run_ray_http(scenario: Scenario, sim: ThreadedSimulator, actors: int) -> list[dict[str, Any]]:
    config = HttpRequestProcessorConfig(
        url=f"{sim.simulator.openai_base_url}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        concurrency=actors,
        batch_size=RAY_HTTP_BATCH_SIZE,
        max_retries=12,
        base_retry_wait_time_in_s=0.05,
        http_request_stage={"num_cpus": 0.25},
    )

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "user", "content": row["prompt"]}]
        return {"payload": {"model": MODEL, "messages": messages}}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        choices = row["http_response"].get("choices") or [{}]
        text = choices[0].get("message", {}).get("content")
        return {"id": row["id"], "output": text, "error": None if text else "no reply"}

    processor = build_processor(
        config,
        preprocess=preprocess,
        postprocess=postprocess,
        preprocess_map_kwargs={"num_cpus": 0.25},
        postprocess_map_kwargs={"num_cpus": 0.25},
    )
    rows: list[dict[str, Any]] = processor(dataset(scenario.rows)).take_all()
    return rows


def run_llm_stage(
    scenario: Scenario,
    sim: ThreadedSimulator,
    actors: int,
    factory: Callable[[str], LLMCallStrategy[str]],
    redis_url: str | None,
    namespace: str,
) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "strategy": functools.partial(factory, sim.simulator.openai_base_url),
        "id_column": "id",
        "max_workers": WORKERS_PER_ACTOR,
    }
    if scenario.rpm is not None:
        if redis_url is not None:
            from async_batch_llm.rate_control import RedisBudget

            kwargs["rate_limit"] = {"rpm": scenario.rpm, "window_seconds": scenario.window}
            kwargs["budget"] = RedisBudget(redis_url, namespace=namespace)
        else:
            share = scenario.rpm / actors
            kwargs["rate_limit"] = {"rpm": share, "window_seconds": scenario.window}
    staged = dataset(scenario.rows).map_batches(
        LLMStage,
        fn_constructor_kwargs=kwargs,
        **llm_stage_options(actors=actors, batch_size=BATCH_SIZE),
    )
    rows: list[dict[str, Any]] = staged.take_all()
    return rows


def measure(
    side: str,
    run: Callable[[], list[dict[str, Any]]],
    scenario: Scenario,
    sim: ThreadedSimulator,
    latency: InFlight,
) -> Outcome:
    sim.reset(scenario.rpm)
    latency.reset()
    start = time.perf_counter()
    try:
        rows = run()
    except Exception as exc:  # the baseline fails the job when its retries run out
        print(f"  {side}: the job failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        rows = []
    elapsed = time.perf_counter() - start
    stats = sim.simulator.stats
    failed = sum(1 for row in rows if row.get("error") is not None)
    return Outcome(
        side, elapsed, len(rows), failed, stats.rate_limited, stats.requests_total, latency.peak()
    )


def ratio(value: float, baseline: float) -> str:
    if baseline == 0:
        return "—" if value == 0 else "∞"
    return f"{value / baseline:.2f}x"


def report(scenario: Scenario, outcomes: Sequence[Outcome]) -> list[str]:
    base = outcomes[0]
    lines = []
    for outcome in outcomes:
        lines.append(
            f"| {scenario.name} | {outcome.side} | {outcome.rows:,} "
            f"| {outcome.throughput:,.1f} ({ratio(outcome.throughput, base.throughput)}) "
            f"| {outcome.rate_limited:,} ({ratio(outcome.rate_limited, base.rate_limited)}) "
            f"| {outcome.peak} ({ratio(outcome.peak, base.peak)}) "
            f"| {outcome.requests:,} | {outcome.failed} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the rows")
    parser.add_argument("--actors", type=int, default=2, help="actors on each side (2)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (2)")
    args = parser.parse_args(argv)
    scale = 3 if args.quick else 1
    scenarios = [
        Scenario("no limit", 3000 // scale, None),
        Scenario("rate limited (40/s)", 1200 // scale, 240.0),
    ]
    logging.getLogger("ray").setLevel(logging.WARNING)
    latency = InFlight(LATENCY)
    # Every scenario uses the same 6 s "minute" (the simulator's window is set at start).
    config = SimulatorConfig(latency=latency, window_seconds=6.0, recent_requests=0)
    sim = ThreadedSimulator(config)
    temp_dir = tempfile.mkdtemp(prefix="abl-ray-")
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    lines: list[str] = []
    try:
        with redis_server() as redis_url:
            budget = "one shared RedisBudget" if redis_url else f"rpm / {args.actors} per actor"
            print(
                f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}, "
                f"{os.cpu_count()} CPUs; Ray {ray.__version__}, {args.cpus} CPUs, "
                f"{args.actors} actors per side; latency {LATENCY * 1000:.0f} ms; "
                f"LLMStage: {WORKERS_PER_ACTOR} workers per actor, limits: {budget}",
                flush=True,
            )
            stage_strategies = (
                ("openai SDK", "sdk", sdk_strategy),
                ("pydantic-ai", "pai", pydantic_ai_strategy),
            )
            for number, scenario in enumerate(scenarios):
                outcomes = [
                    measure(
                        "Ray HTTP processor (baseline)",
                        functools.partial(run_ray_http, scenario, sim, args.actors),
                        scenario,
                        sim,
                        latency,
                    )
                ]
                for label, tag, factory in stage_strategies:
                    namespace = f"bench-{tag}-{number}"
                    run = functools.partial(
                        run_llm_stage, scenario, sim, args.actors, factory, redis_url, namespace
                    )
                    outcomes.append(
                        measure(
                            f"LLMStage ({label})",
                            run,
                            scenario,
                            sim,
                            latency,
                        )
                    )
                lines.extend(report(scenario, outcomes))
                print(f"  {scenario.name}: done", flush=True)
    finally:
        ray.shutdown()
        sim.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(
        "| scenario | side | rows | rows/s (vs baseline) | 429s (vs baseline) "
        "| max in flight (vs baseline) | requests | failed rows |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
