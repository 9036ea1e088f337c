"""GeminiErrorClassifier (and the hard-quota rule it shares with DefaultErrorClassifier)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    GeminiErrorClassifier,
)
from async_batch_llm._internal.quota import is_quota_exhausted
from async_batch_llm.classifiers.gemini import (
    DEFAULT_RATE_LIMIT_WAIT,
    RATE_LIMIT_PATTERNS,
    TIMEOUT_PATTERNS,
    _matches_any_pattern,
)

genai_errors = pytest.importorskip("google.genai.errors")
pydantic_ai_exceptions = pytest.importorskip("pydantic_ai.exceptions")

RATE_LIMIT = ErrorInfo(
    is_retryable=False,
    is_rate_limit=True,
    is_timeout=False,
    error_category="rate_limit",
    suggested_wait=300.0,
)
QUOTA_EXHAUSTED = ErrorInfo(
    is_retryable=False, is_rate_limit=False, is_timeout=False, error_category="quota_exhausted"
)
TIMEOUT = ErrorInfo(
    is_retryable=True, is_rate_limit=False, is_timeout=True, error_category="timeout"
)
CLIENT_ERROR = ErrorInfo(
    is_retryable=False, is_rate_limit=False, is_timeout=False, error_category="client_error"
)
SERVER_ERROR = ErrorInfo(
    is_retryable=True, is_rate_limit=False, is_timeout=False, error_category="server_error"
)
SERVER_TIMEOUT = ErrorInfo(
    is_retryable=True, is_rate_limit=False, is_timeout=True, error_category="server_timeout"
)
VALIDATION = ErrorInfo(
    is_retryable=True, is_rate_limit=False, is_timeout=False, error_category="validation_error"
)


def google_body(
    code: int, status: str, message: str = "error", details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def quota_failure(*quota_ids: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "m", "quotaId": quota_id} for quota_id in quota_ids],
    }


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def client_error(code: int, status: str, **kwargs: Any) -> Exception:
    error: Exception = genai_errors.ClientError(code, google_body(code, status, **kwargs))
    return error


def server_error(code: int, status: str, **kwargs: Any) -> Exception:
    error: Exception = genai_errors.ServerError(code, google_body(code, status, **kwargs))
    return error


def chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


@pytest.fixture
def classifier() -> GeminiErrorClassifier:
    return GeminiErrorClassifier()


class TestConstants:
    def test_values(self) -> None:
        """The module constants have their documented values."""
        assert RATE_LIMIT_PATTERNS == ("429", "resource_exhausted", "quota", "rate limit")
        assert TIMEOUT_PATTERNS == ("timeout", "504", "deadline")
        assert DEFAULT_RATE_LIMIT_WAIT == 300.0

    def test_pattern_matching_ignores_case(self) -> None:
        """``_matches_any_pattern`` is a case-insensitive substring test."""
        assert _matches_any_pattern("Resource_Exhausted for model", RATE_LIMIT_PATTERNS)
        assert _matches_any_pattern("DEADLINE exceeded", TIMEOUT_PATTERNS)
        assert not _matches_any_pattern("bad request", RATE_LIMIT_PATTERNS)

    def test_is_an_error_classifier(self, classifier: GeminiErrorClassifier) -> None:
        """GeminiErrorClassifier is an ErrorClassifier."""
        assert isinstance(classifier, ErrorClassifier)


class TestFrameworkTimeout:
    def test_comes_first(self, classifier: GeminiErrorClassifier) -> None:
        """The framework's own timeout wins even over a rate-limit phrase in its message."""
        info = classifier.classify(FrameworkTimeoutError("429 after 5.0s", item_id="a"))
        assert info == ErrorInfo(
            is_retryable=True,
            is_rate_limit=False,
            is_timeout=True,
            error_category="framework_timeout",
        )


