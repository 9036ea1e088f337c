"""Validation, defaults and soft warnings of RetryConfig, RateLimitConfig and ProcessorConfig."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import fields
from typing import Any

import pytest

from async_batch_llm.core.config import (
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    _total_backoff,
)

CONFIG_LOGGER = "async_batch_llm.core.config"

ConfigClass = type[RetryConfig] | type[RateLimitConfig] | type[ProcessorConfig]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == CONFIG_LOGGER and r.levelno == logging.WARNING
    ]


# --- defaults and field order ---------------------------------------------------------------


class TestDefaults:
    def test_retry_config_defaults(self) -> None:
        """RetryConfig() has the documented defaults."""
        cfg = RetryConfig()
        assert (cfg.max_attempts, cfg.initial_wait, cfg.max_wait) == (3, 1.0, 60.0)
        assert (cfg.exponential_base, cfg.jitter) == (2.0, True)

    def test_rate_limit_config_defaults(self) -> None:
        """RateLimitConfig() has the documented defaults, including max_rate_limit_retries=10."""
        cfg = RateLimitConfig()
        assert cfg.cooldown_seconds == 300.0
        assert cfg.slow_start_items == 50
        assert cfg.slow_start_initial_delay == 2.0
        assert cfg.slow_start_final_delay == 0.1
        assert cfg.backoff_multiplier == 1.5
        assert cfg.max_rate_limit_retries == 10

    def test_processor_config_defaults(self) -> None:
        """ProcessorConfig() has the documented defaults and default nested configs."""
        cfg = ProcessorConfig()
        assert cfg.max_workers == 5
        assert cfg.timeout_per_item == 120.0
        assert cfg.post_processor_timeout == 90.0
        assert cfg.retry == RetryConfig()
        assert cfg.rate_limit == RateLimitConfig()
        assert cfg.max_requests_per_minute is None
        assert cfg.progress_interval == 10
        assert cfg.progress_callback_timeout == 5.0
        assert cfg.enable_detailed_logging is False
        assert cfg.max_queue_size == 0
        assert cfg.dry_run is False

    def test_nested_defaults_are_fresh_per_instance(self) -> None:
        """Each ProcessorConfig gets its own RetryConfig and RateLimitConfig objects."""
        first, second = ProcessorConfig(), ProcessorConfig()
        assert first.retry is not second.retry
        assert first.rate_limit is not second.rate_limit

    def test_field_order(self) -> None:
        """Fields are declared in the documented positional order; the new field is last."""
        assert [f.name for f in fields(RetryConfig)] == [
            "max_attempts",
            "initial_wait",
            "max_wait",
            "exponential_base",
            "jitter",
        ]
        assert [f.name for f in fields(RateLimitConfig)] == [
            "cooldown_seconds",
            "slow_start_items",
            "slow_start_initial_delay",
            "slow_start_final_delay",
            "backoff_multiplier",
            "max_rate_limit_retries",
        ]
        assert [f.name for f in fields(ProcessorConfig)] == [
            "max_workers",
            "timeout_per_item",
            "post_processor_timeout",
            "retry",
            "rate_limit",
            "max_requests_per_minute",
            "progress_interval",
            "progress_callback_timeout",
            "enable_detailed_logging",
            "max_queue_size",
            "dry_run",
            "hook_timeout",
            "prepare_timeout",
            "cleanup_timeout",
            "observer_timeout",
            "observer_drain_timeout",
            "cancellation_grace",
            "mode",
            "batch_deadline",
            "batch_poll_interval",
            "batch_max_poll_interval",
            "batch_max_requests",
            "batch_on_cancel",
            "timeline_interval",
        ]
        # The hook bounds and batch settings are keyword-only: the 0.7.2 positional order
        # stays as it was.
        assert [f.name for f in fields(ProcessorConfig) if f.kw_only] == [
            "hook_timeout",
            "prepare_timeout",
            "cleanup_timeout",
            "observer_timeout",
            "observer_drain_timeout",
            "cancellation_grace",
            "mode",
            "batch_deadline",
            "batch_poll_interval",
            "batch_max_poll_interval",
            "batch_max_requests",
            "batch_on_cancel",
            "timeline_interval",
        ]

    def test_positional_construction(self) -> None:
        """All three configs can be built positionally and store each value in its field."""
        retry = RetryConfig(5, 0.5, 10.0, 3.0, False)
        assert (retry.max_attempts, retry.initial_wait, retry.max_wait) == (5, 0.5, 10.0)
        assert (retry.exponential_base, retry.jitter) == (3.0, False)

        rate = RateLimitConfig(30.0, 7, 1.0, 0.5, 2.0, 3)
        assert (rate.cooldown_seconds, rate.slow_start_items) == (30.0, 7)
        assert (rate.slow_start_initial_delay, rate.slow_start_final_delay) == (1.0, 0.5)
        assert (rate.backoff_multiplier, rate.max_rate_limit_retries) == (2.0, 3)

        cfg = ProcessorConfig(8, 30.0, 10.0, retry, rate, 600.0, 7, None, True, 16, True)
        assert (cfg.max_workers, cfg.timeout_per_item, cfg.post_processor_timeout) == (
            8,
            30.0,
            10.0,
        )
        assert cfg.retry is retry
        assert cfg.rate_limit is rate
        assert cfg.max_requests_per_minute == 600.0
        assert (cfg.progress_interval, cfg.progress_callback_timeout) == (7, None)
        assert cfg.enable_detailed_logging is True
        assert (cfg.max_queue_size, cfg.dry_run) == (16, True)

    def test_configs_are_mutable(self) -> None:
        """Fields can be assigned after construction (the dataclasses are not frozen)."""
        cfg = ProcessorConfig()
        cfg.max_workers = 11
        cfg.retry.max_attempts = 7
        assert cfg.max_workers == 11
        assert cfg.retry.max_attempts == 7


# --- range validation ------------------------------------------------------------------------


RANGE_ERRORS: list[tuple[ConfigClass, dict[str, Any], str, str]] = [
    (RetryConfig, {"max_attempts": 0}, "max_attempts must be >= 1", "0"),
    (RetryConfig, {"max_attempts": -3}, "max_attempts must be >= 1", "-3"),
    (RetryConfig, {"initial_wait": 0.0}, "initial_wait must be > 0", "0.0"),
    (RetryConfig, {"initial_wait": -1.5}, "initial_wait must be > 0", "-1.5"),
    (
        RetryConfig,
        {"initial_wait": 5.0, "max_wait": 4.0},
        "max_wait must be >= initial_wait",
        "max_wait=4.0",
    ),
    (RetryConfig, {"exponential_base": 0.5}, "exponential_base must be >= 1", "0.5"),
    (RateLimitConfig, {"cooldown_seconds": -1.0}, "cooldown_seconds must be >= 0", "-1.0"),
    (RateLimitConfig, {"slow_start_items": -1}, "slow_start_items must be >= 0", "-1"),
    (
        RateLimitConfig,
        {"slow_start_initial_delay": 0.1, "slow_start_final_delay": 2.0},
        "slow_start_initial_delay must be >= slow_start_final_delay",
        "slow_start_initial_delay=0.1",
    ),
    (RateLimitConfig, {"backoff_multiplier": 0.99}, "backoff_multiplier must be >= 1.0", "0.99"),
    (
        RateLimitConfig,
        {"max_rate_limit_retries": -1},
        "max_rate_limit_retries must be >= 0",
        "-1",
    ),
    (ProcessorConfig, {"max_workers": 0}, "max_workers must be >= 1", "0"),
    (ProcessorConfig, {"timeout_per_item": 0}, "timeout_per_item must be > 0", "0"),
    (ProcessorConfig, {"timeout_per_item": -2.5}, "timeout_per_item must be > 0", "-2.5"),
    (
        ProcessorConfig,
        {"post_processor_timeout": 0.0},
        "post_processor_timeout must be > 0",
        "0.0",
    ),
    (ProcessorConfig, {"progress_interval": 0}, "progress_interval must be >= 1", "0"),
    (
        ProcessorConfig,
        {"progress_callback_timeout": 0.0},
        "progress_callback_timeout must be > 0",
        "0.0",
    ),
    (
        ProcessorConfig,
        {"progress_callback_timeout": -1.0},
        "progress_callback_timeout must be > 0",
        "-1.0",
    ),
    (ProcessorConfig, {"max_queue_size": -1}, "max_queue_size must be >= 0", "-1"),
    (
        ProcessorConfig,
        {"max_requests_per_minute": 0},
        "max_requests_per_minute must be > 0 or None",
        "0",
    ),
    (
        ProcessorConfig,
        {"max_requests_per_minute": -60.0},
        "max_requests_per_minute must be > 0 or None",
        "-60.0",
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "phrase", "value"),
    RANGE_ERRORS,
    ids=[
        f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
        for c, kw, _, _ in RANGE_ERRORS
    ],
)
def test_out_of_range_value_raises_value_error_naming_it(
    cls: ConfigClass, kwargs: dict[str, Any], phrase: str, value: str
) -> None:
    """Each range rule raises ValueError starting with its fixed phrase and naming the value."""
    with pytest.raises(ValueError, match=re.escape(phrase)) as exc_info:
        cls(**kwargs)
    message = str(exc_info.value)
    assert message.startswith(phrase)
    assert re.search(rf"got {re.escape(value)}(?![\d.])", message)


@pytest.mark.parametrize(
    ("cls", "field_name"),
    [
        (RetryConfig, "initial_wait"),
        (RetryConfig, "max_wait"),
        (RetryConfig, "exponential_base"),
        (RateLimitConfig, "cooldown_seconds"),
        (RateLimitConfig, "slow_start_initial_delay"),
        (RateLimitConfig, "slow_start_final_delay"),
        (RateLimitConfig, "backoff_multiplier"),
        (ProcessorConfig, "timeout_per_item"),
        (ProcessorConfig, "post_processor_timeout"),
        (ProcessorConfig, "progress_callback_timeout"),
        (ProcessorConfig, "max_requests_per_minute"),
    ],
)
def test_nan_is_rejected(cls: ConfigClass, field_name: str) -> None:
    """NaN fails every range rule instead of slipping through the comparisons."""
    kwargs: dict[str, Any] = {field_name: math.nan}
    with pytest.raises(ValueError, match=r"must be .*\bnan\b") as exc_info:
        cls(**kwargs)
    assert field_name in str(exc_info.value)


class TestValidationOrder:
    def test_retry_config_reports_first_rule_in_order(self) -> None:
        """With several bad RetryConfig fields, max_attempts is reported first."""
        with pytest.raises(ValueError, match="max_attempts must be >= 1"):
            RetryConfig(max_attempts=0, initial_wait=0, exponential_base=0.5)
        with pytest.raises(ValueError, match="initial_wait must be > 0"):
            RetryConfig(initial_wait=0, exponential_base=0.5)

    def test_rate_limit_config_reports_first_rule_in_order(self) -> None:
        """With several bad RateLimitConfig fields, the earlier rule wins."""
        with pytest.raises(ValueError, match="cooldown_seconds must be >= 0"):
            RateLimitConfig(cooldown_seconds=-1, slow_start_items=-1, max_rate_limit_retries=-1)
        with pytest.raises(ValueError, match=r"backoff_multiplier must be >= 1\.0"):
            RateLimitConfig(backoff_multiplier=0.5, max_rate_limit_retries=-1)

    @pytest.mark.parametrize(
        ("kwargs", "phrase"),
        [
            (
                {"max_workers": 0, "timeout_per_item": 0, "max_queue_size": -1},
                "max_workers must be >= 1",
            ),
            ({"timeout_per_item": 0, "post_processor_timeout": 0}, "timeout_per_item must be > 0"),
            (
                {"post_processor_timeout": 0, "progress_interval": 0},
                "post_processor_timeout must be > 0",
            ),
            (
                {"progress_interval": 0, "progress_callback_timeout": 0},
                "progress_interval must be >= 1",
            ),
            (
                {"progress_callback_timeout": 0, "max_queue_size": -1},
                "progress_callback_timeout must be > 0",
            ),
            (
                {"max_queue_size": -1, "max_requests_per_minute": 0},
                "max_queue_size must be >= 0",
            ),
        ],
    )
    def test_processor_config_reports_first_rule_in_order(
        self, kwargs: dict[str, Any], phrase: str
    ) -> None:
        """With several bad ProcessorConfig fields, the first rule in the documented order wins."""
        with pytest.raises(ValueError, match=re.escape(phrase)):
            ProcessorConfig(**kwargs)

    def test_own_fields_are_checked_before_nested_configs(self) -> None:
        """A bad max_requests_per_minute is reported before a bad nested retry config."""
        retry = RetryConfig()
        retry.max_attempts = 0
        with pytest.raises(ValueError, match="max_requests_per_minute must be > 0 or None"):
            ProcessorConfig(max_requests_per_minute=0, retry=retry)

    def test_retry_is_checked_before_rate_limit(self) -> None:
        """When both nested configs are bad, the retry config's error is reported."""
        cfg = ProcessorConfig()
        cfg.retry.max_attempts = 0
        cfg.rate_limit.cooldown_seconds = -1
        with pytest.raises(ValueError, match="max_attempts must be >= 1"):
            cfg.validate()


