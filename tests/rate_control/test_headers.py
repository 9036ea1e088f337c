"""Parsing providers' rate-limit headers: OpenAI, Anthropic, retry hints, and junk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from async_batch_llm._internal.rate_control.headers import (
    LimitObservation,
    parse_rate_limit_headers,
)

# 2024-06-01T12:00:00Z as Unix seconds: the wall clock of every test below.
NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()

OPENAI_RESPONSE_HEADERS = {
    "date": "Sat, 01 Jun 2024 12:00:00 GMT",
    "content-type": "application/json",
    "openai-organization": "user-abc123",
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "1999936",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "1m30.5s",
    "x-request-id": "req_0123456789abcdef",
}

ANTHROPIC_RESPONSE_HEADERS = {
    "date": "Sat, 01 Jun 2024 12:00:00 GMT",
    "content-type": "application/json",
    "request-id": "req_018EeWyXxfu5pfWkrYcMdjWG",
    "anthropic-organization-id": "4f5d0f6a-0000-0000-0000-000000000000",
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2024-06-01T12:00:01Z",
    "anthropic-ratelimit-tokens-limit": "48000",
    "anthropic-ratelimit-tokens-remaining": "47000",
    "anthropic-ratelimit-tokens-reset": "2024-06-01T12:00:02.500Z",
    "anthropic-ratelimit-input-tokens-limit": "40000",
    "anthropic-ratelimit-input-tokens-remaining": "39000",
    "anthropic-ratelimit-input-tokens-reset": "2024-06-01T12:00:02Z",
    "anthropic-ratelimit-output-tokens-limit": "8000",
    "anthropic-ratelimit-output-tokens-remaining": "8000",
    "anthropic-ratelimit-output-tokens-reset": "2024-06-01T12:00:00Z",
}


def parse(headers: Any) -> LimitObservation:
    return parse_rate_limit_headers(headers, now=NOW)


class TestOpenAI:
    def test_real_response_headers(self) -> None:
        """A real-looking OpenAI header set gives both budgets with their resets."""
        assert parse(OPENAI_RESPONSE_HEADERS) == LimitObservation(
            limit_requests=10000,
            remaining_requests=9999,
            reset_requests_s=0.006,
            limit_tokens=2000000,
            remaining_tokens=1999936,
            reset_tokens_s=90.5,
            retry_after_s=None,
        )

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("1s", 1.0),
            ("6m0s", 360.0),
            ("120ms", 0.12),
            ("1h2m3.5s", 3723.5),
            ("0.5s", 0.5),
            ("0s", 0.0),
            ("7.66s", 7.66),
            ("2m", 120.0),
            ("1h", 3600.0),
            ("250us", 0.00025),
            ("250µs", 0.00025),
            ("1500ns", 0.0000015),
            (".5s", 0.5),
        ],
    )
    def test_go_durations(self, text: str, seconds: float) -> None:
        """Every Go duration form OpenAI uses for resets is read as seconds."""
        observation = parse({"x-ratelimit-reset-requests": text})
        assert observation.reset_requests_s == pytest.approx(seconds)

    def test_a_429_response_with_retry_hints(self) -> None:
        """A 429's headers carry the budgets and the retry hint (milliseconds preferred)."""
        headers = {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "120ms",
            "retry-after": "1",
            "retry-after-ms": "120",
        }
        observation = parse(headers)
        assert observation.remaining_requests == 0
        assert observation.retry_after_s == pytest.approx(0.12)