class TestGoogleAPIErrors:
    def test_429_is_a_rate_limit(self, classifier: GeminiErrorClassifier) -> None:
        """A 429 ClientError is a rate limit, not retryable, with the default wait."""
        assert classifier.classify(client_error(429, "RESOURCE_EXHAUSTED")) == RATE_LIMIT

    def test_429_retry_info_sets_the_suggested_wait(
        self, classifier: GeminiErrorClassifier
    ) -> None:
        """Gemini's RetryInfo delay becomes ``suggested_wait``."""
        error = client_error(
            429,
            "RESOURCE_EXHAUSTED",
            details=[
                quota_failure("GenerateRequestsPerMinutePerProjectPerModel"),
                retry_info("12s"),
            ],
        )
        info = classifier.classify(error)
        assert info.is_rate_limit
        assert info.suggested_wait == 12.0

    def test_status_wins_over_the_message(self, classifier: GeminiErrorClassifier) -> None:
        """A 400 whose message mentions a quota is a permanent client error."""
        error = client_error(400, "INVALID_ARGUMENT", message="quota project not set")
        assert classifier.classify(error) == CLIENT_ERROR

    @pytest.mark.parametrize(("code", "status"), [(400, "INVALID_ARGUMENT"), (403, "DENIED")])
    def test_other_4xx_are_permanent(
        self, classifier: GeminiErrorClassifier, code: int, status: str
    ) -> None:
        """4xx other than 408 and 429 are permanent client errors."""
        assert classifier.classify(client_error(code, status)) == CLIENT_ERROR

    def test_404_is_permanent(self, classifier: GeminiErrorClassifier) -> None:
        """A missing model (404) is not retried."""
        assert classifier.classify(client_error(404, "NOT_FOUND")) == CLIENT_ERROR

    def test_408_is_a_retryable_timeout(self, classifier: GeminiErrorClassifier) -> None:
        """A 408 request timeout is retried."""
        assert classifier.classify(client_error(408, "DEADLINE_EXCEEDED")) == TIMEOUT

    @pytest.mark.parametrize(("code", "status"), [(500, "INTERNAL"), (503, "UNAVAILABLE")])
    def test_5xx_are_retryable(
        self, classifier: GeminiErrorClassifier, code: int, status: str
    ) -> None:
        """Server errors are retried."""
        assert classifier.classify(server_error(code, status)) == SERVER_ERROR

    def test_504_is_a_server_timeout(self, classifier: GeminiErrorClassifier) -> None:
        """A 504 is a retryable server timeout."""
        assert classifier.classify(server_error(504, "DEADLINE_EXCEEDED")) == SERVER_TIMEOUT

    def test_5xx_with_deadline_message_is_a_server_timeout(
        self, classifier: GeminiErrorClassifier
    ) -> None:
        """A 500 whose message says the deadline passed is a server timeout."""
        error = server_error(
            500, "INTERNAL", message="Deadline expired before operation could complete"
        )
        assert classifier.classify(error) == SERVER_TIMEOUT


