"""The processor with an AdaptiveRateLimitStrategy: per-scope pauses, quota fail-fast, events."""

from __future__ import annotations

from typing import Any

import httpx2
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    PydanticAIStrategy,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.rate_control import (
    AdaptiveRateLimitStrategy,
    QuotaExhaustedError,
    RateScope,
    httpx_event_hooks,
)
from async_batch_llm.testing.simulator import ProviderSimulator, SimulatorConfig

Processor = ParallelBatchProcessor[str, Any, Any]
USAGE: TokenUsage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}


class Throttled(Exception):
    """A 429 carrying the server's retry hint."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("429 Too Many Requests")
        self.retry_after = retry_after


class QuotaGone(Exception):
    """OpenAI's answer for an account out of credit."""

    code = "insufficient_quota"


class ScopedStrategy(LLMCallStrategy[str]):
    """Answers from a script per call; reports a fixed scope; records call order."""

    def __init__(self, name: str, script: list[BaseException | None], log: list[str]) -> None:
        self.name = name
        self.script = script
        self.log = log
        self.calls = 0

    def rate_limit_scope(self) -> RateScope:
        return RateScope(provider="test", key_id="k", model=self.name)

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls += 1
        self.log.append(self.name)
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return prompt, dict(USAGE)  # type: ignore[return-value]


class Recorder(MetricsObserver):
    """MetricsObserver that also keeps every event."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[ProcessingEvent, dict[str, Any]]] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.events.append((event, dict(data)))
        await super().on_event(event, data)

    def of(self, event: ProcessingEvent) -> list[dict[str, Any]]:
        return [data for recorded, data in self.events if recorded is event]


def _config(**overrides: Any) -> ProcessorConfig:
    overrides.setdefault("max_workers", 1)
    overrides.setdefault(
        "retry", RetryConfig(max_attempts=2, initial_wait=0.001, max_wait=0.001, jitter=False)
    )
    return ProcessorConfig(**overrides)


async def _run(processor: Processor, items: list[LLMWorkItem[str, Any, Any]]) -> Any:
    async with processor:
        for item in items:
            await processor.add_work(item)
        return await processor.process_all()


async def test_a_rate_limit_pauses_only_its_own_scope() -> None:
    """A 429 in scope A pauses A for the hint; scope B keeps going and no global cooldown runs."""
    log: list[str] = []
    slow = ScopedStrategy("a", [Throttled(retry_after=0.05)], log)
    fast = ScopedStrategy("b", [], log)
    adaptive = AdaptiveRateLimitStrategy()
    recorder = Recorder()
    processor = Processor(
        config=_config(max_workers=2), rate_limit_strategy=adaptive, observers=[recorder]
    )
    items = [LLMWorkItem(item_id="a-0", strategy=slow, prompt="x")] + [
        LLMWorkItem(item_id=f"b-{i}", strategy=fast, prompt="y") for i in range(5)
    ]
    result = await _run(processor, items)

    assert result.succeeded == 6
    assert recorder.of(ProcessingEvent.COOLDOWN_STARTED) == []
    # A global cooldown would have held the second worker at the gate until the pause ended;
    # instead b's items all ran while a's scope waited out its hint.
    assert log == ["a", "b", "b", "b", "b", "b", "a"]
    hit = recorder.of(ProcessingEvent.RATE_LIMIT_HIT)
    assert len(hit) == 1
    assert hit[0]["scope"] == "test/k/a"
    assert hit[0]["scope_rate_limited"] == 1
    assert hit[0]["paused_for"] > 0
    snapshots = {str(s.scope): s for s in adaptive.snapshot()}
    assert snapshots["test/k/a"].rate_limited == 1
    assert snapshots["test/k/b"].rate_limited == 0
    assert snapshots["test/k/b"].paused_for == 0.0


async def test_quota_exhaustion_fails_every_remaining_item_without_calling() -> None:
    """After one insufficient_quota answer the scope's other items fail at once, unretried."""
    log: list[str] = []
    strategy = ScopedStrategy("q", [QuotaGone("You exceeded your current quota")], log)
    recorder = Recorder()
    processor = Processor(
        config=_config(max_workers=2),
        rate_limit_strategy=AdaptiveRateLimitStrategy(),
        observers=[recorder],
    )
    items = [LLMWorkItem(item_id=f"q-{i}", strategy=strategy, prompt="p") for i in range(10)]
    result = await _run(processor, items)

    assert result.failed == 10
    assert strategy.calls == 1  # nothing was retried, nothing else was sent
    errors = sorted(r.error.split(":")[0] for r in result.results)
    assert errors == ["QuotaExhaustedError"] * 9 + ["QuotaGone"]
    assert len(recorder.of(ProcessingEvent.ITEM_FAILED)) == 10
    # Only the one call that was made started; the others failed at admission.
    assert len(recorder.of(ProcessingEvent.ITEM_STARTED)) == 1
    assert isinstance(QuotaExhaustedError(RateScope("p", "", "m")), Exception)