class TestAnthropic:
    def test_real_response_headers_prefer_the_combined_token_group(self) -> None:
        """The ``tokens`` group (the most restrictive limit in effect) wins over input/output."""
        assert parse(ANTHROPIC_RESPONSE_HEADERS) == LimitObservation(
            limit_requests=50,
            remaining_requests=49,
            reset_requests_s=1.0,
            limit_tokens=48000,
            remaining_tokens=47000,
            reset_tokens_s=2.5,
            retry_after_s=None,
        )

    def test_without_the_combined_group_the_tighter_of_input_and_output_is_used(self) -> None:
        """Input and output groups only: the one with fewer tokens remaining is reported."""
        headers = {
            key: value
            for key, value in ANTHROPIC_RESPONSE_HEADERS.items()
            if not key.startswith("anthropic-ratelimit-tokens-")
        }
        observation = parse(headers)
        assert observation.limit_tokens == 8000
        assert observation.remaining_tokens == 8000
        assert observation.reset_tokens_s == 0.0

    def test_a_reset_in_the_past_is_zero_seconds(self) -> None:
        """A timestamp that has passed means the budget is already full again."""
        observation = parse({"anthropic-ratelimit-requests-reset": "2024-06-01T11:59:00Z"})
        assert observation.reset_requests_s == 0.0

    def test_timestamps_with_offsets_and_without_a_zone(self) -> None:
        """An explicit offset is honoured; a timestamp without one is read as UTC."""
        with_offset = parse({"anthropic-ratelimit-requests-reset": "2024-06-01T14:00:05+02:00"})
        naive = parse({"anthropic-ratelimit-requests-reset": "2024-06-01T12:00:05"})
        assert with_offset.reset_requests_s == pytest.approx(5.0)
        assert naive.reset_requests_s == pytest.approx(5.0)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"retry-after-ms": "1500"}, 1.5),
            ({"retry-after": "20"}, 20.0),
            ({"retry-after": "0.25"}, 0.25),
            ({"retry-after": "Sat, 01 Jun 2024 12:00:30 GMT"}, 30.0),
            ({"retry-after": "Sat, 01 Jun 2024 11:00:00 GMT"}, 0.0),
            ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ],
    )
    def test_forms(self, headers: dict[str, str], seconds: float) -> None:
        """``retry-after-ms``, then ``retry-after`` in seconds or as an HTTP date."""
        assert parse(headers).retry_after_s == pytest.approx(seconds)


class TestGenericForms:
    def test_names_are_case_insensitive(self) -> None:
        """Header names match in any case."""
        observation = parse({"X-RateLimit-Limit-Requests": "60", "Retry-After": "2"})
        assert observation.limit_requests == 60
        assert observation.retry_after_s == 2.0

    def test_httpx_headers_are_accepted(self) -> None:
        """An ``httpx2.Headers`` object is read like a mapping."""
        headers = httpx2.Headers(OPENAI_RESPONSE_HEADERS)
        assert parse(headers).limit_tokens == 2000000

    def test_bytes_keys_and_values_are_decoded(self) -> None:
        """Raw header bytes are read as latin-1 text."""
        assert parse({b"x-ratelimit-remaining-tokens": b"42"}).remaining_tokens == 42

    def test_reset_as_plain_seconds_or_epoch_timestamp(self) -> None:
        """A bare number is seconds; a Unix timestamp becomes seconds from now."""
        assert parse({"x-ratelimit-reset-requests": "20"}).reset_requests_s == 20.0
        epoch = str(NOW + 12.0)
        assert parse({"x-ratelimit-reset-requests": epoch}).reset_requests_s == pytest.approx(12)

    def test_no_rate_limit_headers_is_an_empty_observation(self) -> None:
        """A response without rate-limit headers reports nothing."""
        observation = parse({"content-type": "application/json"})
        assert observation.is_empty
        assert not parse(OPENAI_RESPONSE_HEADERS).is_empty


class TestJunkNeverRaises:
    @pytest.mark.parametrize(
        "value",
        ["", "abc", "-1", "nan", "inf", "1e400", "1x", "1h-2m", "ms", "s1", "1.2.3s", "1s2"],
    )
    def test_malformed_values_are_absent(self, value: str) -> None:
        """Unparseable, negative or non-finite values are treated as not sent."""
        headers = {
            "x-ratelimit-limit-requests": value,
            "x-ratelimit-remaining-requests": value,
            "x-ratelimit-reset-requests": value,
            "retry-after": value,
        }
        assert parse(headers) == LimitObservation()

    @pytest.mark.parametrize(
        "headers",
        [None, 42, "x-ratelimit-limit-requests: 5", {1: 2}, {"retry-after": None}],
    )
    def test_things_that_are_not_headers(self, headers: Any) -> None:
        """``None`` or a non-mapping gives an empty observation."""
        assert parse(headers) == LimitObservation()

    def test_a_header_container_that_fails(self) -> None:
        """A container whose ``items`` raises gives an empty observation."""

        class Broken:
            def items(self) -> Any:
                raise RuntimeError("boom")

        assert parse(Broken()) == LimitObservation()

    def test_bad_timestamps(self) -> None:
        """Invalid dates in reset and retry-after headers are ignored."""
        headers = {
            "anthropic-ratelimit-requests-reset": "2024-13-45T99:00:00Z",
            "retry-after": "Someday, 99 Foo 2024 25:61:00 GMT",
        }
        assert parse(headers) == LimitObservation()
