"""Framework exceptions and DefaultErrorClassifier."""

from __future__ import annotations

import pickle

import pytest
from pydantic import BaseModel, ValidationError

from async_batch_llm import strategies
from async_batch_llm.classifiers import GeminiErrorClassifier
from async_batch_llm.strategies.errors import (
    DEFAULT_RATE_LIMIT_WAIT,
    RATE_LIMIT_PATTERNS,
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    HookTimeoutError,
    TokenTrackingError,
)


class _Model(BaseModel):
    count: int


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"count": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validation unexpectedly succeeded")


RATE_LIMIT = ErrorInfo(True, True, False, "rate_limit", DEFAULT_RATE_LIMIT_WAIT)
FRAMEWORK_TIMEOUT = ErrorInfo(True, False, True, "framework_timeout")
API_TIMEOUT = ErrorInfo(True, False, True, "api_timeout")
CONNECTION = ErrorInfo(True, False, False, "connection_error")
VALIDATION = ErrorInfo(True, False, False, "validation_error")
LOGIC = ErrorInfo(False, False, False, "logic_error")
UNKNOWN = ErrorInfo(True, False, False, "unknown")


@pytest.fixture
def classifier() -> DefaultErrorClassifier:
    return DefaultErrorClassifier()


class TestConstants:
    def test_rate_limit_patterns(self) -> None:
        """The rate-limit phrases are the four documented lower-case substrings."""
        assert RATE_LIMIT_PATTERNS == ("429", "resource_exhausted", "quota", "rate limit")

    def test_default_rate_limit_wait(self) -> None:
        """The suggested wait after a rate limit is five minutes."""
        assert DEFAULT_RATE_LIMIT_WAIT == 300.0


class TestRules:
    @pytest.mark.parametrize(
        ("exception", "expected"),
        [
            pytest.param(Exception("HTTP 429 Too Many Requests"), RATE_LIMIT, id="429"),
            pytest.param(Exception("RESOURCE_EXHAUSTED"), RATE_LIMIT, id="resource-exhausted"),
            pytest.param(Exception("Quota exceeded for model"), RATE_LIMIT, id="quota"),
            pytest.param(Exception("Rate Limit reached"), RATE_LIMIT, id="rate-limit"),
            pytest.param(FrameworkTimeoutError("attempt took too long"), FRAMEWORK_TIMEOUT),
            pytest.param(TimeoutError("read"), API_TIMEOUT, id="timeout-error"),
            pytest.param(RuntimeError("Request Timeout"), API_TIMEOUT, id="timeout-message"),
            pytest.param(ConnectionResetError("reset"), CONNECTION, id="connection-error"),
            pytest.param(OSError("Connection refused"), CONNECTION, id="connection-message"),
            pytest.param(_validation_error(), VALIDATION, id="pydantic-validation"),
            pytest.param(ValueError("bad"), LOGIC, id="value-error"),
            pytest.param(TypeError("bad"), LOGIC, id="type-error"),
            pytest.param(AttributeError("bad"), LOGIC, id="attribute-error"),
            pytest.param(KeyError("bad"), LOGIC, id="key-error"),
            pytest.param(IndexError("bad"), LOGIC, id="index-error"),
            pytest.param(NameError("bad"), LOGIC, id="name-error"),
            pytest.param(ZeroDivisionError("bad"), LOGIC, id="zero-division"),
            pytest.param(AssertionError("bad"), LOGIC, id="assertion-error"),
            pytest.param(RuntimeError("something odd"), UNKNOWN, id="unknown"),
        ],
    )
    def test_each_rule(
        self, classifier: DefaultErrorClassifier, exception: Exception, expected: ErrorInfo
    ) -> None:
        """Each rule of the table produces its documented ErrorInfo."""
        assert classifier.classify(exception) == expected

    def test_subclasses_of_logic_types_are_permanent(
        self, classifier: DefaultErrorClassifier
    ) -> None:
        """A subclass of a logic-error type (here UnicodeError < ValueError) is not retried."""
        assert classifier.classify(UnicodeError("bad bytes")) == LOGIC


