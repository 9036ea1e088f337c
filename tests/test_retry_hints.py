"""retry_after_seconds: the server's retry hint carried by a rate-limit exception."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from unittest.mock import Mock

import pytest

from async_batch_llm._internal.retry_hints import retry_after_seconds

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


class HTTPStatusError(Exception):
    """Shaped like the OpenAI/Anthropic SDK errors: the HTTP response rides on the error."""

    def __init__(self, headers: Any) -> None:
        super().__init__("429 Too Many Requests")
        self.response = Mock(status_code=429, headers=headers)


class HeadersError(Exception):
    """An error with headers directly on it (like urllib's HTTPError)."""

    def __init__(self, headers: Any) -> None:
        super().__init__("429")
        self.headers = headers


class GoogleAPIError(Exception):
    """Shaped like google-genai's ``errors.APIError``: ``details`` is the parsed error body."""

    def __init__(self, code: int, response_json: Any) -> None:
        super().__init__(f"{code} RESOURCE_EXHAUSTED. {response_json}")
        self.code = code
        self.details = response_json
        self.response: Any = None


class RetryAfterError(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


def _google_body(retry_delay: Any) -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
            ],
        }
    }


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


class TestNoHint:
    def test_plain_exception(self) -> None:
        """An exception without any hint gives None."""
        assert retry_after_seconds(RuntimeError("429")) is None

    def test_headers_without_retry_after(self) -> None:
        """Headers that carry no retry header give None."""
        assert retry_after_seconds(HTTPStatusError({"content-type": "application/json"})) is None

    def test_mock_response_attributes_are_ignored(self) -> None:
        """Auto-created Mock attributes are not mistaken for hints."""
        error = RuntimeError("429")
        error.response = Mock()  # type: ignore[attr-defined]
        assert retry_after_seconds(error) is None


class TestRetryAfterAttribute:
    @pytest.mark.parametrize(
        ("value", "expected"), [(12, 12.0), (1.5, 1.5), (0, 0.0), (timedelta(seconds=90), 90.0)]
    )
    def test_numeric_attribute(self, value: Any, expected: float) -> None:
        """A numeric (or timedelta) ``retry_after`` attribute is the hint in seconds."""
        assert retry_after_seconds(RetryAfterError(value)) == expected

    @pytest.mark.parametrize("value", [True, -1, float("nan"), float("inf"), "12", None])
    def test_unusable_attribute_is_ignored(self, value: Any) -> None:
        """Booleans, negative, non-finite and non-numeric values are not hints."""
        assert retry_after_seconds(RetryAfterError(value)) is None

    def test_attribute_wins_over_headers(self) -> None:
        """The explicit attribute is consulted before the headers."""
        error = RetryAfterError(3)
        error.headers = {"retry-after": "60"}  # type: ignore[attr-defined]
        assert retry_after_seconds(error) == 3.0


