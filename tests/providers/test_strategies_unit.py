"""GeminiStrategy and PydanticAIStrategy: calls, token usage (also of failed calls), retries.

pydantic-ai's own ``TestModel`` and ``FunctionModel`` drive real agents; OpenAI-over-HTTP
cases use the real SDK client on an in-process ``httpx2.MockTransport``.
"""

from __future__ import annotations

import asyncio
import time
import typing
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock, Mock

import pytest
from pydantic import BaseModel

from async_batch_llm import (
    DefaultErrorClassifier,
    GeminiCachedModel,
    GeminiErrorClassifier,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
    TokenTrackingError,
    llm_strategies,
)
from async_batch_llm._internal.retry_hints import retry_after_seconds
from async_batch_llm.testing import MockAgent
from async_batch_llm.testing.mocks import MockResult, MockUsage

pydantic_ai = pytest.importorskip("pydantic_ai")
from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.exceptions import ModelHTTPError, UnexpectedModelBehavior  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart  # noqa: E402
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.models.test import TestModel  # noqa: E402
from pydantic_ai.usage import RequestUsage, RunUsage  # noqa: E402


class Answer(BaseModel):
    name: str
    score: int


def response(text: str = "ok", *, tokens: int = 150, cached: int = 0) -> LLMResponse:
    return LLMResponse(
        text=text,
        input_tokens=tokens - 50,
        output_tokens=50,
        total_tokens=tokens,
        cached_input_tokens=cached,
    )


class FakeModel:
    """An LLMModel (generate only) that records its calls."""

    def __init__(self, reply: LLMResponse | Exception | None = None) -> None:
        self.reply = reply if reply is not None else response()
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def generate(self, *args: Any, **kwargs: Any) -> LLMResponse:
        self.calls.append((args, kwargs))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class FakeManagedModel(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.prepared = 0
        self.cleaned = 0

    async def prepare(self) -> None:
        self.prepared += 1

    async def cleanup(self) -> None:
        self.cleaned += 1


class ParseError(Exception):
    pass


class NoDictError(Exception):
    """An exception that cannot carry attributes (as if it had no ``__dict__``)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "__dict__":
            raise AttributeError(name)
        return super().__getattribute__(name)


def failing_parser(_: LLMResponse) -> str:
    raise ParseError("could not parse")


# --- GeminiStrategy -------------------------------------------------------------------------


class TestGeminiStrategy:
    def test_attributes(self) -> None:
        """The strategy keeps its model, parser and temperature as public attributes."""
        model = FakeModel()
        strategy = GeminiStrategy(model, str, temperature=0.4)
        assert (strategy.model, strategy.response_parser, strategy.temperature) == (model, str, 0.4)
        assert isinstance(strategy, LLMCallStrategy)

    async def test_execute_parses_and_returns_usage(self) -> None:
        """execute calls generate(prompt, temperature=...) and returns (parsed, usage)."""
        model = FakeModel(response("42", tokens=150, cached=30))
        strategy = GeminiStrategy(model, lambda r: int(r.text), temperature=0.7)
        output, usage = await strategy.execute("question", 1, 10.0)
        assert output == 42
        assert usage == {
            "input_tokens": 100,
            "output_tokens": 50,
            "total_tokens": 150,
            "cached_input_tokens": 30,
        }
        assert model.calls == [(("question",), {"temperature": 0.7})]

    async def test_parser_error_carries_the_call_tokens(self) -> None:
        """A parser error is re-raised with the call's usage as ``_failed_token_usage``."""
        strategy = GeminiStrategy(FakeModel(response(tokens=150)), failing_parser)
        with pytest.raises(ParseError) as caught:
            await strategy.execute("p", 1, 10.0)
        assert caught.value.__dict__["_failed_token_usage"]["total_tokens"] == 150

    async def test_exception_without_dict_is_wrapped(self) -> None:
        """An error that cannot carry the usage becomes a TokenTrackingError chained from it."""

        def parser(_: LLMResponse) -> str:
            raise NoDictError("opaque")

        strategy = GeminiStrategy(FakeModel(response(tokens=150)), parser)
        with pytest.raises(TokenTrackingError, match="opaque") as caught:
            await strategy.execute("p", 1, 10.0)
        assert isinstance(caught.value.__cause__, NoDictError)
        assert caught.value._failed_token_usage["total_tokens"] == 150  # type: ignore[typeddict-item]

    async def test_model_errors_propagate_untouched(self) -> None:
        """Errors from generate itself propagate unchanged, with no usage attached."""
        error = RuntimeError("429 RESOURCE_EXHAUSTED")
        strategy = GeminiStrategy(FakeModel(error), str)
        with pytest.raises(RuntimeError) as caught:
            await strategy.execute("p", 1, 10.0)
        assert caught.value is error
        assert "_failed_token_usage" not in caught.value.__dict__

    async def test_managed_model_is_prepared_and_cleaned_up(self) -> None:
        """prepare/cleanup are forwarded to a ManagedLLMModel."""
        model = FakeManagedModel()
        strategy = GeminiStrategy(model, str)
        await strategy.prepare()
        await strategy.cleanup()
        assert (model.prepared, model.cleaned) == (1, 1)

    async def test_plain_model_needs_no_lifecycle(self) -> None:
        """prepare/cleanup do nothing for a model with generate only."""
        strategy = GeminiStrategy(FakeModel(), str)
        await strategy.prepare()
        await strategy.cleanup()
        assert not hasattr(strategy.model, "prepare")

    async def test_dry_run_is_the_base_placeholder(self) -> None:
        """GeminiStrategy does not override dry_run."""
        output, usage = await GeminiStrategy(FakeModel(), str).dry_run("hello world")
        assert output == "[DRY-RUN] Mock output for prompt: hello world..."
        assert usage == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}