class TestQuotaExhausted:
    def test_daily_gemini_quota_fails_fast(self, classifier: GeminiErrorClassifier) -> None:
        """A 429 naming a per-day quota is permanent and not a rate limit."""
        error = client_error(
            429,
            "RESOURCE_EXHAUSTED",
            details=[
                quota_failure(
                    "GenerateRequestsPerMinutePerProjectPerModel",
                    "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                ),
                retry_info("30s"),
            ],
        )
        assert classifier.classify(error) == QUOTA_EXHAUSTED
        assert DefaultErrorClassifier().classify(error) == QUOTA_EXHAUSTED

    def test_per_minute_quota_is_a_rate_limit(self, classifier: GeminiErrorClassifier) -> None:
        """A per-minute quota violation is an ordinary rate limit."""
        error = client_error(
            429, "RESOURCE_EXHAUSTED", details=[quota_failure("GenerateRequestsPerMinute")]
        )
        assert classifier.classify(error).is_rate_limit
        assert not is_quota_exhausted(error)

    def test_openai_insufficient_quota_message(self, classifier: GeminiErrorClassifier) -> None:
        """An OpenAI ``insufficient_quota`` error (even as plain text) is quota exhausted."""
        error = RuntimeError(
            "Error code: 429 - {'error': {'message': 'You exceeded your current quota', "
            "'type': 'insufficient_quota', 'code': 'insufficient_quota'}}"
        )
        assert classifier.classify(error) == QUOTA_EXHAUSTED
        assert DefaultErrorClassifier().classify(error) == QUOTA_EXHAUSTED

    def test_openai_style_code_attribute(self) -> None:
        """A ``code`` attribute of ``insufficient_quota`` is enough."""
        error = RuntimeError("429")
        error.code = "insufficient_quota"  # type: ignore[attr-defined]
        assert is_quota_exhausted(error)

    def test_openai_body_attribute(self) -> None:
        """An error body with the ``insufficient_quota`` code is recognised."""
        error = RuntimeError("429")
        error.body = {"code": "insufficient_quota", "message": "x"}  # type: ignore[attr-defined]
        assert is_quota_exhausted(error)

    def test_pydantic_ai_quota_error(self, classifier: GeminiErrorClassifier) -> None:
        """pydantic-ai's ModelQuotaExceededError is quota exhausted."""
        error = pydantic_ai_exceptions.ModelHTTPError.for_category(
            pydantic_ai_exceptions.ModelQuotaExceededError, status_code=402, model_name="m"
        )
        assert classifier.classify(error) == QUOTA_EXHAUSTED

    def test_wrapped_quota_error(self, classifier: GeminiErrorClassifier) -> None:
        """A quota error further down the exception chain is still recognised."""
        inner = client_error(
            429, "RESOURCE_EXHAUSTED", details=[quota_failure("RequestsPerDayPerProject")]
        )
        assert classifier.classify(chained(RuntimeError("call failed"), inner)) == QUOTA_EXHAUSTED

    def test_plain_quota_message_is_still_a_rate_limit(self) -> None:
        """A bare "quota" message without hard-quota evidence stays a rate limit."""
        assert not is_quota_exhausted(RuntimeError("Quota exceeded for model"))
        assert DefaultErrorClassifier().classify(RuntimeError("Quota exceeded")).is_rate_limit


class TestPydanticAIErrors:
    def test_unexpected_model_behavior_is_a_validation_error(
        self, classifier: GeminiErrorClassifier
    ) -> None:
        """UnexpectedModelBehavior (output retries exhausted) is retried as a validation error."""
        error = pydantic_ai_exceptions.UnexpectedModelBehavior(
            "Exceeded maximum output retries (1)"
        )
        assert classifier.classify(error) == VALIDATION

    def test_model_http_error_429_with_retry_after(self, classifier: GeminiErrorClassifier) -> None:
        """A pydantic-ai 429 is a rate limit whose suggested wait is the Retry-After header."""
        error = pydantic_ai_exceptions.ModelHTTPError(
            429, "gpt-test", {"message": "slow down"}, headers={"Retry-After": "7"}
        )
        info = classifier.classify(error)
        assert info.is_rate_limit
        assert info.suggested_wait == 7.0

    def test_model_http_error_400_is_permanent(self, classifier: GeminiErrorClassifier) -> None:
        """A pydantic-ai 400 is a permanent client error."""
        error = pydantic_ai_exceptions.ModelHTTPError(400, "gpt-test", {"message": "bad"})
        assert classifier.classify(error) == CLIENT_ERROR

    def test_model_http_error_503_is_retryable(self, classifier: GeminiErrorClassifier) -> None:
        """A pydantic-ai 503 is a retryable server error."""
        error = pydantic_ai_exceptions.ModelHTTPError(503, "gpt-test", {"message": "busy"})
        assert classifier.classify(error) == SERVER_ERROR


class TestPlainExceptions:
    @pytest.mark.parametrize(
        "message",
        ["429 RESOURCE_EXHAUSTED", "Rate limit exceeded", "quota exceeded", "resource_exhausted"],
    )
    def test_rate_limit_phrases(self, classifier: GeminiErrorClassifier, message: str) -> None:
        """A rate-limit phrase makes a plain exception a (non-retryable) rate limit."""
        assert classifier.classify(Exception(message)) == RATE_LIMIT

    def test_mock_agent_client_error_is_a_rate_limit(
        self, classifier: GeminiErrorClassifier
    ) -> None:
        """MockAgent's simulated ``ClientError`` is classified as a rate limit."""
        from async_batch_llm.testing.mocks import ClientError

        assert classifier.classify(ClientError("429 RESOURCE_EXHAUSTED")) == RATE_LIMIT

    @pytest.mark.parametrize("message", ["Request timeout", "HTTP 504", "Deadline exceeded"])
    def test_timeout_phrases(self, classifier: GeminiErrorClassifier, message: str) -> None:
        """A timeout phrase makes a plain exception a retryable timeout."""
        assert classifier.classify(RuntimeError(message)) == TIMEOUT

    def test_patterns_apply_without_google_genai(
        self, classifier: GeminiErrorClassifier, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Message rules do not depend on google-genai being imported."""
        monkeypatch.delitem(sys.modules, "google.genai.errors", raising=False)
        assert classifier.classify(Exception("429 Too Many Requests")) == RATE_LIMIT
        assert classifier.classify(RuntimeError("deadline exceeded")) == TIMEOUT

    def test_timeout_error_type(self, classifier: GeminiErrorClassifier) -> None:
        """A TimeoutError without a timeout phrase falls to the default rules (API timeout)."""
        info = classifier.classify(TimeoutError())
        assert (info.is_retryable, info.is_timeout, info.error_category) == (
            True,
            True,
            "api_timeout",
        )

    def test_connection_error(self, classifier: GeminiErrorClassifier) -> None:
        """A ConnectionError is retried as a connection error."""
        info = classifier.classify(ConnectionResetError("peer reset"))
        assert (info.is_retryable, info.error_category) == (True, "connection_error")

    def test_pydantic_validation_error(self, classifier: GeminiErrorClassifier) -> None:
        """A pydantic ValidationError is a retryable validation error."""

        class Model(BaseModel):
            x: int

        with pytest.raises(ValidationError) as caught:
            Model.model_validate({"x": "nope"})
        assert classifier.classify(caught.value) == VALIDATION

    @pytest.mark.parametrize("error", [ValueError("bad"), KeyError("k"), TypeError("t")])
    def test_logic_errors_are_permanent(
        self, classifier: GeminiErrorClassifier, error: Exception
    ) -> None:
        """Bug-like exception types are permanent logic errors."""
        info = classifier.classify(error)
        assert (info.is_retryable, info.error_category) == (False, "logic_error")

    def test_anything_else_is_retryable_unknown(self, classifier: GeminiErrorClassifier) -> None:
        """An unrecognised exception is retried with category ``unknown``."""
        info = classifier.classify(RuntimeError("something odd"))
        assert (info.is_retryable, info.is_rate_limit, info.error_category) == (
            True,
            False,
            "unknown",
        )

    def test_broken_str_does_not_break_classification(
        self, classifier: GeminiErrorClassifier
    ) -> None:
        """An exception whose ``__str__`` raises is still classified."""

        class Unprintable(RuntimeError):
            def __str__(self) -> str:
                raise RuntimeError("no str")

        assert classifier.classify(Unprintable()).error_category == "unknown"