class TestValidBoundaries:
    def test_rate_limit_boundaries_are_valid(self) -> None:
        """Zero cooldown, zero slow-start items, equal delays and multiplier 1.0 are allowed."""
        cfg = RateLimitConfig(
            cooldown_seconds=0,
            slow_start_items=0,
            slow_start_initial_delay=0.5,
            slow_start_final_delay=0.5,
            backoff_multiplier=1.0,
            max_rate_limit_retries=0,
        )
        assert cfg.cooldown_seconds == 0
        assert cfg.slow_start_items == 0
        assert cfg.slow_start_initial_delay == cfg.slow_start_final_delay
        assert cfg.max_rate_limit_retries == 0

    def test_retry_boundaries_are_valid(self) -> None:
        """One attempt, max_wait equal to initial_wait and base 1 are allowed."""
        cfg = RetryConfig(max_attempts=1, initial_wait=2.0, max_wait=2.0, exponential_base=1)
        assert (cfg.max_attempts, cfg.max_wait, cfg.exponential_base) == (1, 2.0, 1)

    def test_processor_boundaries_are_valid(self) -> None:
        """One worker, progress every item, an unbounded queue and no callback limit are allowed."""
        cfg = ProcessorConfig(
            max_workers=1,
            progress_interval=1,
            max_queue_size=0,
            progress_callback_timeout=None,
            max_requests_per_minute=None,
        )
        assert cfg.max_queue_size == 0
        assert cfg.progress_callback_timeout is None

    def test_float_fields_accept_ints(self) -> None:
        """Numeric float fields take ints as well."""
        retry = RetryConfig(initial_wait=1, max_wait=2, exponential_base=3)
        rate = RateLimitConfig(cooldown_seconds=5, slow_start_initial_delay=2, backoff_multiplier=2)
        cfg = ProcessorConfig(
            timeout_per_item=30,
            post_processor_timeout=10,
            progress_callback_timeout=1,
            max_requests_per_minute=6000,
        )
        assert retry.max_wait == 2
        assert rate.cooldown_seconds == 5
        assert cfg.max_requests_per_minute == 6000

    def test_huge_max_attempts_does_not_overflow(self) -> None:
        """A very large retry budget with an uncapped exponential wait still validates."""
        cfg = ProcessorConfig(
            retry=RetryConfig(max_attempts=100_000, exponential_base=2.0, max_wait=math.inf)
        )
        assert cfg.retry.max_attempts == 100_000


