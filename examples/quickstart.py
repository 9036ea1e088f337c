"""Quick start: 1,000 prompts through a real provider SDK, offline, in under a minute.

The batch runs :class:`PydanticAIStrategy` with pydantic-ai's OpenAI model on the real
OpenAI SDK, against the bundled provider simulator: a local HTTP server that answers like
the OpenAI API, with a realistic quota of 600 requests per minute, 0.1-0.8 s latency and
about 2% "503 Service Unavailable" errors.

An :class:`AdaptiveRateLimitStrategy` keeps the batch inside the quota: it reads the limit
and the remaining budget from the ``x-ratelimit-*`` headers of every response, lets the
first 600 requests go at once and then paces the rest (about 10 per second), so 1,000
prompts take about 45 s without a single 429. The processor retries the 503s after a short
wait (each retry is logged as a WARNING line) and counts the tokens. A live progress bar
follows the batch, with the log lines printed above it; a summary table ends it.

Run it with ``./scripts/demo`` or ``python examples/quickstart.py``. With ``--real`` and
``OPENAI_API_KEY`` set, the same code sends ``--count`` prompts (20 by default) to the real
OpenAI API instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from _provider import endpoint, parse_args
from pydantic_ai import Agent
from rich.table import Table

from async_batch_llm import (
    BaseObserver,
    GeminiErrorClassifier,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.observers.progress import RichProgressObserver
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy, httpx_event_hooks
from async_batch_llm.testing.simulator import SimulatorConfig

# --8<-- [start:quota]
# The simulated provider: 600 requests per minute per key, 0.1-0.8 s per answer, and 2% of
# requests failing with "503 Service Unavailable".
QUOTA = SimulatorConfig(
    rpm=600, latency=(0.1, 0.8), error_rate=0.02, error_statuses=(503,), seed=2024
)
# --8<-- [end:quota]

# --8<-- [start:config]
config = ProcessorConfig(
    max_workers=20,  # calls in flight at once
    timeout_per_item=60.0,  # seconds per attempt
    # Server errors: up to 5 attempts per item, waiting 0.1-0.5 s between them.
    retry=RetryConfig(max_attempts=5, initial_wait=0.2, max_wait=0.5),
    # Used without the adaptive strategy: a 429 pauses every worker for the server's
    # retry hint (or 5 s), then the next items start with a short, shrinking delay.
    rate_limit=RateLimitConfig(cooldown_seconds=5.0, slow_start_initial_delay=0.1),
)
# --8<-- [end:config]


class AttemptCounter(BaseObserver):
    """Counts attempts (every call, retries included), to report the retries."""

    def __init__(self) -> None:
        self.attempts = 0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.ITEM_STARTED:
            self.attempts += 1


def describe(rate_control: AdaptiveRateLimitStrategy) -> str:
    """Which limit the adaptive strategy paced to, and where it learned it."""
    scopes = rate_control.snapshot()
    if not scopes or scopes[0].requests_per_minute is None:
        return "AdaptiveRateLimitStrategy (no limit seen)"
    scope = scopes[0]
    return (
        f"AdaptiveRateLimitStrategy, {scope.requests_per_minute:,.0f} requests/min "
        f"({scope.request_limit_source})"
    )


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of prompts, got {text!r}")
    return int(text)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=positive, help="prompts to send (1,000; 20 with --real)")
    parser.add_argument("--model", default="gpt-4o-mini", help="OpenAI model (gpt-4o-mini)")


async def main(args: argparse.Namespace) -> None:
    count = args.count or (20 if args.real else 1_000)
    async with endpoint("openai", real=args.real, simulator=QUOTA) as target:
        # --8<-- [start:run]
        # The response hook shows every response's x-ratelimit-* headers to the strategy.
        model = target.openai_model(args.model, event_hooks=httpx_event_hooks())
        agent = Agent(model, instructions="Answer in one sentence.")
        strategy = PydanticAIStrategy(agent)
        rate_control = AdaptiveRateLimitStrategy()
        progress = RichProgressObserver(description="Summarising")
        attempts = AttemptCounter()

        progress.console.print(f"Sending {count:,} prompts to {target.describe()}", soft_wrap=True)
        started = time.perf_counter()
        async with ParallelBatchProcessor[str, str, None](
            config=config,
            # Reads the HTTP status of pydantic-ai's errors: 429 rate limit, 5xx retry.
            error_classifier=GeminiErrorClassifier(),
            rate_limit_strategy=rate_control,
            observers=[progress, attempts],
        ) as processor:
            for i in range(count):
                prompt = f"Summarise document {i} in one sentence."
                await processor.add_work(
                    LLMWorkItem(item_id=f"doc-{i}", strategy=strategy, prompt=prompt)
                )
            result = await processor.process_all()
        wall_time = time.perf_counter() - started
        # --8<-- [end:run]
        served = target.simulator.stats if target.simulator is not None else None

    table = Table(title="Summary", show_header=False, box=None, title_justify="left")
    for label, value in [
        ("items", f"{result.total_items:,}"),
        ("succeeded", f"{result.succeeded:,}"),
        ("failed", f"{result.failed:,}"),
        ("retries", f"{attempts.attempts - result.total_items:,}"),
        ("rate-limit hits", f"{progress.rate_limit_hits:,}"),
        ("cooldowns", f"{progress.cooldowns:,}"),
        ("tokens in / out", f"{result.total_input_tokens:,} / {result.total_output_tokens:,}"),
        ("throughput", f"{result.total_items / wall_time:,.1f} items/s"),
        ("wall time", f"{wall_time:.1f}s"),
        ("rate control", describe(rate_control)),
    ]:
        table.add_row(label, value)
    if served is not None:
        table.add_row(
            "simulator",
            f"{served.requests_total:,} requests, {served.injected_errors:,} answered 503, "
            f"{served.rate_limited:,} answered 429",
        )
    progress.console.print(table)
    console = progress.console
    answers = [r for r in result.results if r.success]
    if answers:
        reply = answers[0]
        source = "the simulator echoes the prompt" if served is not None else args.model
        console.print(f"A reply ({source}): {reply.output!r}", soft_wrap=True)
    for failure in [r for r in result.results if not r.success][:3]:
        console.print(f"Failed: {failure.item_id}: {failure.error}", soft_wrap=True)
    if served is not None:
        console.print(
            "Next: examples/ has one short program per feature (docs/examples.md); with "
            "OPENAI_API_KEY set, --real sends the prompts to OpenAI instead.",
            soft_wrap=True,
        )


if __name__ == "__main__":
    # The library logs each retry (WARNING) and final failure (ERROR). In a terminal, stderr
    # is where the bar is drawn too: RichProgressObserver prints this handler's lines above
    # the bar while the batch runs, so they do not tear it. Off a terminal they go to stderr.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    asyncio.run(main(parse_args(__doc__ or "", "openai", configure=options)))
