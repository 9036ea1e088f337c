"""OpenAI's online Responses API (``POST /v1/responses``), via openai and pydantic-ai."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pydantic
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm.testing.simulator import ProviderRequest, ProviderSimulator
from conftest import StartSimulator

OpenAIFactory = Callable[..., openai.AsyncOpenAI]


class Invoice(pydantic.BaseModel):
    number: str = pydantic.Field(min_length=4)
    total: float = pydantic.Field(gt=0)
    lines: list[str]


async def test_text_reply_usage_and_headers(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    seen: list[ProviderRequest] = []
    sim = await start_simulator(rpm=10, reply=lambda r: seen.append(r))
    client = openai_client(sim)
    raw = await client.responses.with_raw_response.create(
        model="gpt-5",
        instructions="be brief",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
    )
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert (response.object, response.status) == ("response", "completed")
    assert response.output_text == "Echo: hello there"
    assert response.usage is not None
    # "hello there" + "be brief" = 19 characters, about 4 a token.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 5)
    assert response.usage.total_tokens == 10
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    assert raw.headers["x-request-id"].startswith("req_sim")
    assert seen[0].path == "/v1/responses"
    assert seen[0].batch_id is None


async def test_string_input_and_truncation(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    client = openai_client(sim)
    response = await client.responses.create(model="gpt-5", input="a" * 100, max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert len(response.output_text) == 8


async def test_forced_function_call_and_json_schema(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    client = openai_client(sim)
    schema = Invoice.model_json_schema()
    called = await client.responses.create(
        model="gpt-5",
        input="bill me",
        tools=[{"type": "function", "name": "invoice", "parameters": schema, "strict": False}],
        tool_choice={"type": "function", "name": "invoice"},
    )
    (item,) = called.output
    assert item.type == "function_call"
    assert item.name == "invoice"
    assert item.call_id.startswith("call_")
    assert Invoice.model_validate_json(item.arguments).total > 0

    structured = await client.responses.create(
        model="gpt-5",
        input="bill me",
        text={"format": {"type": "json_schema", "name": "invoice", "schema": schema}},
    )
    assert Invoice.model_validate(json.loads(structured.output_text)).lines


async def test_streamed_response(sim: ProviderSimulator, openai_client: OpenAIFactory) -> None:
    client = openai_client(sim)
    stream = await client.responses.create(model="gpt-5", input="stream me", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Echo: stream me"
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_rate_limited_like_chat_completions(
    start_simulator: StartSimulator, openai_client: OpenAIFactory
) -> None:
    sim = await start_simulator(rpm=1)
    client = openai_client(sim)
    await client.responses.create(model="gpt-5", input="one")
    with pytest.raises(openai.RateLimitError) as refused:
        await client.responses.create(model="gpt-5", input="two")
    assert refused.value.response.headers["retry-after"] == "60"
    assert sim.stats.rate_limited == 1


async def test_pydantic_ai_agent_text_and_output_type(
    sim: ProviderSimulator, openai_client: OpenAIFactory
) -> None:
    model = OpenAIResponsesModel("gpt-5", provider=OpenAIProvider(openai_client=openai_client(sim)))
    result = await Agent(model).run("hello there")
    assert result.output == "Echo: hello there"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 5)
    structured = await Agent(model, output_type=Invoice).run("bill me")
    assert isinstance(structured.output, Invoice)
    assert len(structured.output.number) >= 4
    assert sim.stats.by_provider == {"openai": 2}
    assert {record.path for record in sim.stats.recent} == {"/v1/responses"}