# --- type validation -------------------------------------------------------------------------


TYPE_ERRORS: list[tuple[ConfigClass, str, object]] = [
    (RetryConfig, "max_attempts", "3"),
    (RetryConfig, "max_attempts", 2.5),
    (RetryConfig, "max_attempts", True),
    (RetryConfig, "max_attempts", None),
    (RetryConfig, "initial_wait", "1"),
    (RetryConfig, "initial_wait", True),
    (RetryConfig, "max_wait", None),
    (RetryConfig, "exponential_base", "2"),
    (RetryConfig, "jitter", "no"),
    (RetryConfig, "jitter", 1),
    (RateLimitConfig, "cooldown_seconds", "300"),
    (RateLimitConfig, "slow_start_items", 1.5),
    (RateLimitConfig, "slow_start_items", False),
    (RateLimitConfig, "slow_start_initial_delay", None),
    (RateLimitConfig, "slow_start_final_delay", "0.1"),
    (RateLimitConfig, "backoff_multiplier", True),
    (RateLimitConfig, "max_rate_limit_retries", 2.0),
    (RateLimitConfig, "max_rate_limit_retries", True),
    (ProcessorConfig, "max_workers", "5"),
    (ProcessorConfig, "max_workers", 2.5),
    (ProcessorConfig, "max_workers", True),
    (ProcessorConfig, "timeout_per_item", "120"),
    (ProcessorConfig, "timeout_per_item", None),
    (ProcessorConfig, "post_processor_timeout", True),
    (ProcessorConfig, "retry", None),
    (ProcessorConfig, "retry", {"max_attempts": 3}),
    (ProcessorConfig, "rate_limit", RetryConfig()),
    (ProcessorConfig, "max_requests_per_minute", "60"),
    (ProcessorConfig, "progress_interval", 1.0),
    (ProcessorConfig, "progress_callback_timeout", "5"),
    (ProcessorConfig, "enable_detailed_logging", "yes"),
    (ProcessorConfig, "max_queue_size", None),
    (ProcessorConfig, "dry_run", "false"),
]