class TestHeaders:
    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({"retry-after": "30"}, id="lower-case-dict"),
            pytest.param({"Retry-After": "30"}, id="title-case-dict"),
            pytest.param({"RETRY-AFTER": b"30"}, id="bytes-value"),
        ],
    )
    def test_response_headers(self, headers: dict[str, Any]) -> None:
        """``retry-after`` on ``exc.response.headers`` is found whatever the key's case."""
        assert retry_after_seconds(HTTPStatusError(headers)) == 30.0

    def test_case_insensitive_header_container(self) -> None:
        """A case-insensitive header object (email.message.Message) works."""
        headers = Message()
        headers["Retry-After"] = "45"
        assert retry_after_seconds(HeadersError(headers)) == 45.0

    def test_headers_on_the_exception(self) -> None:
        """Headers at ``exc.headers`` are read too."""
        assert retry_after_seconds(HeadersError({"retry-after": "7"})) == 7.0

    def test_fractional_seconds(self) -> None:
        """A fractional delta-seconds value is accepted."""
        assert retry_after_seconds(HeadersError({"retry-after": " 2.5 "})) == 2.5

    def test_milliseconds_take_precedence(self) -> None:
        """``retry-after-ms`` is preferred to ``retry-after``."""
        headers = {"retry-after": "2", "retry-after-ms": "1500"}
        assert retry_after_seconds(HTTPStatusError(headers)) == 1.5

    def test_malformed_milliseconds_fall_back_to_seconds(self) -> None:
        """A malformed ``retry-after-ms`` is ignored in favour of ``retry-after``."""
        headers = {"retry-after-ms": "soon", "retry-after": "4"}
        assert retry_after_seconds(HTTPStatusError(headers)) == 4.0

    def test_http_date_in_the_future(self) -> None:
        """An HTTP-date is converted to the seconds from now until then."""
        headers = {"retry-after": "Sun, 01 Jun 2025 12:02:00 GMT"}
        assert retry_after_seconds(HTTPStatusError(headers), now=NOW) == 120.0

    def test_http_date_in_the_past_is_zero(self) -> None:
        """A date already past gives 0.0, never a negative wait."""
        headers = {"retry-after": "Sun, 01 Jun 2025 11:00:00 GMT"}
        assert retry_after_seconds(HTTPStatusError(headers), now=NOW) == 0.0

    def test_http_date_uses_the_clock_by_default(self) -> None:
        """Without ``now`` a date far in the past still gives 0.0."""
        headers = {"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}
        assert retry_after_seconds(HTTPStatusError(headers)) == 0.0

    @pytest.mark.parametrize("value", ["soon", "-5", "", "Someday, 99 Foo 2025"])
    def test_malformed_retry_after_is_ignored(self, value: str) -> None:
        """Negative, empty and unparseable values are not hints."""
        assert retry_after_seconds(HTTPStatusError({"retry-after": value}), now=NOW) is None

    def test_response_headers_used_when_exception_headers_lack_hint(self) -> None:
        """``exc.headers`` without a hint does not hide ``exc.response.headers``."""
        error = HTTPStatusError({"retry-after": "9"})
        error.headers = {"content-type": "text/plain"}  # type: ignore[attr-defined]
        assert retry_after_seconds(error) == 9.0


class TestGoogleRetryInfo:
    @pytest.mark.parametrize(
        ("delay", "expected"),
        [
            ("12s", 12.0),
            ("1.5s", 1.5),
            ("0.250s", 0.25),
            ({"seconds": 12, "nanos": 0}, 12.0),
            ({"seconds": "3", "nanos": 500_000_000}, 3.5),
            ({"nanos": 250_000_000}, 0.25),
        ],
    )
    def test_retry_delay_forms(self, delay: Any, expected: float) -> None:
        """retryDelay as a JSON duration string or a seconds/nanos object."""
        assert retry_after_seconds(GoogleAPIError(429, _google_body(delay))) == expected

    def test_inner_error_object(self) -> None:
        """``details`` may be the inner ``error`` object instead of the whole body."""
        body = _google_body("8s")["error"]
        assert retry_after_seconds(GoogleAPIError(429, body)) == 8.0

    def test_body_wrapped_in_a_list(self) -> None:
        """A body wrapped in a one-element array is accepted."""
        assert retry_after_seconds(GoogleAPIError(429, [_google_body("5s")])) == 5.0

    def test_body_attribute(self) -> None:
        """An error body at ``exc.body`` (as pydantic-ai's ModelHTTPError keeps it) works."""
        error = RuntimeError("429")
        error.body = _google_body("6s")  # type: ignore[attr-defined]
        assert retry_after_seconds(error) == 6.0

    @pytest.mark.parametrize("delay", ["soon", "-3s", {"minutes": 1}, {"seconds": "x"}, 12])
    def test_malformed_retry_delay_is_ignored(self, delay: Any) -> None:
        """Unparseable or negative retry delays are not hints."""
        assert retry_after_seconds(GoogleAPIError(429, _google_body(delay))) is None

    def test_body_without_retry_info(self) -> None:
        """A body whose details lack RetryInfo gives None."""
        body = {"error": {"code": 429, "details": [{"@type": "x.Help", "links": []}]}}
        assert retry_after_seconds(GoogleAPIError(429, body)) is None

    @pytest.mark.parametrize("details", ["429 RESOURCE_EXHAUSTED", None, {"error": "quota"}])
    def test_details_of_other_shapes(self, details: Any) -> None:
        """``details`` that is not an error body is ignored."""
        assert retry_after_seconds(GoogleAPIError(429, details)) is None

    def test_headers_win_over_body(self) -> None:
        """An HTTP header is consulted before the error body."""
        error = GoogleAPIError(429, _google_body("30s"))
        error.response = Mock(headers={"retry-after": "2"})
        assert retry_after_seconds(error) == 2.0


class TestExceptionChain:
    def test_hint_on_the_cause(self) -> None:
        """A hint on ``__cause__`` is found when the outer exception has none."""
        error = _chained(RuntimeError("wrapped"), HTTPStatusError({"retry-after": "11"}))
        assert retry_after_seconds(error) == 11.0

    def test_hint_on_the_context(self) -> None:
        """A hint on the implicit ``__context__`` is found too."""
        error = RuntimeError("during handling")
        error.__context__ = RetryAfterError(4)
        assert retry_after_seconds(error) == 4.0

    def test_outermost_hint_wins(self) -> None:
        """The outer exception's own hint is preferred to its cause's."""
        error = _chained(RetryAfterError(1), RetryAfterError(99))
        assert retry_after_seconds(error) == 1.0

    def test_deep_chain(self) -> None:
        """A hint a few levels down is found."""
        error: BaseException = RetryAfterError(5)
        for level in range(4):
            error = _chained(RuntimeError(f"level {level}"), error)
        assert retry_after_seconds(error) == 5.0

    def test_cycle_terminates(self) -> None:
        """A cause cycle is walked once and ends without a hint."""
        first = RuntimeError("first")
        second = RuntimeError("second")
        first.__cause__ = second
        second.__cause__ = first
        assert retry_after_seconds(first) is None

    def test_chain_walk_is_bounded(self) -> None:
        """A hint buried under a very long chain is not searched for."""
        error: BaseException = RetryAfterError(5)
        for _ in range(100):
            outer = RuntimeError("wrap")
            outer.__cause__ = error
            error = outer
        assert retry_after_seconds(error) is None


class TestRobustness:
    def test_raising_property_is_ignored(self) -> None:
        """A property that raises is skipped and the other sources are still read."""

        class Awkward(Exception):
            @property
            def retry_after(self) -> float:
                raise RuntimeError("not loaded")

            headers = {"retry-after": "3"}  # noqa: RUF012

        assert retry_after_seconds(Awkward()) == 3.0

    def test_headers_without_mapping_interface(self) -> None:
        """Headers of an unexpected type are ignored without raising."""
        assert retry_after_seconds(HeadersError([("retry-after", "3")])) is None

    def test_cancellation_is_not_swallowed(self) -> None:
        """A BaseException raised by an attribute read propagates."""

        class Interrupting(Exception):
            @property
            def retry_after(self) -> float:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            retry_after_seconds(Interrupting())
