"""Fakes shared by the processor tests: scripted strategies, recording observers, helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from async_batch_llm import (
    BaseObserver,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)

USAGE: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


class RateLimitError(Exception):
    """Classified as a rate limit by the default classifier (message contains ``429``)."""

    def __init__(self, message: str = "429 Too Many Requests", *, retry_after: float | None = None):
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class TransientError(Exception):
    """Classified as retryable ``unknown`` by the default classifier."""


class EchoStrategy(LLMCallStrategy[str]):
    """Returns ``"echo:<prompt>"`` and fixed usage; counts calls and lifecycle hooks."""

    def __init__(self, usage: TokenUsage | None = None) -> None:
        self.usage = dict(usage or USAGE)
        self.calls: list[tuple[str, int]] = []
        self.prepare_calls = 0
        self.cleanup_calls = 0

    async def prepare(self) -> None:
        self.prepare_calls += 1

    async def cleanup(self) -> None:
        self.cleanup_calls += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append((prompt, attempt))
        return f"echo:{prompt}", dict(self.usage)  # type: ignore[return-value]


class ScriptedStrategy(LLMCallStrategy[str]):
    """Each call takes the next entry of ``script``: an exception to raise, or a value to return.

    When the script runs out it keeps returning ``"ok"``. An entry may also be a callable
    taking ``(prompt, attempt)`` and returning an exception or a value. Every exception
    raised carries ``_failed_token_usage`` = ``failure_usage`` when that is given.
    """

    def __init__(
        self,
        script: Iterable[Any] = (),
        *,
        failure_usage: dict[str, int] | None = None,
        usage: TokenUsage | None = None,
    ) -> None:
        self.script = list(script)
        self.failure_usage = failure_usage
        self.usage = dict(usage or USAGE)
        self.attempts: list[int] = []
        self.errors_seen: list[tuple[str, int]] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.attempts.append(attempt)
        step: Any = self.script.pop(0) if self.script else "ok"
        if callable(step) and not isinstance(step, BaseException):
            step = step(prompt, attempt)
        if isinstance(step, BaseException):
            if self.failure_usage is not None:
                step.__dict__["_failed_token_usage"] = dict(self.failure_usage)
            raise step
        return step, dict(self.usage)  # type: ignore[return-value]

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.errors_seen.append((type(exception).__name__, attempt))


class BlockingStrategy(LLMCallStrategy[str]):
    """Blocks every call until ``release`` is set; ``started`` counts calls in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.all_started = asyncio.Event()
        self.expected = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.expected and self.in_flight >= self.expected:
            self.all_started.set()
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return prompt, dict(USAGE)  # type: ignore[return-value]


class RecordingObserver(BaseObserver):
    """Records every event with a copy of its payload."""

    def __init__(self) -> None:
        self.events: list[tuple[ProcessingEvent, dict[str, Any]]] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.events.append((event, dict(data)))

    def of(self, event: ProcessingEvent) -> list[dict[str, Any]]:
        """Payloads of every recorded ``event``."""
        return [data for recorded, data in self.events if recorded is event]


def fast_config(**overrides: Any) -> ProcessorConfig:
    """A config whose waits are all tiny, so retries and cooldowns take milliseconds."""
    retry = overrides.pop(
        "retry", RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.002, jitter=False)
    )
    rate_limit = overrides.pop(
        "rate_limit",
        RateLimitConfig(
            cooldown_seconds=0.01,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )
    overrides.setdefault("max_workers", 4)
    overrides.setdefault("timeout_per_item", 5.0)
    return ProcessorConfig(retry=retry, rate_limit=rate_limit, **overrides)


def items_for(
    strategy: LLMCallStrategy[Any], count: int, *, prefix: str = "item"
) -> list[LLMWorkItem[str, Any, Any]]:
    """``count`` work items sharing ``strategy``, with prompts ``p0``, ``p1``, ..."""
    return [
        LLMWorkItem(item_id=f"{prefix}-{i}", strategy=strategy, prompt=f"p{i}", context={"i": i})
        for i in range(count)
    ]


async def run_batch(
    processor: ParallelBatchProcessor[Any, Any, Any],
    items: Iterable[LLMWorkItem[Any, Any, Any]],
) -> Any:
    """Queue ``items`` and run them; returns the ``BatchResult``."""
    for item in items:
        await processor.add_work(item)
    return await processor.process_all()


def noop(*_args: Any) -> None:
    """A callable that does nothing (for callbacks that must exist)."""


class SleepRecorder:
    """Stands in for ``asyncio.sleep`` in one module: records each delay, then yields once.

    Install it with :meth:`install` to see exactly which waits the code under test asked for
    without spending them.
    """

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._real_sleep = asyncio.sleep

    async def __call__(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        await self._real_sleep(0)
        return result

    def install(self, monkeypatch: Any, module: Any) -> SleepRecorder:
        """Replace ``module.asyncio`` with a view of asyncio whose ``sleep`` is this recorder."""
        real = module.asyncio
        recorder = self

        class _AsyncioView:
            def __getattr__(self, name: str) -> Any:
                if name == "sleep":
                    return recorder
                return getattr(real, name)

        monkeypatch.setattr(module, "asyncio", _AsyncioView())
        return self