class TestPrecedence:
    def test_framework_timeout_beats_a_rate_limit_phrase(
        self, classifier: DefaultErrorClassifier
    ) -> None:
        """The framework's own timeout is a timeout even when its message (which quotes the
        item id) contains a rate-limit phrase."""
        error = FrameworkTimeoutError("Attempt for item 'quota-429' exceeded timeout_per_item")
        info = classifier.classify(error)
        assert (info.error_category, info.is_rate_limit, info.is_retryable) == (
            "framework_timeout",
            False,
            True,
        )

    @pytest.mark.parametrize("make", [DefaultErrorClassifier, GeminiErrorClassifier])
    def test_hook_timeout_beats_a_rate_limit_phrase(self, make: type[ErrorClassifier]) -> None:
        """A dry_run() over its bound is a retryable hook timeout, whatever the item id in
        its message says (regression: it was classified by the message, as a rate limit)."""
        error = HookTimeoutError("dry_run() for item 'quota-429' did not finish within 30s")
        info = make().classify(error)
        assert (info.error_category, info.is_rate_limit, info.is_retryable, info.is_timeout) == (
            "hook_timeout",
            False,
            True,
            True,
        )

    def test_rate_limit_message_beats_logic_type(self, classifier: DefaultErrorClassifier) -> None:
        """A ValueError mentioning a quota is a rate limit, not a logic error."""
        assert classifier.classify(ValueError("quota exhausted")) == RATE_LIMIT

    def test_framework_timeout_beats_generic_timeout(
        self, classifier: DefaultErrorClassifier
    ) -> None:
        """FrameworkTimeoutError is a TimeoutError but gets its own category."""
        info = classifier.classify(FrameworkTimeoutError("timeout after 2.0s"))
        assert info.error_category == "framework_timeout"

    def test_timeout_beats_connection(self, classifier: DefaultErrorClassifier) -> None:
        """A message mentioning both a timeout and a connection counts as a timeout."""
        info = classifier.classify(RuntimeError("connection timeout"))
        assert info.error_category == "api_timeout"

    def test_timeout_message_beats_logic_type(self, classifier: DefaultErrorClassifier) -> None:
        """A ValueError whose message says timeout is a retryable timeout."""
        assert classifier.classify(ValueError("upstream timeout")) == API_TIMEOUT

    def test_connection_message_beats_logic_type(self, classifier: DefaultErrorClassifier) -> None:
        """A KeyError whose message mentions a connection is a retryable connection error."""
        assert classifier.classify(KeyError("connection pool")) == CONNECTION

    def test_validation_error_before_value_error(self, classifier: DefaultErrorClassifier) -> None:
        """pydantic's ValidationError subclasses ValueError yet stays retryable."""
        error = _validation_error()
        assert isinstance(error, ValueError)
        assert classifier.classify(error).error_category == "validation_error"


class TestMatchesRateLimit:
    @pytest.mark.parametrize(
        "text", ["429", "Resource_Exhausted", "QUOTA", "rate LIMIT exceeded", "x 429 y"]
    )
    def test_matches_case_insensitively(self, text: str) -> None:
        """Every pattern matches whatever its case and surroundings."""
        assert DefaultErrorClassifier._matches_rate_limit(text)

    @pytest.mark.parametrize("text", ["", "rate-limit", "limit rate", "42 9"])
    def test_rejects_other_text(self, text: str) -> None:
        """Text without any pattern does not match."""
        assert not DefaultErrorClassifier._matches_rate_limit(text)


class TestRobustness:
    def test_broken_str_falls_back_to_type_rules(self, classifier: DefaultErrorClassifier) -> None:
        """An exception whose __str__ raises is still classified by its type."""

        class Unprintable(ConnectionError):
            def __str__(self) -> str:
                raise RuntimeError("no message")

        assert classifier.classify(Unprintable()) == CONNECTION

    def test_classification_is_deterministic(self, classifier: DefaultErrorClassifier) -> None:
        """Classifying the same exception twice gives equal answers."""
        error = RuntimeError("quota")
        assert classifier.classify(error) == classifier.classify(error)


class TestErrorInfo:
    def test_field_order_and_default(self) -> None:
        """Fields are positional in the documented order; suggested_wait defaults to None."""
        info = ErrorInfo(True, False, True, "api_timeout")
        assert (info.is_retryable, info.is_rate_limit, info.is_timeout) == (True, False, True)
        assert info.error_category == "api_timeout"
        assert info.suggested_wait is None