async def test_metrics_observer_exports_scope_gauges() -> None:
    """Scope state rides on ITEM_COMPLETED / RATE_LIMIT_HIT into MetricsObserver and Prometheus."""
    log: list[str] = []
    strategy = ScopedStrategy("m", [Throttled(retry_after=0.001)], log)
    metrics = Recorder()
    processor = Processor(
        config=_config(),
        rate_limit_strategy=AdaptiveRateLimitStrategy(rpm=600),
        observers=[metrics],
    )
    await _run(processor, [LLMWorkItem(item_id=f"m-{i}", strategy=strategy) for i in range(3)])

    snapshot = await metrics.get_metrics()
    state = snapshot["rate_limit_scopes"]["test/k/m"]
    # The configured 600/min is the ceiling; the 429 lowered the pace below it.
    assert 0 < state["limit_rpm"] < 600
    assert state["limit_source"] in {"configured", "learned"}
    assert state["scope_rate_limited"] == 1
    text = await metrics.export_prometheus()
    assert f'async_batch_llm_scope_limit_rpm{{scope="test/k/m"}} {state["limit_rpm"]}' in text
    assert 'async_batch_llm_scope_rate_limits_total{scope="test/k/m"} 1' in text


async def test_cooldown_strategies_keep_the_0_7_2_metrics_shape() -> None:
    """With the 0.7.2 shared cooldown, get_metrics() has no rate_limit_scopes key."""
    log: list[str] = []
    metrics = MetricsObserver()
    config = _config(rate_limit=RateLimitConfig(cooldown_seconds=0.01))
    processor = Processor(config=config, observers=[metrics])
    await _run(processor, [LLMWorkItem(item_id="x", strategy=ScopedStrategy("d", [], log))])
    assert "rate_limit_scopes" not in await metrics.get_metrics()


async def test_headers_of_successful_calls_reach_the_controller() -> None:
    """Through the real OpenAI SDK, x-ratelimit-* headers on successes set the scope's limit."""
    config = SimulatorConfig(rpm=120, latency=0.0)
    async with ProviderSimulator(config) as simulator:
        http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks())
        provider = OpenAIProvider(
            base_url=simulator.openai_base_url, api_key="sk-test", http_client=http_client
        )
        agent = Agent(OpenAIChatModel("gpt-sim", provider=provider))
        strategy = PydanticAIStrategy(agent)
        adaptive = AdaptiveRateLimitStrategy()
        processor = Processor(config=_config(max_workers=4), rate_limit_strategy=adaptive)
        items = [
            LLMWorkItem(item_id=f"h-{i}", strategy=strategy, prompt=f"hi {i}") for i in range(8)
        ]
        result = await _run(processor, items)
        await http_client.aclose()

    assert result.succeeded == 8
    (scope,) = adaptive.snapshot()
    assert scope.scope.provider == "openai"
    assert scope.scope.model == "gpt-sim"
    assert scope.scope.key_id not in ("", "sk-test")  # a fingerprint, never the key
    assert scope.request_limit_source == "header"
    assert scope.requests_per_minute == 120
    assert scope.remaining_requests is not None
    assert scope.remaining_requests <= 120 - 8 + 1
