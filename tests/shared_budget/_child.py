"""One process of a shared-budget test: a batch against the simulator through the OpenAI SDK.

Run as ``python _child.py SPEC.json``. It imports everything, prints ``ready``, waits for a
line on stdin (so that every process starts together), runs its items and writes one JSON
line per result and a final summary line to ``spec["out"]``, then prints ``done``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx2
import openai

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.observers import BaseObserver
from async_batch_llm.rate_control import (
    AdaptiveRateLimitStrategy,
    RateScope,
    RedisBudget,
    httpx_event_hooks,
)


class OpenAIChat(LLMCallStrategy[str]):
    """A chat completion through the real OpenAI SDK (no SDK retries: ours handle them)."""

    def __init__(self, base_url: str, api_key: str, model: str, estimate: int | None) -> None:
        self.api_key = api_key
        self.model = model
        self.estimate = estimate
        #: When each call began (monotonic, system-wide): what the processes let go.
        self.began: list[float] = []
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            http_client=httpx2.AsyncClient(event_hooks=httpx_event_hooks(), timeout=30.0),
        )

    def rate_limit_scope(self) -> RateScope:
        return RateScope.from_api_key(provider="openai", api_key=self.api_key, model=self.model)

    def estimate_tokens(self, prompt: str) -> int:
        return self.estimate if self.estimate is not None else len(prompt) // 4 + 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, dict[str, int]]:
        self.began.append(time.monotonic())
        reply = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}]
        )
        usage = reply.usage
        assert usage is not None
        tokens = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        return reply.choices[0].message.content or "", tokens


class Events(BaseObserver):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.times: list[float] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event in (
            ProcessingEvent.SHARED_BUDGET_DEGRADED,
            ProcessingEvent.SHARED_BUDGET_RESTORED,
        ):
            self.seen.append(event.value)
            self.times.append(time.monotonic())


async def run(spec: dict[str, Any]) -> None:
    budget = None
    if spec.get("redis"):
        budget = RedisBudget(spec["redis"], namespace=spec["namespace"])
    # "static_rpm": a fixed per-process limiter (the processor's own) and the default
    # cooldown strategy instead of the adaptive controller.
    static_rpm = spec.get("static_rpm")
    rate = None if static_rpm else AdaptiveRateLimitStrategy(budget=budget, **spec.get("rate", {}))
    strategies = [
        OpenAIChat(spec["base_url"], key, spec["model"], spec.get("estimate"))
        for key in spec["keys"]
    ]
    events = Events()
    config = ProcessorConfig(
        max_workers=spec["workers"],
        timeout_per_item=30.0,
        retry=RetryConfig(max_attempts=50, initial_wait=0.01, max_wait=0.05, jitter=False),
        rate_limit=RateLimitConfig(max_rate_limit_retries=1000),
        max_requests_per_minute=static_rpm,
    )
    lags: list[float] = []

    async def monitor() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    lag_task = asyncio.create_task(monitor())
    cpu_before = time.process_time()
    started = time.monotonic()
    async with ParallelBatchProcessor[str, str, None](
        config=config, rate_limit_strategy=rate, observers=[events]
    ) as processor:
        for index in range(spec["first"], spec["first"] + spec["count"]):
            strategy = strategies[index % len(strategies)]
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{index}", strategy=strategy, prompt=f"prompt {index}")
            )
        result = await processor.process_all()
    finished = time.monotonic()
    lag_task.cancel()
    with open(spec["out"], "w") as out:  # noqa: ASYNC230 - once, after the batch
        for item in result.results:
            out.write(
                json.dumps(
                    {
                        "id": item.item_id,
                        "ok": item.success,
                        "attempts": item.attempts,
                        "error": item.error,
                    }
                )
                + "\n"
            )
        summary = {
            "summary": True,
            "started": started,
            "finished": finished,
            "events": events.seen,
            "event_times": events.times,
            "still_degraded": None if budget is None else budget.degraded,
            "cpu": time.process_time() - cpu_before,
            "max_lag": max(lags, default=0.0),
            "began": [t for strategy in strategies for t in strategy.began],
            "lags_over_100ms": sum(1 for lag in lags if lag > 0.1),
            "snapshot": [
                {"rpm": s.requests_per_minute, "source": s.request_limit_source}
                for s in (rate.snapshot() if rate is not None else [])
            ],
        }
        out.write(json.dumps(summary) + "\n")


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(run(spec))
    print("done", flush=True)


if __name__ == "__main__":
    main()
