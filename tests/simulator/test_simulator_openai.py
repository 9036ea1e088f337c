"""The OpenAI chat-completions wire format, driven by the real ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from async_batch_llm.testing.simulator import ProviderSimulator
from conftest import ManualClock, StartSimulator

OpenAIFactory = Callable[..., openai.AsyncOpenAI]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=18, le=130)
    tags: list[str] = pydantic.Field(min_length=2)


async def test_text_reply_echoes_last_user_message_with_usage(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """A plain request gets ``Echo: <last user text>``, finish_reason stop and token usage."""
    client = openai_client(sim)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    choice = completion.choices[0]
    assert choice.message.content == "Echo: second"
    assert choice.finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    # "be brief" + "first" + "ok" + "second" = 21 characters, about 4 per token.
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 9


async def test_reply_is_cut_at_max_completion_tokens(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """A reply longer than ``max_completion_tokens`` is truncated with finish_reason length."""
    completion = await openai_client(sim).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x" * 100}], max_completion_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Echo: xx"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


async def test_forced_tool_call_returns_arguments_valid_for_the_schema(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """``tool_choice="required"`` answers with a tool call whose arguments fit its parameters."""
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {"name": "final_result", "parameters": Person.model_json_schema()},
        },
    ]
    completion = await openai_client(sim).chat.completions.create(
        model="gpt-4o", messages=USER, tools=tools, tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "final_result"
    person = Person.model_validate_json(call.function.arguments)
    assert person.age >= 18
    assert len(person.tags) >= 2


async def test_named_tool_choice_calls_that_tool(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """A tool_choice naming a function calls exactly that function."""
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("first", "second")
    ]
    completion = await openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "second"}},
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "second"
    assert json.loads(call.function.arguments) == {}


async def test_json_schema_response_format_returns_valid_json(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """``response_format`` json_schema answers with content valid for the schema."""
    completion = await openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
        },
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert Person.model_validate_json(content).name == "example"


async def test_rate_limit_headers_count_down_per_request(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """Each success carries the x-ratelimit trio for requests and tokens, remaining decreasing."""
    sim = await start_simulator(rpm=10, tpm=1000)
    client = openai_client(sim)
    remaining_requests: list[int] = []
    remaining_tokens: list[int] = []
    for _ in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=USER, max_completion_tokens=10
        )
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        remaining_requests.append(int(headers["x-ratelimit-remaining-requests"]))
        remaining_tokens.append(int(headers["x-ratelimit-remaining-tokens"]))
    assert remaining_requests == [9, 8, 7]
    # Each request costs 3 prompt tokens plus the 10 reserved for output.
    assert remaining_tokens == [987, 974, 961]
    # Three requests of a 10-per-minute bucket refill in 18 s; tokens 39 of 1000 in 2.34 s.
    assert headers["x-ratelimit-reset-requests"] == "18s"
    assert headers["x-ratelimit-reset-tokens"] == "2.34s"
    assert raw.parse().choices[0].message.content == "Echo: hello there"


async def test_request_over_rpm_gets_429_with_retry_after_until_the_bucket_refills(
    start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
) -> None:
    """The (N+1)th request in a window is a 429 with retry hints; it passes once they elapse."""
    sim = await start_simulator(rpm=2)
    client = openai_client(sim)
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4o", messages=USER)

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=USER)

    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "requests per min (RPM): Limit 2, Used 2, Requested 1" in error.message
    assert error.response.headers["retry-after"] == "30"
    assert error.response.headers["retry-after-ms"] == "30000"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert sim.stats.rate_limited == 1

    clock.advance(29.9)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=USER)
    clock.advance(0.1)
    completion = await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert completion.choices[0].message.content == "Echo: hello there"


async def test_request_over_tpm_gets_429_naming_tokens(
    start_simulator: StartSimulator, openai_client: OpenAIFactory, clock: ManualClock
) -> None:
    """Reserved output tokens count against TPM; an over-budget request waits for the refill."""
    sim = await start_simulator(tpm=100)
    client = openai_client(sim)
    for _ in range(2):  # 3 prompt + 40 reserved = 43 tokens each
        await client.chat.completions.create(
            model="gpt-4o", messages=USER, max_completion_tokens=40
        )

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=USER, max_completion_tokens=40
        )

    assert caught.value.type == "tokens"
    # 14 tokens left, 43 needed, refilling at 100/60 per second: 17.4 s.
    assert caught.value.response.headers["retry-after-ms"] == "17400"
    assert caught.value.response.headers["retry-after"] == "18"
    clock.advance(17.4)
    await client.chat.completions.create(model="gpt-4o", messages=USER, max_completion_tokens=40)


async def test_request_larger_than_the_tpm_limit_gets_no_retry_hint(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """A request needing more tokens than a whole window is refused without a retry hint."""
    sim = await start_simulator(tpm=50)
    with pytest.raises(openai.RateLimitError, match="Request too large") as caught:
        await openai_client(sim).chat.completions.create(
            model="gpt-4o", messages=USER, max_completion_tokens=100
        )
    assert "retry-after" not in caught.value.response.headers


async def test_keys_have_separate_buckets(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """Exhausting one API key's bucket leaves another key's untouched."""
    sim = await start_simulator(rpm=1)
    await openai_client(sim, api_key="key-a").chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.RateLimitError):
        await openai_client(sim, api_key="key-a").chat.completions.create(model="m", messages=USER)
    await openai_client(sim, api_key="key-b").chat.completions.create(model="m", messages=USER)
    assert sim.stats.by_key == {"key-a": 2, "key-b": 1}


async def test_exhausted_quota_is_insufficient_quota(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    """After the daily quota every request is a 429 with code insufficient_quota, no hint."""
    sim = await start_simulator(daily_request_quota=2)
    client = openai_client(sim)
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.RateLimitError, match="exceeded your current quota") as caught:
        await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers
    assert sim.stats.quota_exhausted == 1


async def test_injected_503_is_an_openai_server_error(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """``fail_next`` answers with OpenAI's server_error envelope at the given status."""
    sim.fail_next(status=503)
    with pytest.raises(openai.InternalServerError, match="overloaded") as caught:
        await openai_client(sim).chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.status_code == 503
    assert caught.value.type == "server_error"
    assert sim.stats.injected_errors == 1


async def test_unknown_route_is_404_in_openai_shape(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """An endpoint the simulator lacks answers 404 with OpenAI's error envelope."""
    with pytest.raises(openai.NotFoundError, match="Invalid URL") as caught:
        await openai_client(sim).embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.type == "invalid_request_error"


async def test_streamed_completion_yields_content_and_usage(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    """``stream=True`` sends chunks the SDK reassembles, with usage when asked for."""
    stream = await openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    finish_reasons = []
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish_reasons.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert text == "Echo: hello there"
    assert finish_reasons[-1] == "stop"
    assert usage is not None
    assert usage.completion_tokens == 5