@pytest.mark.parametrize(
    ("cls", "field_name", "value"),
    TYPE_ERRORS,
    ids=[f"{c.__name__}-{name}={value!r}" for c, name, value in TYPE_ERRORS],
)
def test_wrong_type_raises_type_error_naming_field_and_value(
    cls: ConfigClass, field_name: str, value: object
) -> None:
    """A value of the wrong type (bool included for numbers) raises TypeError at construction."""
    kwargs: dict[str, Any] = {field_name: value}
    with pytest.raises(TypeError, match=f"^{field_name} must be ") as exc_info:
        cls(**kwargs)
    message = str(exc_info.value)
    assert repr(value) in message
    assert type(value).__name__ in message
    assert "pass " in message


def test_type_error_is_raised_by_validate_after_mutation() -> None:
    """A wrong type assigned after construction is caught by validate()."""
    cfg = ProcessorConfig()
    cfg.max_workers = "8"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="max_workers must be an int, got '8'"):
        cfg.validate()


# --- validate() re-runs ----------------------------------------------------------------------


class TestRevalidation:
    def test_retry_config_revalidates_after_mutation(self) -> None:
        """validate() re-checks a RetryConfig edited in place and passes again once fixed."""
        cfg = RetryConfig()
        cfg.max_wait = 0.5
        with pytest.raises(
            ValueError, match=r"max_wait must be >= initial_wait, got max_wait=0\.5"
        ):
            cfg.validate()
        cfg.initial_wait = 0.25
        cfg.validate()
        assert cfg.max_wait == 0.5

    def test_rate_limit_config_revalidates_after_mutation(self) -> None:
        """validate() re-checks a RateLimitConfig edited in place, including the new field."""
        cfg = RateLimitConfig()
        cfg.max_rate_limit_retries = -2
        with pytest.raises(ValueError, match="max_rate_limit_retries must be >= 0, got -2"):
            cfg.validate()

    def test_processor_config_revalidates_own_fields(self) -> None:
        """validate() re-checks ProcessorConfig fields edited in place."""
        cfg = ProcessorConfig()
        cfg.timeout_per_item = -1.0
        with pytest.raises(ValueError, match=r"timeout_per_item must be > 0, got -1\.0"):
            cfg.validate()

    def test_processor_config_revalidates_nested_configs(self) -> None:
        """validate() on the processor config re-checks its nested configs."""
        cfg = ProcessorConfig()
        cfg.rate_limit.slow_start_items = -5
        with pytest.raises(ValueError, match="slow_start_items must be >= 0, got -5"):
            cfg.validate()

    def test_validate_is_repeatable_and_does_not_change_values(self) -> None:
        """validate() on a valid config can run repeatedly and leaves every field as it was."""
        cfg = ProcessorConfig(max_workers=3, retry=RetryConfig(max_attempts=2))
        cfg.validate()
        cfg.validate()
        assert cfg == ProcessorConfig(max_workers=3, retry=RetryConfig(max_attempts=2))