# --- PydanticAIStrategy: construction and duck-typed agents -------------------------------


class RecordingAgent:
    """A duck-typed agent whose ``run`` takes the prompt only."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.prompts: list[str] = []

    async def run(self, prompt: str) -> Any:
        self.prompts.append(prompt)
        return self.result


class TestPydanticAIStrategyConstruction:
    def test_requires_pydantic_ai(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With ``llm_strategies.Agent`` patched to ``typing.Any`` the constructor raises."""
        monkeypatch.setattr(llm_strategies, "Agent", typing.Any)
        with pytest.raises(ImportError, match="pydantic-ai is required"):
            PydanticAIStrategy(agent=MockAgent())

    def test_module_agent_is_pydantic_ai_agent(self) -> None:
        """``llm_strategies.Agent`` is pydantic-ai's Agent class."""
        assert llm_strategies.Agent is Agent

    def test_any_agent_is_accepted(self) -> None:
        """No type check: any object with ``run`` is stored as the agent."""
        agent = RecordingAgent(MockResult("x"))
        strategy = PydanticAIStrategy(agent)
        assert strategy.agent is agent
        assert strategy.sdk_retries is False


class TestPydanticAIStrategyWithFakes:
    async def test_mock_agent_output_and_tokens(self) -> None:
        """MockAgent usage (request/response tokens) becomes the token dict."""
        agent: MockAgent[dict[str, str]] = MockAgent(
            latency=0.0, tokens_per_call={"input_tokens": 10, "output_tokens": 20}
        )
        output, tokens = await PydanticAIStrategy(agent).execute("hello", 1, 10.0)
        assert output == {"response": "Mock response to: hello"}
        assert tokens == {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}

    async def test_duck_agent_gets_the_prompt_only(self) -> None:
        """An agent that is not a pydantic-ai agent is called with the prompt alone."""
        agent = RecordingAgent(MockResult("out", MockUsage(7, 3)))
        output, tokens = await PydanticAIStrategy(agent).execute("p1", 1, 10.0)
        assert agent.prompts == ["p1"]
        assert (output, tokens["total_tokens"]) == ("out", 10)

    async def test_spec_mock_of_agent_gets_the_prompt_only(self) -> None:
        """A ``MagicMock(spec=Agent)`` is not a real agent: ``run`` gets the prompt alone."""
        agent = MagicMock(spec=Agent)
        result = Mock()
        result.output = "out"
        result.usage.return_value = Mock(request_tokens=100, response_tokens=50, total_tokens=150)
        agent.run = AsyncMock(return_value=result)
        output, tokens = await PydanticAIStrategy(agent).execute("prompt", 1, 10.0)
        agent.run.assert_awaited_once_with("prompt")
        assert output == "out"
        assert tokens == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}

    async def test_usage_as_a_property(self) -> None:
        """A usage value (not a method) with input/output tokens is read as is."""
        usage = RunUsage(input_tokens=12, output_tokens=8, cache_read_tokens=5)
        agent = RecordingAgent(SimpleNamespace(output="o", usage=usage))
        # RunUsage is callable only through a deprecated shim that warns (an error here).
        _, tokens = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert tokens == {
            "input_tokens": 12,
            "output_tokens": 8,
            "total_tokens": 20,
            "cached_input_tokens": 5,
        }

    async def test_usage_prefers_input_tokens_over_legacy_names(self) -> None:
        """Integer ``input_tokens``/``output_tokens`` win over the legacy request/response names."""
        usage = SimpleNamespace(
            input_tokens=3, output_tokens=4, request_tokens=90, response_tokens=9
        )
        agent = RecordingAgent(SimpleNamespace(output="o", usage=lambda: usage))
        _, tokens = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert tokens == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}

    async def test_invented_attributes_are_not_counted(self) -> None:
        """Mock attributes that are not integers fall back to the legacy names."""
        usage = Mock(request_tokens=100, response_tokens=50, total_tokens=150)
        agent = RecordingAgent(SimpleNamespace(output="o", usage=lambda: usage))
        _, tokens = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert tokens == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}

    async def test_missing_usage_gives_zeros(self) -> None:
        """A result whose usage() returns None reports zero tokens."""
        agent = RecordingAgent(SimpleNamespace(output="o", usage=lambda: None))
        _, tokens = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert tokens == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}

    async def test_output_error_carries_the_tokens(self) -> None:
        """When reading the output raises, the run's tokens ride on the exception."""

        class Result:
            def usage(self) -> MockUsage:
                return MockUsage(100, 50)

            @property
            def output(self) -> Any:
                raise ValueError("bad output")

        strategy = PydanticAIStrategy(RecordingAgent(Result()))
        with pytest.raises(ValueError, match="bad output") as caught:
            await strategy.execute("p", 1, 10.0)
        assert caught.value.__dict__["_failed_token_usage"] == {
            "input_tokens": 100,
            "output_tokens": 50,
            "total_tokens": 150,
        }

    async def test_agent_errors_propagate(self) -> None:
        """An error raised by a duck-typed agent propagates unchanged."""
        agent = MockAgent[Any](latency=0.0, rate_limit_on_call=1)
        with pytest.raises(Exception, match="429 RESOURCE_EXHAUSTED") as caught:
            await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert type(caught.value).__name__ == "ClientError"


