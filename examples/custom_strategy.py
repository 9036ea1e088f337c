"""A custom strategy that switches to a stronger model when an answer does not validate.

The strategy calls the OpenAI SDK directly. When the small model's answer is not a valid
``City``, it raises ``AnswerValidationError``; its ``on_error`` hook notes in the item's
:class:`RetryState` that the next attempt should use the big model. The attempts of one
item share that state; other items still start on the small model.

A failed attempt reports the tokens it used through :class:`TokenTrackingError`, so a
failed item's ``token_usage`` adds up every attempt it made. Errors whose class name
contains "validation" are retried at once, without a backoff wait.

Offline, the simulator plays both models: the small one answers prompts marked "(hard)"
with prose instead of JSON, and nobody can answer "(impossible)". With ``--real`` and
``OPENAI_API_KEY`` set, real models answer (and rarely need the big one).

Run it with ``python examples/custom_strategy.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from collections import Counter
from typing import Any

import openai
from _provider import endpoint, parse_args
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
from async_batch_llm.testing.simulator import ProviderRequest, Reply

SMALL_MODEL = "gpt-4o-mini"
BIG_MODEL = "gpt-4o"


class City(BaseModel):
    """The structured answer we want from the model."""

    name: str
    population: int


class AnswerValidationError(TokenTrackingError):
    """The model answered, but not with a valid City. Carries the tokens the call used."""


class EscalatingStrategy(LLMCallStrategy[City]):
    """Ask the small model first; after an invalid answer, ask the big one."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.calls_per_model: Counter[str] = Counter()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[City, TokenUsage]:
        escalate = state is not None and state.get("escalate", False)
        model = BIG_MODEL if escalate else SMALL_MODEL
        self.calls_per_model[model] += 1
        response = await self.client.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "Reply with JSON: the city's name and population."},
                {"role": "user", "content": prompt},
            ],
            response_format={"type": "json_object"},
            timeout=timeout,
        )
        usage = response.usage
        tokens: TokenUsage = {
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
        }
        try:
            return City.model_validate_json(response.choices[0].message.content or ""), tokens
        except ValidationError as exc:
            # The call cost tokens even though its answer is unusable: report them.
            msg = f"{model} returned an invalid City on attempt {attempt}"
            raise AnswerValidationError(msg, token_usage=tokens) from exc

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        # Runs after every failed attempt, before the retry decision; state is per item.
        if state is not None and isinstance(exception, AnswerValidationError):
            state.set("escalate", True)


def simulated_models(request: ProviderRequest) -> Reply | None:
    """Offline stand-in for both models: the small one fumbles hard questions."""
    name = re.sub(r"\(.*\)", "", request.prompt.split(":", 1)[-1]).strip()
    hard = "(hard)" in request.prompt and request.model == SMALL_MODEL
    if hard or "(impossible)" in request.prompt:
        return "Sorry, I am not sure."
    answer: dict[str, Any] = {"name": name, "population": len(name) * 100_000}
    return answer


async def main(args: argparse.Namespace) -> None:
    config = ProcessorConfig(max_workers=3, retry=RetryConfig(max_attempts=3, initial_wait=0.1))
    prompts = ["City: Paris", "City: Lagos (hard)", "City: Lima", "City: Atlantis (impossible)"]
    async with endpoint("openai", real=args.real, reply=simulated_models) as target:
        print(f"Asking {target.describe()}")
        strategy = EscalatingStrategy(target.openai_client())
        async with ParallelBatchProcessor[str, City, None](config=config) as processor:
            for i, prompt in enumerate(prompts):
                await processor.add_work(
                    LLMWorkItem(item_id=f"q{i}", strategy=strategy, prompt=prompt)
                )
            result = await processor.process_all()

    for item in sorted(result.results, key=lambda r: r.item_id):
        tokens = item.token_usage.get("total_tokens", 0)
        outcome = repr(item.output) if item.success else item.error
        print(f"{item.item_id}  tokens={tokens:<4} {outcome}")
    print(f"calls per model: {dict(sorted(strategy.calls_per_model.items()))}")
    print(f"{result.succeeded} succeeded, {result.failed} failed")


if __name__ == "__main__":
    # Retries are logged as WARNING and final failures as ERROR; this example prints its own.
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(main(parse_args(__doc__ or "", "openai")))
