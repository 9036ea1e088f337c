"""Which strategies get a `RetryState` per item: every one that could see it."""

from __future__ import annotations

import functools
import inspect
from typing import Any
from unittest.mock import AsyncMock

import pytest

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
)
from async_batch_llm._internal.state_use import reads_retry_state

USAGE = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
BASE_ON_ERROR = LLMCallStrategy.on_error


class Blind(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        return prompt, dict(USAGE)


class Reads(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        assert state is not None
        state.set("seen", attempt)
        return prompt, dict(USAGE)


class RenamedParameter(LLMCallStrategy[str]):
    async def execute(self, prompt: str, attempt: int, timeout: float, scratch: Any = None) -> Any:
        return scratch.get("x"), dict(USAGE)


class CallsSuper(Reads):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        return await super().execute(prompt, attempt, timeout, state)


class Closure(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        def later() -> Any:
            return state

        return str(later()), dict(USAGE)


class Comprehension(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        return str([state for _ in range(1)]), dict(USAGE)


class Locals(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        return str(locals()), dict(USAGE)


class Frame(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        frame = inspect.currentframe()
        return str(frame), dict(USAGE)


class VarArgs(LLMCallStrategy[str]):
    async def execute(self, prompt: str, *args: Any) -> tuple[str, Any]:
        return str(args), dict(USAGE)


def _logged(function: Any) -> Any:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await function(*args, **kwargs)

    return wrapper


class Decorated(LLMCallStrategy[str]):
    @_logged
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        return prompt, dict(USAGE)


class OwnOnError(Blind):
    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        if state is not None:
            state.set("failed", attempt)


@pytest.mark.parametrize(
    ("strategy", "reads"),
    [
        (Blind(), False),
        (Reads(), True),
        (RenamedParameter(), True),
        (CallsSuper(), True),
        (Closure(), True),
        (Comprehension(), True),
        (Locals(), True),
        (Frame(), True),
        (VarArgs(), True),
        (Decorated(), True),
        (OwnOnError(), True),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, bool) else str(value),
)
def test_a_strategy_reads_the_state_unless_its_code_cannot(strategy: Any, reads: bool) -> None:
    assert reads_retry_state(strategy, BASE_ON_ERROR) is reads


def test_an_execute_that_is_not_a_plain_method_counts_as_reading() -> None:
    strategy = Blind()
    strategy.execute = AsyncMock(return_value=("x", USAGE))  # type: ignore[method-assign]
    assert reads_retry_state(strategy, BASE_ON_ERROR) is True


class Flaky(LLMCallStrategy[str]):
    """Fails its first attempt; remembers in the state how many attempts it saw."""

    def __init__(self) -> None:
        self.states: list[RetryState | None] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, Any]:
        self.states.append(state)
        assert state is not None
        state.set("attempts", state.get("attempts", 0) + 1)
        if attempt == 1:
            raise ConnectionError("flaky")
        return str(state.get("attempts")), dict(USAGE)


async def test_a_strategy_that_reads_the_state_gets_one_per_item_across_attempts() -> None:
    strategy = Flaky()
    config = ProcessorConfig(
        max_workers=2,
        retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
    )
    async with ParallelBatchProcessor[str, str, None](config=config) as processor:
        for number in range(3):
            await processor.add_work(LLMWorkItem(f"item-{number}", strategy, "p"))
        batch = await processor.process_all()
    assert [result.output for result in batch.results] == ["2", "2", "2"]
    states = strategy.states
    assert len({id(state) for state in states}) == 3  # one per item, shared by its attempts
    assert all(isinstance(state, RetryState) for state in states)


async def test_a_blind_strategy_is_given_no_state() -> None:
    async with ParallelBatchProcessor[str, str, None](
        config=ProcessorConfig(max_workers=1)
    ) as processor:
        runner = processor._runner
        blind, reads = Blind(), Reads()
        assert runner._state_for(blind) is None
        assert isinstance(runner._state_for(reads), RetryState)
        assert runner._state_for(reads) is not runner._state_for(reads)


def test_a_strategy_whose_attributes_raise_counts_as_reading() -> None:
    class Odd(Blind):
        def __getattribute__(self, name: str) -> Any:
            if name == "on_error":
                raise RuntimeError("no")
            return super().__getattribute__(name)

    assert reads_retry_state(Odd(), BASE_ON_ERROR) is True