# --- PydanticAIStrategy with real pydantic-ai agents ---------------------------------------


def tool_call(info: AgentInfo, args: dict[str, Any], *, tokens: tuple[int, int]) -> ModelResponse:
    return ModelResponse(
        parts=[ToolCallPart(info.output_tools[0].name, args)],
        usage=RequestUsage(input_tokens=tokens[0], output_tokens=tokens[1]),
    )


class ScriptedFunction:
    """A FunctionModel function: invalid output for the first ``invalid`` calls, then valid."""

    def __init__(self, invalid: int) -> None:
        self.invalid = invalid
        self.calls = 0
        self.settings: list[Any] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        self.settings.append(info.model_settings)
        if self.calls <= self.invalid:
            return tool_call(info, {"name": "x", "score": "not a number"}, tokens=(10, 5))
        return tool_call(info, {"name": "x", "score": 3}, tokens=(20, 7))


class TestPydanticAIStrategyWithRealAgents:
    async def test_structured_output_with_test_model(self) -> None:
        """A TestModel agent with a pydantic output type yields that model and its usage."""
        agent = Agent(TestModel(), output_type=Answer)
        output, tokens = await PydanticAIStrategy(agent).execute("hello world", 1, 10.0)
        assert isinstance(output, Answer)
        assert tokens["total_tokens"] == tokens["input_tokens"] + tokens["output_tokens"] > 0

    async def test_output_retry_inside_one_run_counts_both_requests(self) -> None:
        """Invalid then valid output succeeds in one run; both requests' tokens are counted."""
        script = ScriptedFunction(invalid=1)
        agent = Agent(FunctionModel(script), output_type=Answer)
        output, tokens = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert output == Answer(name="x", score=3)
        assert script.calls == 2
        assert tokens == {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42}

    async def test_failed_run_carries_the_usage_of_its_responses(self) -> None:
        """When the agent gives up on invalid output, all its responses' tokens are recorded."""
        script = ScriptedFunction(invalid=99)
        agent = Agent(FunctionModel(script), output_type=Answer)
        with pytest.raises(UnexpectedModelBehavior) as caught:
            await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert script.calls == 2  # the first request plus one output retry (the default)
        assert caught.value.__dict__["_failed_token_usage"] == {
            "input_tokens": 20,
            "output_tokens": 10,
            "total_tokens": 30,
        }
        assert GeminiErrorClassifier().classify(caught.value).error_category == "validation_error"
        assert DefaultErrorClassifier().classify(caught.value).is_retryable

    async def test_sdk_retries_are_off_by_default(self) -> None:
        """Runs of a real agent carry ``max_retries=0`` unless ``sdk_retries=True``."""
        script = ScriptedFunction(invalid=0)
        agent = Agent(FunctionModel(script), output_type=Answer)
        await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        await PydanticAIStrategy(agent, sdk_retries=True).execute("p", 1, 10.0)
        assert script.settings[0] is not None
        assert script.settings[0].get("max_retries") == 0
        assert (script.settings[1] or {}).get("max_retries") is None

    async def test_models_without_sdk_retries_do_not_warn(self) -> None:
        """A model that ignores ``max_retries`` is not made to warn about our default."""
        from pydantic_ai.exceptions import UnsupportedSettingWarning

        class NoSDKRetriesModel(FunctionModel):
            unsupported_settings = frozenset({"max_retries"})

        agent = Agent(NoSDKRetriesModel(ScriptedFunction(invalid=0)), output_type=Answer)
        with pytest.warns(UnsupportedSettingWarning, match="max_retries"):
            await agent.run("p", model_settings={"max_retries": 0})
        output, _ = await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert output == Answer(name="x", score=3)

    async def test_validation_failure_is_retried_by_the_processor(self) -> None:
        """With no output retries in the agent, the processor's retry gets a valid answer."""
        script = ScriptedFunction(invalid=1)
        agent = Agent(FunctionModel(script), output_type=Answer, retries={"output": 0})
        config = ProcessorConfig(
            max_workers=1, retry=RetryConfig(max_attempts=3, initial_wait=0.01)
        )
        async with ParallelBatchProcessor[str, Answer, None](config=config) as processor:
            await processor.add_work(
                LLMWorkItem(item_id="a", strategy=PydanticAIStrategy(agent), prompt="p")
            )
            batch = await processor.process_all()
        assert batch.succeeded == 1
        assert batch.results[0].output == Answer(name="x", score=3)
        assert script.calls == 2

    async def test_failed_item_counts_every_attempt(self) -> None:
        """An item whose output never validates reports the tokens of all its attempts."""
        script = ScriptedFunction(invalid=99)
        agent = Agent(FunctionModel(script), output_type=Answer, retries={"output": 0})
        config = ProcessorConfig(
            max_workers=1, retry=RetryConfig(max_attempts=2, initial_wait=0.01)
        )
        async with ParallelBatchProcessor[str, Answer, None](config=config) as processor:
            await processor.add_work(
                LLMWorkItem(item_id="a", strategy=PydanticAIStrategy(agent), prompt="p")
            )
            batch = await processor.process_all()
        assert batch.failed == 1
        assert script.calls == 2
        assert batch.results[0].token_usage["total_tokens"] == 30
        assert batch.total_input_tokens == 20