class TestErrorClassifierInterface:
    def test_is_abstract(self) -> None:
        """ErrorClassifier cannot be instantiated without classify()."""
        with pytest.raises(TypeError, match="abstract"):
            ErrorClassifier()  # type: ignore[abstract]

    def test_subclass_with_classify_works(self) -> None:
        """A subclass implementing classify() is usable as a classifier."""

        class AlwaysPermanent(ErrorClassifier):
            def classify(self, exception: Exception) -> ErrorInfo:
                return LOGIC

        assert AlwaysPermanent().classify(RuntimeError()) is LOGIC


class TestTokenTrackingError:
    def test_message_and_default_usage(self) -> None:
        """str() is the message and the usage defaults to an empty dict."""
        error = TokenTrackingError("parse failed")
        assert str(error) == "parse failed"
        assert error._failed_token_usage == {}

    def test_carries_token_usage(self) -> None:
        """The given usage is stored as _failed_token_usage and exposed as token_usage."""
        usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        error = TokenTrackingError("parse failed", token_usage=usage)
        assert error._failed_token_usage == usage
        assert error.token_usage == usage
        assert error.__dict__["_failed_token_usage"] == usage

    def test_token_usage_is_keyword_only(self) -> None:
        """token_usage cannot be passed positionally."""
        with pytest.raises(TypeError, match="positional"):
            TokenTrackingError("x", {"total_tokens": 1})  # type: ignore[call-arg]

    def test_pickle_round_trip(self) -> None:
        """Pickling keeps the message and the token usage."""
        error = TokenTrackingError("parse failed", token_usage={"total_tokens": 15})
        restored = pickle.loads(pickle.dumps(error))
        assert type(restored) is TokenTrackingError
        assert str(restored) == "parse failed"
        assert restored._failed_token_usage == {"total_tokens": 15}


class TestFrameworkTimeoutError:
    def test_is_a_timeout_error(self) -> None:
        """Code catching TimeoutError also catches the framework's timeout."""
        with pytest.raises(TimeoutError, match=r"took 2\.0s"):
            raise FrameworkTimeoutError("took 2.0s", timeout_limit=1.0)

    def test_attributes(self) -> None:
        """item_id, elapsed and timeout_limit are stored; they default to None."""
        error = FrameworkTimeoutError("late", item_id="item-1", elapsed=2.5, timeout_limit=2.0)
        assert (error.item_id, error.elapsed, error.timeout_limit) == ("item-1", 2.5, 2.0)
        bare = FrameworkTimeoutError("late")
        assert (bare.item_id, bare.elapsed, bare.timeout_limit) == (None, None, None)

    def test_pickle_round_trip(self) -> None:
        """Pickling keeps the message, the attributes and attached token usage."""
        error = FrameworkTimeoutError("late", item_id="item-1", elapsed=2.5, timeout_limit=2.0)
        error.__dict__["_failed_token_usage"] = {"total_tokens": 7}
        restored = pickle.loads(pickle.dumps(error))
        assert type(restored) is FrameworkTimeoutError
        assert str(restored) == "late"
        assert (restored.item_id, restored.elapsed, restored.timeout_limit) == (
            "item-1",
            2.5,
            2.0,
        )
        assert restored.__dict__["_failed_token_usage"] == {"total_tokens": 7}


class TestPackageExports:
    def test_strategies_all(self) -> None:
        """The strategies package exports exactly the documented names."""
        assert set(strategies.__all__) == {
            "ErrorClassifier",
            "ErrorInfo",
            "DefaultErrorClassifier",
            "FrameworkTimeoutError",
            "TokenTrackingError",
            "RateLimitStrategy",
            "ExponentialBackoffStrategy",
            "FixedDelayStrategy",
        }
        assert len(strategies.__all__) == 8

    def test_reexports_are_the_same_objects(self) -> None:
        """Re-exported names are the definitions themselves, not copies."""
        assert strategies.DefaultErrorClassifier is DefaultErrorClassifier
        assert strategies.FrameworkTimeoutError is FrameworkTimeoutError
