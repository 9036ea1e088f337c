"""Middleware around every attempt, observers for every event, and metrics for Prometheus.

* ``SkipBlankPrompts`` (``before_process``) skips items before any call is made.
* ``StripOutput`` (``after_process``) cleans up every successful result.
* ``FallbackAnswer`` (``on_error``) replaces a permanent failure with a canned answer.
* ``EventCounter`` counts every event the processor emits; ``MetricsObserver`` aggregates
  them and exports them as a dict, JSON or Prometheus text.

The strategy is :class:`PydanticAIStrategy` with a local policy check in front: a prompt
containing "forbidden" fails with a ``ValueError`` (a permanent error) before any call.

Runs offline against the provider simulator; with ``--real`` and ``OPENAI_API_KEY`` set,
against the real OpenAI API.

Run it with ``python examples/middleware_observers.py``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any

from _provider import endpoint, parse_args
from pydantic_ai import Agent

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    GeminiErrorClassifier,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryState,
    TokenUsage,
    WorkItemResult,
)

Item = LLMWorkItem[str, str, None]
Result = WorkItemResult[str, None]


class PolicyCheckedStrategy(PydanticAIStrategy[str]):
    """Runs the agent, after refusing prompts that fail a local policy check."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if "forbidden" in prompt:
            # A ValueError is a permanent error for the classifiers: no retry.
            msg = f"refusing prompt {prompt!r}"
            raise ValueError(msg)
        return await super().execute(prompt, attempt, timeout, state)


class SkipBlankPrompts(BaseMiddleware[str, str, None]):
    """Skip items with an empty prompt: they end as failed results, with no call made."""

    async def before_process(self, work_item: Item) -> Item | None:
        return work_item if work_item.prompt.strip() else None


class StripOutput(BaseMiddleware[str, str, None]):
    """Tidy every successful output."""

    async def after_process(self, result: Result) -> Result:
        return replace(result, output=(result.output or "").strip())


class FallbackAnswer(BaseMiddleware[str, str, None]):
    """Turn a permanent failure into a successful placeholder answer."""

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        return WorkItemResult(
            item_id=work_item.item_id,
            success=True,
            output=f"(no answer: {type(error).__name__})",
            context=work_item.context,
        )


class EventCounter(BaseObserver):
    """Count every event by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.counts[event.value] += 1


async def main(args: argparse.Namespace) -> None:
    events = EventCounter()
    metrics = MetricsObserver()
    prompts = ["Say hello.", "", "forbidden words", "Say goodbye.", "   "]
    async with endpoint("openai", real=args.real) as target:
        print(f"Asking {target.describe()}\n")
        agent = Agent(target.openai_model("gpt-4o-mini"), instructions="Answer in a few words.")
        strategy = PolicyCheckedStrategy(agent)
        async with ParallelBatchProcessor[str, str, None](
            config=ProcessorConfig(max_workers=2),
            error_classifier=GeminiErrorClassifier(),
            middlewares=[SkipBlankPrompts(), StripOutput(), FallbackAnswer()],
            observers=[events, metrics],
        ) as processor:
            for i, prompt in enumerate(prompts):
                await processor.add_work(
                    LLMWorkItem(item_id=f"p{i}", strategy=strategy, prompt=prompt)
                )
            result = await processor.process_all()

    for item in sorted(result.results, key=lambda r: r.item_id):
        print(f"{item.item_id}  success={item.success!s:<5}  {item.output or item.error}")
    print("\nevents:", dict(sorted(events.counts.items())))
    print("\nPrometheus metrics (excerpt):")
    for line in (await metrics.export_prometheus()).splitlines():
        if line.startswith("async_batch_llm_items_"):
            print(" ", line)
    print(f"\n{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