class TestDryRun:
    async def test_output_type_model_is_constructed(self) -> None:
        """A pydantic ``output_type`` gives an unvalidated instance and word-count tokens."""
        agent = Agent(TestModel(), output_type=Answer)
        output, tokens = await PydanticAIStrategy(agent).dry_run("three word prompt")
        assert isinstance(output, Answer)
        assert tokens == {"input_tokens": 3, "output_tokens": 50, "total_tokens": 53}

    async def test_result_type_is_the_fallback(self) -> None:
        """An agent with only ``result_type`` (a pydantic class) uses it."""
        agent = MagicMock()
        agent.result_type = Answer
        output, tokens = await PydanticAIStrategy(agent).dry_run("a b")
        assert isinstance(output, Answer)
        assert tokens["input_tokens"] == 2

    async def test_non_model_output_type_gives_the_placeholder(self) -> None:
        """A ``str`` output type gives the base placeholder string."""
        output, tokens = await PydanticAIStrategy(Agent(TestModel())).dry_run("hi")
        assert output == "[DRY-RUN] Mock output for prompt: hi..."
        assert tokens == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}

    async def test_agent_without_types_gives_the_placeholder(self) -> None:
        """A duck-typed agent with neither attribute gives the base placeholder."""
        output, _ = await PydanticAIStrategy(MockAgent()).dry_run("hi")
        assert output == "[DRY-RUN] Mock output for prompt: hi..."

    async def test_errors_fall_back_to_the_placeholder(self) -> None:
        """An agent whose attributes raise still dry-runs with the placeholder."""

        class Exploding:
            async def run(self, prompt: str) -> Any:
                raise AssertionError("not called")

            @property
            def output_type(self) -> Any:
                raise RuntimeError("boom")

        output, _ = await PydanticAIStrategy(Exploding()).dry_run("hi")
        assert output == "[DRY-RUN] Mock output for prompt: hi..."


