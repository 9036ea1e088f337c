"""TokenExtractor: token usage read from the exceptions of failed attempts."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any
from unittest.mock import MagicMock, Mock

import pytest

from async_batch_llm.token_extractor import _EMPTY_USAGE, TokenExtractor, _coerce_usage, _int

ZEROS = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_input_tokens": 0}


@dataclass
class CurrentUsage:
    """Shaped like pydantic-ai's RunUsage."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass
class LegacyUsage:
    """Shaped like the package's MockUsage: only request/response token names."""

    request_tokens: int = 0
    response_tokens: int = 0
    total_tokens: int = 0


class RunResult:
    """A pydantic-ai style result whose usage is a method."""

    def __init__(self, usage: object) -> None:
        self._usage = usage

    def usage(self) -> object:
        return self._usage


class CauseWithResult(Exception):
    """The error pydantic-ai chains under its own, carrying the partial run result."""

    def __init__(self, result: object) -> None:
        super().__init__("inner")
        self.result = result


def _raised_from(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("outer") from cause
    except RuntimeError as exc:
        return exc


class UsageError(Exception):
    """An exception exposing ``usage`` directly."""

    def __init__(self, usage: object) -> None:
        super().__init__("usage attached")
        self.usage = usage


@pytest.fixture
def extractor() -> TokenExtractor:
    return TokenExtractor()


class TestStrategies:
    def test_cause_result_usage_method(self, extractor: TokenExtractor) -> None:
        """Strategy 1: ``__cause__.result.usage()`` is coerced into the four counts."""
        usage = CurrentUsage(100, 50, 150, 20)
        exc = _raised_from(CauseWithResult(RunResult(usage)))
        assert extractor.extract_from_exception(exc) == {
            "input_tokens": 100,
            "output_tokens": 50,
            "total_tokens": 150,
            "cached_input_tokens": 20,
        }

    def test_cause_result_usage_property(self, extractor: TokenExtractor) -> None:
        """Strategy 1 also accepts ``result.usage`` as a plain value (a property)."""
        result = Mock(spec=["usage"])
        result.usage = CurrentUsage(7, 3, 10)
        exc = _raised_from(CauseWithResult(result))
        assert extractor.extract_from_exception(exc)["total_tokens"] == 10

    def test_cause_wins_over_direct_and_attached(self, extractor: TokenExtractor) -> None:
        """The cause's result is tried first, before ``usage`` and ``_failed_token_usage``."""
        exc = UsageError(CurrentUsage(2, 2, 4))
        exc.__cause__ = CauseWithResult(RunResult(CurrentUsage(1, 1, 2)))
        exc.__dict__["_failed_token_usage"] = {"total_tokens": 99}
        assert extractor.extract_from_exception(exc)["total_tokens"] == 2

    def test_cause_without_result_falls_through(self, extractor: TokenExtractor) -> None:
        """A cause with no ``result`` lets the next strategies run."""
        exc = UsageError(CurrentUsage(5, 5, 10))
        exc.__cause__ = ValueError("plain cause")
        assert extractor.extract_from_exception(exc)["total_tokens"] == 10

    def test_direct_usage_attribute(self, extractor: TokenExtractor) -> None:
        """Strategy 2: an exception's own ``usage`` value is coerced."""
        exc = UsageError(LegacyUsage(request_tokens=8, response_tokens=4, total_tokens=12))
        assert extractor.extract_from_exception(exc) == {
            "input_tokens": 8,
            "output_tokens": 4,
            "total_tokens": 12,
            "cached_input_tokens": 0,
        }

    def test_direct_usage_method(self, extractor: TokenExtractor) -> None:
        """Strategy 2 calls ``usage`` when it is a method."""
        exc = UsageError(lambda: CurrentUsage(3, 1, 4))
        assert extractor.extract_from_exception(exc)["input_tokens"] == 3

    def test_direct_usage_wins_over_attached(self, extractor: TokenExtractor) -> None:
        """``usage`` is preferred to ``_failed_token_usage``."""
        exc = UsageError(CurrentUsage(1, 1, 2))
        exc.__dict__["_failed_token_usage"] = {"total_tokens": 99}
        assert extractor.extract_from_exception(exc)["total_tokens"] == 2

    def test_none_usage_falls_through(self, extractor: TokenExtractor) -> None:
        """A ``usage`` of None is not a match."""
        exc = UsageError(None)
        exc.__dict__["_failed_token_usage"] = {"total_tokens": 9}
        assert extractor.extract_from_exception(exc)["total_tokens"] == 9

    def test_attached_usage_overlays_zeros(self, extractor: TokenExtractor) -> None:
        """Strategy 3: ``_failed_token_usage`` entries overlay the all-zero dict."""
        exc = RuntimeError("failed")
        exc.__dict__["_failed_token_usage"] = {"input_tokens": 10, "total_tokens": 15}
        assert extractor.extract_from_exception(exc) == {
            "input_tokens": 10,
            "output_tokens": 0,
            "total_tokens": 15,
            "cached_input_tokens": 0,
        }

    def test_attached_usage_keeps_extra_int_keys(self, extractor: TokenExtractor) -> None:
        """Extra integer entries are carried over; non-integer entries are dropped."""
        exc = RuntimeError("failed")
        exc.__dict__["_failed_token_usage"] = {
            "total_tokens": 5,
            "reasoning_tokens": 3,
            "output_tokens": "7",
            "input_tokens": 2.5,
            "cached_input_tokens": True,
        }
        assert extractor.extract_from_exception(exc) == {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 5,
            "cached_input_tokens": 1,
            "reasoning_tokens": 3,
        }

    def test_attached_non_dict_is_ignored(self, extractor: TokenExtractor) -> None:
        """A ``_failed_token_usage`` that is not a dict gives zeros."""
        exc = RuntimeError("failed")
        exc.__dict__["_failed_token_usage"] = [("total_tokens", 5)]
        assert extractor.extract_from_exception(exc) == ZEROS

    def test_class_attribute_is_not_attached_usage(self, extractor: TokenExtractor) -> None:
        """Only an instance's own ``_failed_token_usage`` counts, not a class attribute."""

        class WithClassAttribute(Exception):
            _failed_token_usage = {"total_tokens": 5}  # noqa: RUF012

        assert extractor.extract_from_exception(WithClassAttribute()) == ZEROS

    def test_no_usage_gives_zeros(self, extractor: TokenExtractor) -> None:
        """An exception without any usage gives the four zero counts."""
        assert extractor.extract_from_exception(RuntimeError("plain")) == ZEROS

    def test_returns_a_fresh_dict(self, extractor: TokenExtractor) -> None:
        """Mutating a returned dict does not affect later results."""
        first = extractor.extract_from_exception(RuntimeError())
        first["total_tokens"] = 1000
        assert extractor.extract_from_exception(RuntimeError()) == ZEROS
        assert dict(_EMPTY_USAGE) == ZEROS


class TestCoercion:
    def test_current_names_preferred(self) -> None:
        """input_tokens/output_tokens win over request_tokens/response_tokens."""
        usage = Mock(input_tokens=10, output_tokens=5, request_tokens=99, response_tokens=99)
        usage.total_tokens = 15
        usage.cached_input_tokens = 0
        assert _coerce_usage(usage) == {
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "cached_input_tokens": 0,
        }

    def test_legacy_names_used_when_current_ones_are_not_ints(self) -> None:
        """On a Mock, auto-created input_tokens is skipped in favour of request_tokens."""
        usage = Mock(request_tokens=100, response_tokens=50, total_tokens=150)
        assert _coerce_usage(usage) == {
            "input_tokens": 100,
            "output_tokens": 50,
            "total_tokens": 150,
            "cached_input_tokens": 0,
        }

    def test_magic_mock_counts_as_nothing(self) -> None:
        """MagicMock attributes (int() of which is 1) are not read as counts."""
        assert _coerce_usage(MagicMock()) == ZEROS

    def test_none_counts_are_zero(self) -> None:
        """Attributes set to None count as 0 and let the fallback name be used."""
        usage = Mock(input_tokens=None, request_tokens=4, output_tokens=None, total_tokens=None)
        usage.response_tokens = None
        usage.cached_input_tokens = None
        assert _coerce_usage(usage) == {**ZEROS, "input_tokens": 4}

    def test_floats_are_truncated(self) -> None:
        """Numeric values that are not ints are converted with int()."""
        usage = CurrentUsage(input_tokens=10.9, total_tokens=20.0)  # type: ignore[arg-type]
        assert _coerce_usage(usage)["input_tokens"] == 10
        assert _coerce_usage(usage)["total_tokens"] == 20

    def test_mapping_usage(self) -> None:
        """A usage given as a mapping is read by key."""
        usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        assert _coerce_usage(usage) == {**ZEROS, **usage}

    def test_object_without_counts(self) -> None:
        """An object without any count attributes coerces to zeros."""
        assert _coerce_usage(object()) == ZEROS


class TestIntHelper:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, 0),
            (7, 7),
            (True, 1),
            (7.9, 7),
            ("12", 12),
            ("twelve", 0),
            (object(), 0),
            (math.inf, 0),
            (math.nan, 0),
        ],
    )
    def test_int(self, value: Any, expected: int) -> None:
        """None, unconvertible and non-finite values give 0; others go through int()."""
        assert _int(value) == expected


