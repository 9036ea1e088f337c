"""Whole batches against a simulator that rate-limits or fails: every item still succeeds.

The rate-limit episodes run on a simulator whose bucket clock moves only when a cooldown
starts, by exactly the cooldown's length. The server's retry hints are then exact (the time
one request needs to refill), so the test can compare each cooldown with the hint that
caused it, and the episode ends after as many cooldowns as the quota needs.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic_ai import Agent

from async_batch_llm import (
    ErrorInfo,
    GeminiErrorClassifier,
    GeminiModel,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.testing.simulator import ProviderSimulator

from .http_support import (
    GEMINI_MODEL,
    EventLog,
    GeminiClientFactory,
    LaunchSimulator,
    ManualClock,
    PydanticAIModelFactory,
)

Backend = Literal["gemini", "openai"]
#: The Gemini strategy and one pydantic-ai model; every failed pydantic-ai run costs a few ms
#: of CPU, and an episode makes about a hundred of them.
BACKENDS = pytest.mark.parametrize("backend", ["gemini", "openai"])

WORKERS = 20
ITEMS = 24
RPM = 10
WINDOW_SECONDS = 0.2
#: The wait for one request of an empty bucket: what the server hints after every 429.
HINT = WINDOW_SECONDS / RPM
#: The cooldown the strategy's formula would choose: far from the hint, so using it shows.
FORMULA_COOLDOWN = 0.3


class HintRecordingClassifier(GeminiErrorClassifier):
    """Remembers the suggested wait of every rate limit it classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.hints: list[float | None] = []

    def classify(self, exception: Exception) -> ErrorInfo:
        info = super().classify(exception)
        if info.is_rate_limit:
            self.hints.append(info.suggested_wait)
        return info


class CooldownClock(EventLog):
    """Records events, and moves the simulator's clock forward by each cooldown it starts."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        await super().on_event(event, data)
        if event is ProcessingEvent.COOLDOWN_STARTED:
            self.clock.advance(data["duration"])


def text_of(response: LLMResponse) -> str:
    return response.text


def make_strategy(
    backend: Backend,
    sim: ProviderSimulator,
    gemini_sdk_client: GeminiClientFactory,
    pydantic_ai_model: PydanticAIModelFactory,
) -> LLMCallStrategy[Any]:
    if backend == "gemini":
        return GeminiStrategy(GeminiModel(GEMINI_MODEL, gemini_sdk_client(sim)), text_of)
    return PydanticAIStrategy(Agent(pydantic_ai_model(sim, backend)))


async def run_batch(
    strategy: LLMCallStrategy[Any],
    config: ProcessorConfig,
    classifier: GeminiErrorClassifier,
    observer: EventLog,
    items: int,
) -> tuple[Any, dict[str, Any]]:
    processor = ParallelBatchProcessor[str, Any, None](
        config=config, error_classifier=classifier, observers=[observer]
    )
    async with processor:
        for index in range(items):
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{index}", strategy=strategy, prompt=f"prompt {index}")
            )
        result = await processor.process_all()
        return result, await processor.get_stats()


def assert_nothing_lost(result: Any, items: int) -> None:
    """One successful result per item, each with its own prompt's answer."""
    assert len(result.results) == items
    by_id = {item.item_id: item for item in result.results}
    assert set(by_id) == {f"item-{index}" for index in range(items)}
    assert result.succeeded == items
    for index in range(items):
        assert by_id[f"item-{index}"].output == f"Echo: prompt {index}"


class TestRateLimitEpisode:
    @BACKENDS
    async def test_twenty_workers_over_a_low_quota_finish_every_item(
        self,
        launch_simulator: LaunchSimulator,
        sim_clock: ManualClock,
        gemini_sdk_client: GeminiClientFactory,
        pydantic_ai_model: PydanticAIModelFactory,
        backend: Backend,
    ) -> None:
        """Every item completes; each cooldown lasts exactly the server's hint; no 429 hidden.

        The quota admits ten requests at once and then one per cooldown, so the batch needs
        a cooldown for each further item; the strategy's formula (0.3 s) is never used.
        """
        sim = await launch_simulator(rpm=RPM, window_seconds=WINDOW_SECONDS, clock=sim_clock)
        config = ProcessorConfig(
            max_workers=WORKERS,
            timeout_per_item=10.0,
            retry=RetryConfig(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=False),
            rate_limit=RateLimitConfig(
                cooldown_seconds=FORMULA_COOLDOWN,
                backoff_multiplier=1.0,
                slow_start_items=0,
                slow_start_initial_delay=0.0,
                slow_start_final_delay=0.0,
                max_rate_limit_retries=100,
            ),
        )
        classifier = HintRecordingClassifier()
        observer = CooldownClock(sim_clock)
        strategy = make_strategy(backend, sim, gemini_sdk_client, pydantic_ai_model)

        result, stats = await run_batch(strategy, config, classifier, observer, ITEMS)

        assert_nothing_lost(result, ITEMS)
        started = observer.events[ProcessingEvent.COOLDOWN_STARTED]
        cooldowns = [event["duration"] for event in started]
        assert len(cooldowns) >= ITEMS - RPM
        assert cooldowns == pytest.approx([HINT] * len(cooldowns))
        assert classifier.hints == pytest.approx([HINT] * len(classifier.hints))
        # Every 429 the server sent reached the processor, one request per attempt.
        assert sim.stats.rate_limited == stats["rate_limit_count"] == len(classifier.hints)
        assert observer.count(ProcessingEvent.RATE_LIMIT_HIT) == sim.stats.rate_limited
        assert observer.count(ProcessingEvent.ITEM_STARTED) == sim.stats.requests_total
        assert sim.stats.successes == ITEMS


class TestServerErrors:
    @BACKENDS
    async def test_injected_5xx_are_retried_until_every_item_succeeds(
        self,
        launch_simulator: LaunchSimulator,
        gemini_sdk_client: GeminiClientFactory,
        pydantic_ai_model: PydanticAIModelFactory,
        backend: Backend,
    ) -> None:
        """With 15 % of requests failing with 500/503, all 60 items succeed within budget."""
        sim = await launch_simulator(error_rate=0.15, seed=2024)
        config = ProcessorConfig(
            max_workers=10,
            timeout_per_item=10.0,
            retry=RetryConfig(max_attempts=6, initial_wait=0.001, max_wait=0.001, jitter=False),
        )
        observer = EventLog()
        strategy = make_strategy(backend, sim, gemini_sdk_client, pydantic_ai_model)

        result, stats = await run_batch(strategy, config, GeminiErrorClassifier(), observer, 60)

        assert_nothing_lost(result, 60)
        injected = sim.stats.injected_errors
        assert injected > 0
        assert sim.stats.by_status[500] + sim.stats.by_status[503] == injected
        # Each failed attempt was one request, retried by the processor.
        assert observer.count(ProcessingEvent.ITEM_STARTED) == 60 + injected
        assert sim.stats.requests_total == 60 + injected
        assert stats["rate_limit_count"] == 0