# --- PydanticAIStrategy over HTTP (OpenAI SDK on a mock transport) -------------------------


class TestPydanticAIOverHTTP:
    @pytest.fixture
    def openai_agent(self) -> Any:
        httpx2 = pytest.importorskip("httpx2")
        pytest.importorskip("openai")
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        requests: list[Any] = []

        def handler(request: Any) -> Any:
            requests.append(request)
            return httpx2.Response(
                429,
                headers={"retry-after-ms": "2"},
                json={
                    "error": {
                        "message": "Rate limit reached",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
            )

        http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        provider = OpenAIProvider(
            base_url="http://openai.test/v1", api_key="k", http_client=http_client
        )
        agent = Agent(OpenAIChatModel("gpt-test", provider=provider))
        return agent, requests

    async def test_rate_limit_is_not_retried_inside_the_sdk(self, openai_agent: Any) -> None:
        """A 429 reaches the strategy after one request, with the server's hint readable."""
        agent, requests = openai_agent
        with pytest.raises(ModelHTTPError) as caught:
            await PydanticAIStrategy(agent).execute("p", 1, 10.0)
        assert len(requests) == 1
        assert caught.value.status_code == 429
        assert retry_after_seconds(caught.value) == pytest.approx(0.002)
        info = GeminiErrorClassifier().classify(caught.value)
        assert info.is_rate_limit
        assert info.suggested_wait == pytest.approx(0.002)
        assert DefaultErrorClassifier().classify(caught.value).is_rate_limit

    async def test_sdk_retries_can_be_turned_back_on(self, openai_agent: Any) -> None:
        """With ``sdk_retries=True`` the OpenAI client retries (twice by default)."""
        agent, requests = openai_agent
        with pytest.raises(ModelHTTPError):
            await PydanticAIStrategy(agent, sdk_retries=True).execute("p", 1, 10.0)
        assert len(requests) == 3


# --- GeminiStrategy in a batch ---------------------------------------------------------------


class TestGeminiCachedModelInABatch:
    async def test_expired_cache_is_renewed_once_for_the_batch(self) -> None:
        """A batch on an expired cache creates one new cache and every call uses it."""
        created: list[str] = []
        generated: list[dict[str, Any]] = []

        async def create(*, model: str, config: Any) -> Any:
            created.append(model)
            await asyncio.sleep(0)
            return SimpleNamespace(name=f"cachedContents/new-{len(created)}")

        async def listing() -> Any:
            async def pages() -> Any:
                for cache in ():
                    yield cache

            return pages()

        async def generate_content(*, model: str, contents: Any, config: Any) -> Any:
            generated.append(config)
            await asyncio.sleep(0)
            return SimpleNamespace(
                text="ok",
                candidates=None,
                usage_metadata=SimpleNamespace(
                    prompt_token_count=10, candidates_token_count=2, total_token_count=12
                ),
            )

        client = SimpleNamespace(
            aio=SimpleNamespace(
                caches=SimpleNamespace(list=listing, create=create),
                models=SimpleNamespace(generate_content=generate_content),
            )
        )
        model = GeminiCachedModel("gemini-test", client, [])  # type: ignore[arg-type]
        model._cache = SimpleNamespace(name="cachedContents/stale")
        model._cache_created_at = time.time() - 7200
        model._prepared = True
        model._cache_lock = asyncio.Lock()
        strategy = GeminiStrategy(model, lambda r: r.text)
        async with ParallelBatchProcessor[str, str, None](
            config=ProcessorConfig(max_workers=5)
        ) as processor:
            for i in range(10):
                await processor.add_work(
                    LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt="q")
                )
            batch = await processor.process_all()
        assert batch.succeeded == 10
        assert created == ["gemini-test"]
        assert {config["cached_content"] for config in generated} == {"cachedContents/new-1"}
        assert batch.total_input_tokens == 100
