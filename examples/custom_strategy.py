"""A custom strategy that switches to a stronger model when an answer does not validate.

Shows every hook of :class:`LLMCallStrategy`: ``prepare`` (once per strategy instance),
``execute`` (once per attempt), ``on_error`` (after each failed attempt), ``cleanup`` (when
the processor shuts down), and the :class:`RetryState` that the attempts of one item share.

A failed attempt reports the tokens it used through :class:`TokenTrackingError`, so a
failed item's ``token_usage`` adds up every attempt it made. Errors whose class name
contains "validation" are retried at once, without a backoff wait.

Run it with ``python examples/custom_strategy.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenTrackingError,
    TokenUsage,
)


class City(BaseModel):
    """The structured answer we want from the model."""

    name: str
    population: int


class FakeClient:
    """Stands in for an SDK client: the small model fumbles prompts marked "(hard)"."""

    async def complete(self, model: str, prompt: str) -> tuple[str, TokenUsage]:
        await asyncio.sleep(0.005)
        usage: TokenUsage = {"input_tokens": 20, "output_tokens": 15, "total_tokens": 35}
        name = prompt.split(":", 1)[1].split("(")[0].strip()
        if "(impossible)" in prompt or ("(hard)" in prompt and model == "small-model"):
            return "Sorry, I am not sure.", usage
        return f'{{"name": "{name}", "population": {len(name) * 100_000}}}', usage


# --8<-- [start:strategy]
class AnswerValidationError(TokenTrackingError):
    """The model answered, but not with a valid City. Carries the tokens the call used."""


class EscalatingStrategy(LLMCallStrategy[City]):
    """Ask a small model first; after an invalid answer, ask a big one."""

    def __init__(self) -> None:
        self.client: FakeClient | None = None
        self.calls_per_model: Counter[str] = Counter()

    async def prepare(self) -> None:
        # Called once for this instance, before its first call (open clients, caches...).
        self.client = FakeClient()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[City, TokenUsage]:
        assert self.client is not None, "prepare() runs before the first execute()"
        escalate = state is not None and state.get("escalate", False)
        model = "big-model" if escalate else "small-model"
        self.calls_per_model[model] += 1
        text, usage = await self.client.complete(model, prompt)
        try:
            return City.model_validate_json(text), usage
        except ValidationError as exc:
            # The call cost tokens even though its answer is unusable: report them.
            msg = f"{model} returned an invalid City on attempt {attempt}"
            raise AnswerValidationError(msg, token_usage=usage) from exc

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        # Runs after every failed attempt, before the retry decision; state is per item.
        if state is not None and isinstance(exception, AnswerValidationError):
            state.set("escalate", True)

    async def cleanup(self) -> None:
        # Called once when the processor shuts down (end of the ``async with`` block).
        self.client = None


# --8<-- [end:strategy]


async def main() -> None:
    strategy = EscalatingStrategy()
    config = ProcessorConfig(max_workers=3, retry=RetryConfig(max_attempts=3, initial_wait=0.01))
    prompts = ["City: Paris", "City: Lagos (hard)", "City: Lima", "City: Atlantis (impossible)"]
    async with ParallelBatchProcessor[str, City, None](config=config) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=f"q{i}", strategy=strategy, prompt=prompt))
        result = await processor.process_all()
    assert strategy.client is None, "cleanup() ran when the processor shut down"

    for item in sorted(result.results, key=lambda r: r.item_id):
        tokens = item.token_usage.get("total_tokens", 0)
        outcome = repr(item.output) if item.success else item.error
        print(f"{item.item_id}  tokens={tokens:<4} {outcome}")
    print(f"calls per model: {dict(strategy.calls_per_model)}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    # Retries are logged as WARNING and final failures as ERROR; this example prints its own.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main())
