"""The Anthropic messages wire format, driven by the real ``anthropic`` client."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import anthropic
import pydantic
import pytest

from async_batch_llm.testing.simulator import ProviderSimulator
from conftest import ManualClock, StartSimulator

AnthropicFactory = Callable[..., anthropic.AsyncAnthropic]
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello there"}]


class Verdict(pydantic.BaseModel):
    label: str = pydantic.Field(min_length=3)
    score: float = pydantic.Field(gt=0, le=1)
    flagged: bool | None = None


async def test_text_reply_with_usage_and_stop_reason(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """A plain request gets one text block echoing the last user turn, end_turn and usage."""
    message = await anthropic_client(sim).messages.create(
        model="claude-sim",
        max_tokens=100,
        system="be brief",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-sim"
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == "Echo: second"
    # "be brief" + "first" + "ok" + "second" = 21 characters, about 4 per token.
    assert message.usage.input_tokens == 6
    assert message.usage.output_tokens == 3


async def test_text_reply_is_cut_at_max_tokens(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """A reply longer than ``max_tokens`` stops with stop_reason max_tokens."""
    message = await anthropic_client(sim).messages.create(
        model="claude-sim", max_tokens=1, messages=[{"role": "user", "content": "long " * 20}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 1


async def test_tool_choice_any_returns_tool_use_valid_for_input_schema(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """``tool_choice={"type": "any"}`` answers with a tool_use whose input fits the schema."""
    message = await anthropic_client(sim).messages.create(
        model="claude-sim",
        max_tokens=100,
        messages=USER,
        tools=[{"name": "final_result", "input_schema": Verdict.model_json_schema()}],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == "final_result"
    verdict = Verdict.model_validate(block.input)
    assert 0 < verdict.score <= 1
    assert len(verdict.label) >= 3


async def test_auto_tool_choice_answers_with_text(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """Tools offered without forcing one get a text reply."""
    message = await anthropic_client(sim).messages.create(
        model="claude-sim",
        max_tokens=100,
        messages=USER,
        tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
    )
    assert isinstance(message.content[0], anthropic.types.TextBlock)


async def test_json_output_format_returns_valid_json_text(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """``output_config.format`` json_schema answers with JSON text valid for the schema."""
    message = await anthropic_client(sim).messages.create(
        model="claude-sim",
        max_tokens=100,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": Verdict.model_json_schema()}},
    )
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert Verdict.model_validate_json(block.text).label == "example"


async def test_rate_limit_headers_count_down_with_rfc3339_resets(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory
) -> None:
    """Successes carry anthropic-ratelimit-* headers; remaining falls, resets are RFC 3339."""
    sim = await start_simulator(rpm=5, tpm=10_000)
    client = anthropic_client(sim)
    remaining: list[int] = []
    for _ in range(2):
        raw = await client.messages.with_raw_response.create(
            model="claude-sim", max_tokens=10, messages=USER
        )
        headers = raw.headers
        assert headers["anthropic-ratelimit-requests-limit"] == "5"
        assert headers["anthropic-ratelimit-tokens-limit"] == "10000"
        assert (
            headers["anthropic-ratelimit-input-tokens-remaining"]
            == (headers["anthropic-ratelimit-tokens-remaining"])
        )
        remaining.append(int(headers["anthropic-ratelimit-requests-remaining"]))
    assert remaining == [4, 3]
    # Two of five requests per minute refill in 24 s from the wall clock's now.
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset == datetime.fromtimestamp(1_700_000_024, tz=UTC)
    assert headers["request-id"].startswith("req_")
    message = await raw.parse()
    assert message.stop_reason == "end_turn"


async def test_request_over_rpm_gets_rate_limit_error_with_retry_after(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory, clock: ManualClock
) -> None:
    """Over the RPM limit: 429 rate_limit_error with retry-after; fine once it elapses."""
    sim = await start_simulator(rpm=3)
    client = anthropic_client(sim)
    for _ in range(3):
        await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)

    with pytest.raises(anthropic.RateLimitError, match="exceed the rate limit") as caught:
        await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)

    error = caught.value
    assert error.type == "rate_limit_error"
    assert error.response.headers["retry-after"] == "20"
    assert error.response.headers["retry-after-ms"] == "20000"
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    clock.advance(20)
    await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)


async def test_retry_hints_can_be_switched_off(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory
) -> None:
    """With send_retry_after and headers off, a 429 carries no hint of when to retry."""
    sim = await start_simulator(rpm=1, send_retry_after=False, send_rate_limit_headers=False)
    client = anthropic_client(sim)
    raw = await client.messages.with_raw_response.create(
        model="claude-sim", max_tokens=10, messages=USER
    )
    assert not [name for name in raw.headers if name.startswith("anthropic-ratelimit")]
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)
    headers = caught.value.response.headers
    assert "retry-after" not in headers
    assert "retry-after-ms" not in headers


async def test_exhausted_quota_is_enforced_spend_limit(
    start_simulator: StartSimulator, anthropic_client: AnthropicFactory
) -> None:
    """After the daily quota the SDK raises EnforcedSpendLimitReachedError (a 429)."""
    sim = await start_simulator(daily_request_quota=1)
    client = anthropic_client(sim)
    await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError, match="usage limits") as caught:
        await client.messages.create(model="claude-sim", max_tokens=10, messages=USER)
    assert caught.value.status_code == 429
    assert caught.value.error_code == "enforced_spend_limit_reached"


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_injected_errors_use_anthropic_error_types(
    sim: ProviderSimulator,
    anthropic_client: AnthropicFactory,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    """``fail_next`` answers with Anthropic's error envelope and type for the status."""
    sim.fail_next(status=status, provider="anthropic")
    with pytest.raises(error_class) as caught:
        await anthropic_client(sim).messages.create(
            model="claude-sim", max_tokens=10, messages=USER
        )
    assert caught.value.status_code == status
    assert caught.value.type == error_type


async def test_streamed_tool_use_reassembles_into_the_final_message(
    sim: ProviderSimulator, anthropic_client: AnthropicFactory
) -> None:
    """``stream=True`` sends the message events the SDK's stream helper turns into a message."""
    async with anthropic_client(sim).messages.stream(
        model="claude-sim",
        max_tokens=100,
        messages=USER,
        tools=[{"name": "final_result", "input_schema": Verdict.model_json_schema()}],
        tool_choice={"type": "any"},
    ) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert Verdict.model_validate(block.input).label == "example"
    assert message.usage.output_tokens > 1
