"""The simulator's parts on their own: buckets, header formats, schema examples, estimates."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Literal

import pydantic
import pytest

from async_batch_llm.testing.simulator._formats import (
    go_duration,
    proto_duration,
    retry_after_headers,
    rfc3339,
)
from async_batch_llm.testing.simulator._limits import KeyLimits, TokenBucket
from async_batch_llm.testing.simulator._schema import example_for_schema
from async_batch_llm.testing.simulator._text import count_text_chars, estimate_tokens


class TestTokenBucket:
    """A continuously refilling bucket."""

    def test_refills_continuously_up_to_capacity(self) -> None:
        """Units flow back at capacity/window per second and never exceed capacity."""
        bucket = TokenBucket(60, 60.0, now=0.0)
        bucket.level = 0
        bucket.refill(10.5)
        assert bucket.level == pytest.approx(10.5)
        bucket.refill(1000.0)
        assert bucket.level == 60

    def test_wait_and_time_to_full(self) -> None:
        """``wait_for`` is the time until enough units are in; ``time_to_full`` until capacity."""
        bucket = TokenBucket(10, 5.0, now=0.0)  # 2 units per second
        bucket.level = 1
        assert bucket.wait_for(1) == 0
        assert bucket.wait_for(4) == pytest.approx(1.5)
        assert bucket.time_to_full() == pytest.approx(4.5)

    def test_clock_going_back_adds_nothing(self) -> None:
        """A clock reading earlier than the last update leaves the level alone."""
        bucket = TokenBucket(10, 10.0, now=5.0)
        bucket.level = 2
        bucket.refill(1.0)
        assert bucket.level == 2

    def test_resize_caps_the_level(self) -> None:
        """A smaller limit cuts what the bucket holds; a larger one keeps it."""
        bucket = TokenBucket(10, 60.0, now=0.0)
        bucket.resize(4, 60.0, now=0.0)
        assert (bucket.capacity, bucket.level) == (4, 4)
        bucket.resize(8, 60.0, now=0.0)
        assert (bucket.capacity, bucket.level) == (8, 4)
        assert bucket.rate == pytest.approx(8 / 60)


class TestKeyLimits:
    """Admission against the request and token buckets together."""

    def test_admits_until_either_bucket_runs_dry(self) -> None:
        """A request takes one request and its tokens; the binding bucket is named."""
        limits = KeyLimits(rpm=10, tpm=100, window_seconds=60.0, now=0.0)
        assert limits.admit(60, now=0.0).admitted
        refused = limits.admit(60, now=0.0)
        assert not refused.admitted
        assert refused.blocked_by == "tokens"
        assert refused.retry_after == pytest.approx(20 / (100 / 60))

    def test_request_above_the_window_is_too_large(self) -> None:
        """Tokens beyond a whole window can never be admitted."""
        refused = KeyLimits(rpm=None, tpm=100, window_seconds=60.0, now=0.0).admit(101, now=0.0)
        assert refused.too_large
        assert refused.retry_after is None

    def test_no_limits_admit_everything(self) -> None:
        """Without limits every request is admitted."""
        limits = KeyLimits(rpm=None, tpm=None, window_seconds=60.0, now=0.0)
        assert all(limits.admit(10**9, now=0.0).admitted for _ in range(100))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (1, "1s"),
        (7.66, "7.66s"),
        (59.9999, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration_matches_openai_reset_headers(seconds: float, text: str) -> None:
    """Reset durations read like OpenAI's (Go duration strings), rounded up to the ms."""
    assert go_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(39, "39s"), (0.25, "0.25s"), (1.5, "1.5s")])
def test_proto_duration_for_retry_info(seconds: float, text: str) -> None:
    """RetryInfo delays are protobuf JSON durations with fractions kept."""
    assert proto_duration(seconds) == text


def test_retry_after_headers_round_seconds_up_and_keep_milliseconds() -> None:
    """``retry-after`` never undershoots; ``retry-after-ms`` is exact."""
    assert retry_after_headers(0.3) == {"retry-after": "1", "retry-after-ms": "300"}
    assert retry_after_headers(30) == {"retry-after": "30", "retry-after-ms": "30000"}


def test_rfc3339_is_utc_with_milliseconds() -> None:
    """Anthropic reset times are RFC 3339 in UTC."""
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(min_length=12)
    zip_code: str = pydantic.Field(max_length=3)


class Node(pydantic.BaseModel):
    value: int
    children: list[Node] = []


class Everything(pydantic.BaseModel):
    name: str
    color: Color
    mode: Literal["fast", "slow"]
    count: int = pydantic.Field(ge=5, le=9)
    ratio: float = pydantic.Field(gt=2.0, lt=3.0)
    step: int = pydantic.Field(multiple_of=7, gt=1)
    flag: bool
    nickname: str | None
    home: Address
    previous: list[Address] = pydantic.Field(min_length=3)
    scores: dict[str, int]
    born: dt.date
    seen: dt.datetime
    tree: Node
    pair: tuple[int, str]
    either: int | Address


@pytest.mark.parametrize("model", [Everything, Address, Node])
def test_examples_validate_against_pydantic_schemas(model: type[pydantic.BaseModel]) -> None:
    """The example for a model's JSON schema ($defs, enums, bounds, unions) validates."""
    value = example_for_schema(model.model_json_schema())
    model.model_validate(value)


def test_examples_respect_bounds_and_lengths() -> None:
    """Bounds, multiples and lengths pick the nearest allowed value."""
    value = example_for_schema(Everything.model_json_schema())
    assert value["count"] == 5
    assert 2.0 < value["ratio"] < 3.0
    assert value["step"] == 7
    assert len(value["previous"]) == 3
    assert len(value["home"]["street"]) == 12
    assert value["nickname"] == "example"


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "STRING", "enum": ["b", "a"]}, "b"),
        ({"type": "INTEGER", "minimum": 3}, 3),
        ({"type": "STRING", "nullable": True}, "example"),
        ({"type": "ARRAY", "items": {"type": "BOOLEAN"}, "minItems": "2"}, [True, True]),
        (
            {"type": "OBJECT", "properties": {"n": {"type": "NUMBER"}}, "required": ["n"]},
            {"n": 1.0},
        ),
        ({"const": 42}, 42),
        ({"type": ["null", "integer"]}, 1),
        ({"anyOf": [{"type": "null"}, {"type": "boolean"}]}, True),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 0}, []),
        ({"type": "string", "format": "email"}, "user@example.com"),
        ({}, "example"),
    ],
)
def test_examples_for_gemini_and_edge_schemas(schema: dict[str, Any], expected: Any) -> None:
    """Upper-case Gemini types, string limits, type lists, null branches and empty schemas."""
    assert example_for_schema(schema) == expected


def test_recursive_schema_stays_finite() -> None:
    """A schema that requires itself still yields a finite value."""
    schema = {
        "$defs": {"Loop": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Loop"}}}},
        "$ref": "#/$defs/Loop",
    }
    value = example_for_schema(schema)
    depth = 0
    while value:
        value = value["next"]
        depth += 1
    assert 0 < depth < 50


def test_token_estimate_counts_text_not_structure() -> None:
    """About four characters a token, counting only text (roles and types are structure)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "x" * 9}]}]
    assert count_text_chars(messages, None, {"name": "tool"}) == 13
    assert estimate_tokens(0) == 1
    assert estimate_tokens(8) == 2
    assert estimate_tokens(9) == 3
