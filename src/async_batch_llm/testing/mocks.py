"""A fake pydantic-ai style agent for testing pipelines without calling a model."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, Generic, cast

from async_batch_llm.base import TOutput

__all__ = ["MockAgent", "MockResult", "MockUsage"]

_DEFAULT_TOKENS_PER_CALL: dict[str, int] = {
    "input_tokens": 10,
    "output_tokens": 20,
    "total_tokens": 30,
}

# Long enough that any realistic per-item timeout fires first.
_TIMEOUT_SLEEP_SECONDS = 999


class ClientError(Exception):
    """The simulated rate-limit error of `MockAgent`: ``429 RESOURCE_EXHAUSTED``.

    Named like google-genai's ``ClientError`` so that name- and message-based error
    classifiers treat it as a provider rate limit; it is not that class.
    """


class MockUsage:
    """Token usage of a `MockResult`, shaped like pydantic-ai's legacy usage object."""

    def __init__(self, request_tokens: int = 100, response_tokens: int = 50) -> None:
        self.request_tokens = request_tokens
        self.response_tokens = response_tokens
        self.total_tokens = request_tokens + response_tokens


class MockResult(Generic[TOutput]):
    """The result of one `MockAgent.run` call: an ``output`` and its usage."""

    def __init__(self, output: TOutput, usage_info: MockUsage | None = None) -> None:
        self.output = output
        self._usage = usage_info or MockUsage()

    def usage(self) -> MockUsage:
        """Return the token usage of the call."""
        return self._usage

    def all_messages(self) -> list[Any]:
        """Return the conversation messages; a mock call has none."""
        return []


def _default_response(prompt: str) -> dict[str, str]:
    return {"response": "Mock response to: " + prompt[:50]}


class MockAgent(Generic[TOutput]):
    """A stand-in for a pydantic-ai ``Agent`` with scripted latency, failures and usage.

    Args:
        response_factory: Builds the output from the prompt; the default returns
            ``{"response": "Mock response to: <first 50 chars of the prompt>"}``.
        latency: Seconds every call sleeps first.
        failure_rate: Probability (0.0-1.0) that a call raises ``Exception("Random failure
            on call <n>")``; drawn from the module-level ``random`` generator on every call,
            so ``random.seed()`` makes runs repeatable.
        rate_limit_on_call: The call number (1-based) that raises a ``429
            RESOURCE_EXHAUSTED`` error named ``ClientError``, once.
        timeout_on_call: The call number (1-based) that hangs until the caller's timeout
            fires, once.
        tokens_per_call: ``input_tokens`` and ``output_tokens`` reported by each call
            (defaults 10 and 20); the total is always their sum.

    A falsy ``response_factory`` or ``tokens_per_call`` (``None``, ``{}``) means the default.
    """

    def __init__(
        self,
        response_factory: Callable[[str], TOutput] | None = None,
        latency: float = 0.1,
        failure_rate: float = 0.0,
        rate_limit_on_call: int | None = None,
        timeout_on_call: int | None = None,
        tokens_per_call: dict[str, int] | None = None,
    ) -> None:
        self.response_factory: Callable[[str], TOutput] = response_factory or cast(
            "Callable[[str], TOutput]", _default_response
        )
        self.latency = latency
        self.failure_rate = failure_rate
        self.rate_limit_on_call = rate_limit_on_call
        self.timeout_on_call = timeout_on_call
        self.tokens_per_call = tokens_per_call or dict(_DEFAULT_TOKENS_PER_CALL)
        self.call_count = 0
        self._rate_limit_triggered = False
        self._timeout_triggered = False

    async def run(self, prompt: str, **kwargs: Any) -> MockResult[TOutput]:
        """Simulate one agent call for ``prompt``; extra keyword arguments are ignored.

        Raises:
            ClientError: On call number ``rate_limit_on_call`` (once).
            Exception: With probability ``failure_rate``, or whatever ``response_factory``
                raises.
        """
        self.call_count += 1
        call_number = self.call_count
        await asyncio.sleep(self.latency)

        if call_number == self.rate_limit_on_call and not self._rate_limit_triggered:
            self._rate_limit_triggered = True
            msg = "429 RESOURCE_EXHAUSTED"
            raise ClientError(msg)

        if call_number == self.timeout_on_call and not self._timeout_triggered:
            self._timeout_triggered = True
            await asyncio.sleep(_TIMEOUT_SLEEP_SECONDS)

        # Drawn even when failure_rate is 0, so seeded sequences advance the same way.
        if random.random() < self.failure_rate:
            msg = f"Random failure on call {call_number}"
            raise Exception(msg)

        output = self.response_factory(prompt)
        tokens = self.tokens_per_call
        usage = MockUsage(
            request_tokens=tokens.get("input_tokens", 10),
            response_tokens=tokens.get("output_tokens", 20),
        )
        return MockResult(output, usage_info=usage)