class TestFailures:
    def test_error_while_reading_gives_zeros_and_debug_log(
        self, extractor: TokenExtractor, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception raised by ``usage()`` is swallowed, logged at DEBUG, zeros returned."""

        def broken_usage() -> object:
            raise RuntimeError("usage unavailable")

        exc = UsageError(broken_usage)
        with caplog.at_level(logging.DEBUG, logger="async_batch_llm.token_extractor"):
            assert extractor.extract_from_exception(exc) == ZEROS
        [record] = caplog.records
        assert record.name == "async_batch_llm.token_extractor"
        assert record.levelno == logging.DEBUG
        assert "token usage" in record.getMessage().lower()

    def test_error_in_coercion_gives_zeros(self, extractor: TokenExtractor) -> None:
        """An attribute that raises during coercion gives zeros."""

        class ExplodingUsage:
            @property
            def input_tokens(self) -> int:
                raise RuntimeError("boom")

        assert extractor.extract_from_exception(UsageError(ExplodingUsage())) == ZEROS

    def test_cancelled_error_from_cause_access_propagates(self, extractor: TokenExtractor) -> None:
        """CancelledError raised while reading ``__cause__`` is not swallowed."""

        class CancellingCause(Exception):
            @property
            def __cause__(self) -> BaseException | None:  # type: ignore[override]
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            extractor.extract_from_exception(CancellingCause())

    def test_cancelled_error_from_usage_call_propagates(self, extractor: TokenExtractor) -> None:
        """CancelledError raised by ``usage()`` is not swallowed."""

        def cancelled() -> object:
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            extractor.extract_from_exception(UsageError(cancelled))


class TestAccumulate:
    def test_adds_in_place(self) -> None:
        """accumulate adds each of the four counts into the running total."""
        total = dict(ZEROS)
        TokenExtractor.accumulate(total, {**ZEROS, "input_tokens": 100, "total_tokens": 150})
        TokenExtractor.accumulate(total, {**ZEROS, "input_tokens": 100, "total_tokens": 150})
        assert total == {**ZEROS, "input_tokens": 200, "total_tokens": 300}

    def test_missing_keys_count_as_zero(self) -> None:
        """Keys missing on either side are treated as 0 and filled in."""
        total: dict[str, int] = {"output_tokens": 1}
        TokenExtractor.accumulate(total, {"cached_input_tokens": 4})
        assert total == {
            "input_tokens": 0,
            "output_tokens": 1,
            "total_tokens": 0,
            "cached_input_tokens": 4,
        }

    def test_only_the_four_keys(self) -> None:
        """Extra keys of the attempt are not summed."""
        total: dict[str, int] = {}
        TokenExtractor.accumulate(total, {"reasoning_tokens": 9})
        assert "reasoning_tokens" not in total
        assert total == ZEROS
