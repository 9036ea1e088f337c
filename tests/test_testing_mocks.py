"""MockUsage, MockResult and MockAgent from async_batch_llm.testing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

import async_batch_llm.testing as testing_pkg
from async_batch_llm.testing import mocks
from async_batch_llm.testing.mocks import MockAgent, MockResult, MockUsage


@pytest.fixture
def _restore_random() -> Iterator[None]:
    state = random.getstate()
    yield
    random.setstate(state)


class TestPublicNames:
    def test_package_exports(self) -> None:
        """async_batch_llm.testing exports MockAgent, MockResult (the mocks') and mock_strategy."""
        assert testing_pkg.__all__ == ["MockAgent", "MockResult", "mock_strategy"]
        assert testing_pkg.MockAgent is mocks.MockAgent
        assert testing_pkg.MockResult is mocks.MockResult


class TestMockUsageAndResult:
    def test_usage_defaults_and_total(self) -> None:
        """MockUsage defaults to 100 request and 50 response tokens; total is their sum."""
        usage = MockUsage()
        custom = MockUsage(request_tokens=7, response_tokens=3)

        assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (100, 50, 150)
        assert (custom.request_tokens, custom.response_tokens, custom.total_tokens) == (7, 3, 10)

    def test_result_holds_output_and_usage(self) -> None:
        """MockResult exposes output, usage() and an empty all_messages()."""
        usage = MockUsage(1, 2)
        result = MockResult("out", usage_info=usage)

        assert result.output == "out"
        assert result.usage() is usage
        assert result.all_messages() == []

    def test_result_default_usage(self) -> None:
        """Without usage_info a MockResult reports a default MockUsage."""
        assert MockResult({"a": 1}).usage().total_tokens == 150


class TestMockAgentDefaults:
    def test_attributes(self) -> None:
        """A default MockAgent has the documented attribute values and no result_type."""
        agent: MockAgent[Any] = MockAgent()

        assert agent.latency == 0.1
        assert agent.failure_rate == 0.0
        assert agent.rate_limit_on_call is None
        assert agent.timeout_on_call is None
        assert agent.tokens_per_call == {
            "input_tokens": 10,
            "output_tokens": 20,
            "total_tokens": 30,
        }
        assert agent.call_count == 0
        assert agent._rate_limit_triggered is False
        assert agent._timeout_triggered is False
        assert not hasattr(agent, "result_type")

    async def test_default_response(self) -> None:
        """The default response echoes the first 50 prompt characters; tokens are 10 + 20."""
        agent: MockAgent[Any] = MockAgent(latency=0)
        prompt = "x" * 60

        result = await agent.run(prompt)

        assert result.output == {"response": "Mock response to: " + "x" * 50}
        usage = result.usage()
        assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (10, 20, 30)
        assert agent.call_count == 1

    async def test_falsy_arguments_mean_default(self) -> None:
        """An empty tokens_per_call dict and a None factory fall back to the defaults."""
        agent: MockAgent[Any] = MockAgent(response_factory=None, latency=0, tokens_per_call={})

        result = await agent.run("hi")

        assert agent.tokens_per_call["input_tokens"] == 10
        assert result.output == {"response": "Mock response to: hi"}

    async def test_extra_keyword_arguments_are_accepted(self) -> None:
        """run() accepts and ignores extra keyword arguments, as an agent call would."""
        agent: MockAgent[Any] = MockAgent(latency=0)

        result = await agent.run("hi", deps=object(), model_settings={"temperature": 0})

        assert result.output == {"response": "Mock response to: hi"}


class TestMockAgentBehaviour:
    async def test_latency_sleeps_after_counting(self) -> None:
        """run() counts the call, then sleeps for latency (here long enough to be cut off)."""
        agent: MockAgent[Any] = MockAgent(latency=60)

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await agent.run("p")
        assert agent.call_count == 1

    async def test_response_factory_and_tokens(self) -> None:
        """response_factory builds the output; tokens_per_call sets usage, total is in + out."""
        agent = MockAgent(
            response_factory=str.upper,
            latency=0,
            tokens_per_call={"input_tokens": 7, "output_tokens": 3, "total_tokens": 999},
        )

        result = await agent.run("hello")

        assert result.output == "HELLO"
        usage = result.usage()
        assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (7, 3, 10)

    async def test_missing_token_keys_use_defaults(self) -> None:
        """A tokens_per_call without input/output keys reports 10 and 20."""
        agent: MockAgent[Any] = MockAgent(latency=0, tokens_per_call={"total_tokens": 5})

        usage = (await agent.run("p")).usage()

        assert (usage.request_tokens, usage.response_tokens) == (10, 20)

    async def test_response_factory_errors_propagate(self) -> None:
        """An exception from response_factory reaches the caller unchanged."""
        error = KeyError("nope")

        def factory(prompt: str) -> str:
            raise error

        agent = MockAgent(response_factory=factory, latency=0)

        with pytest.raises(KeyError) as exc_info:
            await agent.run("p")
        assert exc_info.value is error

    async def test_rate_limit_on_given_call_once(self) -> None:
        """Call rate_limit_on_call raises a '429 RESOURCE_EXHAUSTED' ClientError, only once."""
        agent: MockAgent[Any] = MockAgent(latency=0, rate_limit_on_call=2)

        await agent.run("1")
        with pytest.raises(Exception, match="429 RESOURCE_EXHAUSTED") as exc_info:
            await agent.run("2")
        await agent.run("3")
        agent.call_count = 1
        await agent.run("2 again")

        assert type(exc_info.value).__name__ == "ClientError"
        assert str(exc_info.value) == "429 RESOURCE_EXHAUSTED"
        assert agent._rate_limit_triggered is True
        assert agent.call_count == 2

    async def test_rate_limit_is_not_googles_client_error(self) -> None:
        """The simulated 429 is a plain Exception subclass defined by the mocks module."""
        agent: MockAgent[Any] = MockAgent(latency=0, rate_limit_on_call=1)

        with pytest.raises(mocks.ClientError) as exc_info:
            await agent.run("p")

        assert type(exc_info.value).__module__ == "async_batch_llm.testing.mocks"

    async def test_timeout_on_given_call_hangs_once(self) -> None:
        """Call timeout_on_call hangs until the caller's timeout fires; later calls return."""
        agent: MockAgent[Any] = MockAgent(latency=0, timeout_on_call=1)

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await agent.run("p")
        agent.call_count = 0
        result = await agent.run("p")

        assert agent._timeout_triggered is True
        assert result.output == {"response": "Mock response to: p"}

    @pytest.mark.usefixtures("_restore_random")
    async def test_failure_rate_is_deterministic_under_seed(self) -> None:
        """Failures follow the seeded module-level random sequence, one draw per call."""
        random.seed(1234)
        expected = [random.random() < 0.5 for _ in range(20)]
        random.seed(1234)
        agent: MockAgent[Any] = MockAgent(latency=0, failure_rate=0.5)

        outcomes: list[str] = []
        for _ in range(20):
            try:
                await agent.run("p")
            except Exception as exc:
                outcomes.append(str(exc))
            else:
                outcomes.append("ok")

        failed = [outcome != "ok" for outcome in outcomes]
        assert failed == expected
        assert all(
            outcome in ("ok", f"Random failure on call {call}")
            for call, outcome in enumerate(outcomes, start=1)
        )
        assert True in failed
        assert False in failed

    @pytest.mark.usefixtures("_restore_random")
    async def test_zero_failure_rate_still_draws(self) -> None:
        """With failure_rate=0 every call still consumes one random draw."""
        random.seed(99)
        random.random()
        random.random()
        third = random.random()
        random.seed(99)
        agent: MockAgent[Any] = MockAgent(latency=0)

        await agent.run("a")
        await agent.run("b")

        assert random.random() == third

    @pytest.mark.usefixtures("_restore_random")
    async def test_rate_limited_call_does_not_draw(self) -> None:
        """A call that raises the simulated 429 returns before the random draw."""
        random.seed(5)
        first = random.random()
        random.seed(5)
        agent: MockAgent[Any] = MockAgent(latency=0, rate_limit_on_call=1)

        with pytest.raises(mocks.ClientError):
            await agent.run("p")

        assert random.random() == first