# --- soft warnings ---------------------------------------------------------------------------


class TestSoftWarnings:
    @pytest.mark.parametrize(
        "make",
        [
            ProcessorConfig,
            RetryConfig,
            RateLimitConfig,
            lambda: ProcessorConfig(max_workers=4, max_queue_size=4),
            lambda: ProcessorConfig(max_workers=2, max_requests_per_minute=120),
            lambda: ProcessorConfig(timeout_per_item=1.0, retry=RetryConfig(max_attempts=1)),
        ],
        ids=[
            "processor",
            "retry",
            "rate_limit",
            "queue-equals-workers",
            "rpm-equals-workers",
            "one-attempt",
        ],
    )
    def test_valid_configs_log_nothing(self, caplog: pytest.LogCaptureFixture, make: Any) -> None:
        """Default and boundary-valid configs emit no log record at all."""
        with caplog.at_level(logging.DEBUG, logger=CONFIG_LOGGER):
            make()
        assert [r for r in caplog.records if r.name == CONFIG_LOGGER] == []

    def test_queue_smaller_than_workers_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        """A bounded queue smaller than the worker pool logs one WARNING naming both sizes."""
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(max_workers=5, max_queue_size=2)
        [message] = _warnings(caplog)
        assert "max_queue_size=2" in message
        assert "max_workers=5" in message

    def test_timeout_shorter_than_initial_wait_warns(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """timeout_per_item below retry.initial_wait logs one WARNING naming both values."""
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(
                timeout_per_item=0.5, retry=RetryConfig(max_attempts=1, initial_wait=2.0)
            )
        [message] = _warnings(caplog)
        assert "timeout_per_item=0.5" in message
        assert "initial_wait=2.0" in message

    def test_timeout_below_half_total_backoff_warns_with_jitter_range(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A timeout under half the summed backoff warns, giving the total and the jitter range."""
        # Waits 1, 2, 4, 5, 5 (capped at max_wait) sum to 17 s; half is 8.5 s.
        retry = RetryConfig(max_attempts=6, initial_wait=1.0, max_wait=5.0, jitter=True)
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(timeout_per_item=8.0, retry=retry)
        [message] = _warnings(caplog)
        assert "17.0s" in message
        assert "5 retries" in message
        assert "8.5-17.0s" in message

    def test_backoff_warning_without_jitter_omits_range(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without jitter the backoff warning gives the total but no jitter range."""
        retry = RetryConfig(max_attempts=6, initial_wait=1.0, max_wait=5.0, jitter=False)
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(timeout_per_item=8.0, retry=retry)
        [message] = _warnings(caplog)
        assert "17.0s" in message
        assert "jitter" not in message

    def test_timeout_equal_to_half_backoff_does_not_warn(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The backoff warning needs a timeout strictly below half the total backoff."""
        retry = RetryConfig(max_attempts=6, initial_wait=1.0, max_wait=5.0)
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(timeout_per_item=8.5, retry=retry)
        assert _warnings(caplog) == []

    def test_low_request_budget_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        """A request budget below one request per second per worker logs one WARNING."""
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(max_workers=5, max_requests_per_minute=60)
        [message] = _warnings(caplog)
        assert "max_requests_per_minute=60" in message
        assert "max_workers=5" in message

    def test_every_soft_check_can_fire_at_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """Soft checks are independent: one config can trigger all four warnings."""
        retry = RetryConfig(max_attempts=4, initial_wait=2.0, max_wait=10.0)
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(
                max_workers=4,
                max_queue_size=1,
                timeout_per_item=1.0,
                retry=retry,
                max_requests_per_minute=30,
            )
        assert len(_warnings(caplog)) == 4

    def test_validate_logs_again_on_each_call(self, caplog: pytest.LogCaptureFixture) -> None:
        """Soft checks run on every validate() call, also after a mutation introduces them."""
        cfg = ProcessorConfig(max_workers=4)
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            cfg.max_queue_size = 2
            cfg.validate()
        [message] = _warnings(caplog)
        assert "max_queue_size=2" in message

    async def test_each_warning_is_logged_once_per_config(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The config is checked again by the processor and when the batch starts (it may
        have been edited); a warning already given is not repeated, a new one is."""
        from async_batch_llm import ParallelBatchProcessor

        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            config = ProcessorConfig(max_workers=5, max_queue_size=2)
            assert len(_warnings(caplog)) == 1
            caplog.clear()
            config.validate()
            async with ParallelBatchProcessor[str, str, None](config=config) as processor:
                config.max_requests_per_minute = 60  # edited after construction
                await processor.process_all()
        messages = _warnings(caplog)
        assert len(messages) == 1
        assert "max_requests_per_minute=60" in messages[0]
        # A config of its own warns again, even with the same values.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
            ProcessorConfig(max_workers=5, max_queue_size=2)
        assert len(_warnings(caplog)) == 1

    def test_soft_checks_never_raise(self) -> None:
        """A config that triggers soft warnings is still constructed normally."""
        cfg = ProcessorConfig(max_workers=10, max_queue_size=1, max_requests_per_minute=1)
        assert cfg.max_queue_size == 1


@pytest.mark.parametrize(
    ("initial", "cap", "base", "retries"),
    [
        (1.0, 60.0, 2.0, 0),
        (1.0, 60.0, 2.0, 2),
        (1.0, 60.0, 2.0, 10),
        (1.0, 8.0, 2.0, 6),
        (0.1, 1.0, 3.0, 5),
        (2.0, 2.0, 2.0, 4),
        (1.0, 60.0, 1.0, 7),
        (1.5, 1000.0, 1.0001, 40),
        (1.0, math.inf, 1.5, 30),
        (3, 7, 2, 5),
    ],
)
def test_total_backoff_matches_the_documented_sum(
    initial: float, cap: float, base: float, retries: int
) -> None:
    """The closed-form backoff total equals sum(min(initial * base**i, cap)) over the retries."""
    expected = sum(min(initial * base**i, cap) for i in range(retries))
    assert _total_backoff(initial, cap, base, retries) == pytest.approx(expected)


class TestBatchSettings:
    """The batch-mode fields are checked like the others, with messages naming the field."""

    def test_defaults(self) -> None:
        cfg = ProcessorConfig()
        assert cfg.mode == "online"
        assert cfg.batch_deadline is None
        assert cfg.batch_poll_interval == 30.0
        assert cfg.batch_max_poll_interval == 600.0
        assert cfg.batch_max_requests is None
        assert cfg.batch_on_cancel == "auto"

    @pytest.mark.parametrize(
        ("field_name", "value", "message"),
        [
            ("mode", "offline", "mode must be one of 'online', 'batch', 'auto'"),
            ("batch_on_cancel", "never", "batch_on_cancel must be one of"),
            ("batch_deadline", 0, "batch_deadline must be > 0 or None"),
            ("batch_poll_interval", -1.0, "batch_poll_interval must be > 0"),
            ("batch_max_poll_interval", 0, "batch_max_poll_interval must be > 0"),
            ("batch_max_requests", 0, "batch_max_requests must be a whole number >= 1"),
            ("batch_max_requests", 2.5, "batch_max_requests must be a whole number >= 1"),
        ],
    )
    def test_bad_values_are_refused(self, field_name: str, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ProcessorConfig(**{field_name: value})  # type: ignore[arg-type]

    def test_wrong_types_are_refused(self) -> None:
        with pytest.raises(TypeError, match="batch_deadline must be an int, a float or None"):
            ProcessorConfig(batch_deadline="1h")  # type: ignore[arg-type]
