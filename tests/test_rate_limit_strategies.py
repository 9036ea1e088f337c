"""Cooldown and slow-start policies: ExponentialBackoffStrategy and FixedDelayStrategy."""

from __future__ import annotations

import logging
import math

import pytest

from async_batch_llm.strategies.rate_limit import (
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    RateLimitStrategy,
)


class TestRateLimitStrategyInterface:
    def test_is_abstract(self) -> None:
        """RateLimitStrategy needs both methods before it can be instantiated."""
        with pytest.raises(TypeError, match="abstract"):
            RateLimitStrategy()  # type: ignore[abstract]

    async def test_custom_subclass(self) -> None:
        """A subclass implementing both methods is usable as a strategy."""

        class Doubling(RateLimitStrategy):
            async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
                return 2.0 * consecutive_limit_count

            def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
                return (False, 0.0)

        strategy = Doubling()
        assert await strategy.on_rate_limit(0, 3) == 6.0
        assert strategy.should_apply_slow_start(0) == (False, 0.0)


class TestExponentialCooldown:
    async def test_defaults_double_until_the_cap(self) -> None:
        """With the defaults the cooldowns are 60, 120, 240, 480, then capped at 600."""
        strategy = ExponentialBackoffStrategy()
        cooldowns = [await strategy.on_rate_limit(0, count) for count in range(1, 8)]
        assert cooldowns == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0]

    @pytest.mark.parametrize(
        ("initial", "maximum", "multiplier"),
        [(60.0, 600.0, 1.5), (5.0, 1e9, 3.0), (0.1, 1e6, 1.1), (10.0, 10.0, 2.0)],
    )
    async def test_matches_the_formula(
        self, initial: float, maximum: float, multiplier: float
    ) -> None:
        """Every cooldown equals min(initial * multiplier ** (n - 1), max) exactly."""
        strategy = ExponentialBackoffStrategy(
            initial_cooldown=initial, max_cooldown=maximum, backoff_multiplier=multiplier
        )
        for count in range(1, 40):
            expected = min(initial * multiplier ** (count - 1), maximum)
            assert await strategy.on_rate_limit(0, count) == expected

    async def test_multiplier_one_is_constant(self) -> None:
        """A multiplier of 1.0 gives the initial cooldown every time."""
        strategy = ExponentialBackoffStrategy(initial_cooldown=30.0, backoff_multiplier=1.0)
        assert [await strategy.on_rate_limit(0, n) for n in (1, 2, 10)] == [30.0, 30.0, 30.0]

    async def test_initial_above_max_is_capped(self) -> None:
        """An initial cooldown above max_cooldown (as built from a 1000 s config) is capped."""
        strategy = ExponentialBackoffStrategy(initial_cooldown=1000.0, backoff_multiplier=1.5)
        assert await strategy.on_rate_limit(0, 1) == 600.0

    async def test_zero_cooldown(self) -> None:
        """An initial cooldown of 0 never pauses."""
        strategy = ExponentialBackoffStrategy(initial_cooldown=0.0)
        assert [await strategy.on_rate_limit(0, n) for n in (1, 5)] == [0.0, 0.0]

    async def test_huge_count_does_not_overflow(self) -> None:
        """A very long run of rate limits stays at the cap instead of overflowing."""
        strategy = ExponentialBackoffStrategy()
        assert await strategy.on_rate_limit(0, 100_000) == 600.0

    async def test_attribute_changes_take_effect(self) -> None:
        """Public attributes changed after construction are used by the next cooldown."""
        strategy = ExponentialBackoffStrategy()
        strategy.initial_cooldown = 1.0
        strategy.max_cooldown = 3.0
        assert [await strategy.on_rate_limit(0, n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]

    async def test_logs_the_cooldown_at_info(self, caplog: pytest.LogCaptureFixture) -> None:
        """The chosen cooldown is logged at INFO with the worker and the count."""
        strategy = ExponentialBackoffStrategy()
        with caplog.at_level(logging.INFO, logger="async_batch_llm.strategies.rate_limit"):
            await strategy.on_rate_limit(7, 2)
        [record] = caplog.records
        assert record.levelno == logging.INFO
        assert "120.0" in record.getMessage()
        assert "worker 7" in record.getMessage()


class TestExponentialSlowStart:
    def test_documented_ramp_values(self) -> None:
        """The default ramp gives 2.0 at 0, 1.05 at 25 and about 0.29 at 45 of 50."""
        strategy = ExponentialBackoffStrategy()
        assert strategy.should_apply_slow_start(0) == (True, 2.0)
        assert strategy.should_apply_slow_start(25) == (True, 1.05)
        should_delay, delay = strategy.should_apply_slow_start(45)
        assert should_delay
        assert delay == pytest.approx(0.29)

    def test_ramp_is_non_increasing_and_bounded(self) -> None:
        """Delays never grow along the ramp and never leave [final, initial]."""
        strategy = ExponentialBackoffStrategy()
        delays = [strategy.should_apply_slow_start(n)[1] for n in range(50)]
        assert delays == sorted(delays, reverse=True)
        assert all(0.1 <= delay <= 2.0 for delay in delays)

    @pytest.mark.parametrize("items_since_resume", [50, 51, 1000])
    def test_ends_after_slow_start_items(self, items_since_resume: int) -> None:
        """Once slow_start_items items have passed, no delay applies."""
        strategy = ExponentialBackoffStrategy()
        assert strategy.should_apply_slow_start(items_since_resume) == (False, 0.0)

    def test_zero_items_never_delays(self) -> None:
        """slow_start_items=0 disables slow start from the first item."""
        strategy = ExponentialBackoffStrategy(slow_start_items=0)
        assert strategy.should_apply_slow_start(0) == (False, 0.0)

    def test_equal_delays_give_a_flat_ramp(self) -> None:
        """Equal initial and final delays are valid and give a constant delay."""
        strategy = ExponentialBackoffStrategy(
            slow_start_items=4, slow_start_initial_delay=0.5, slow_start_final_delay=0.5
        )
        assert [strategy.should_apply_slow_start(n) for n in range(5)] == [
            (True, 0.5),
            (True, 0.5),
            (True, 0.5),
            (True, 0.5),
            (False, 0.0),
        ]


class TestExponentialConstruction:
    def test_defaults(self) -> None:
        """Defaults are stored under attributes of the same names."""
        strategy = ExponentialBackoffStrategy()
        assert strategy.initial_cooldown == 60.0
        assert strategy.max_cooldown == 600.0
        assert strategy.backoff_multiplier == 2.0
        assert strategy.slow_start_items == 50
        assert strategy.slow_start_initial_delay == 2.0
        assert strategy.slow_start_final_delay == 0.1

    def test_values_a_processor_builds_from_its_config_are_valid(self) -> None:
        """Any valid RateLimitConfig maps to a valid strategy (0 cooldown, 0 items, 1.0)."""
        strategy = ExponentialBackoffStrategy(
            initial_cooldown=0.0,
            backoff_multiplier=1.0,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        )
        assert strategy.backoff_multiplier == 1.0

    def test_infinite_max_cooldown_means_no_cap(self) -> None:
        """max_cooldown may be infinite."""
        assert ExponentialBackoffStrategy(max_cooldown=math.inf).max_cooldown == math.inf

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"initial_cooldown": -1.0}, r"initial_cooldown must be >= 0, got -1\.0"),
            ({"initial_cooldown": math.nan}, r"initial_cooldown must be >= 0, got nan"),
            ({"max_cooldown": -0.5}, r"max_cooldown must be >= 0, got -0\.5"),
            ({"backoff_multiplier": 0.5}, r"backoff_multiplier must be >= 1\.0, got 0\.5"),
            ({"backoff_multiplier": math.nan}, r"backoff_multiplier must be >= 1\.0"),
            ({"slow_start_items": -1}, r"slow_start_items must be >= 0, got -1"),
            (
                {"slow_start_initial_delay": -2.0, "slow_start_final_delay": -3.0},
                r"slow_start_initial_delay must be >= 0, got -2\.0",
            ),
            ({"slow_start_final_delay": -0.1}, r"slow_start_final_delay must be >= 0"),
            (
                {"slow_start_initial_delay": 0.1, "slow_start_final_delay": 2.0},
                r"slow_start_initial_delay must be >= slow_start_final_delay, got 0\.1 < 2\.0",
            ),
        ],
    )
    def test_rejects_bad_arguments(self, kwargs: dict[str, float], message: str) -> None:
        """Out-of-range arguments raise ValueError naming the argument and the value."""
        with pytest.raises(ValueError, match=message):
            ExponentialBackoffStrategy(**kwargs)  # type: ignore[arg-type]


class TestFixedDelay:
    def test_defaults_and_attribute_names(self) -> None:
        """delay_between_requests is stored as ``delay``; defaults are 300 s and 1 s."""
        strategy = FixedDelayStrategy()
        assert strategy.cooldown == 300.0
        assert strategy.delay == 1.0

    async def test_cooldown_ignores_the_count(self) -> None:
        """Every rate limit gets the same cooldown."""
        strategy = FixedDelayStrategy(cooldown=12.0)
        assert [await strategy.on_rate_limit(1, n) for n in (1, 2, 50)] == [12.0, 12.0, 12.0]

    @pytest.mark.parametrize("items_since_resume", [0, 1, 50, 10_000])
    def test_slow_start_never_ends(self, items_since_resume: int) -> None:
        """Every item after the first cooldown waits the fixed delay."""
        strategy = FixedDelayStrategy(delay_between_requests=0.25)
        assert strategy.should_apply_slow_start(items_since_resume) == (True, 0.25)

    def test_zero_values_are_valid(self) -> None:
        """A zero cooldown and a zero delay are accepted."""
        strategy = FixedDelayStrategy(cooldown=0.0, delay_between_requests=0.0)
        assert (strategy.cooldown, strategy.delay) == (0.0, 0.0)

    async def test_logs_the_cooldown_at_info(self, caplog: pytest.LogCaptureFixture) -> None:
        """The cooldown is logged at INFO."""
        strategy = FixedDelayStrategy(cooldown=5.0)
        with caplog.at_level(logging.INFO, logger="async_batch_llm.strategies.rate_limit"):
            await strategy.on_rate_limit(3, 1)
        assert [record.levelno for record in caplog.records] == [logging.INFO]
        assert "5.0" in caplog.records[0].getMessage()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"cooldown": -1.0}, r"cooldown must be >= 0, got -1\.0"),
            ({"delay_between_requests": -0.5}, r"delay_between_requests must be >= 0, got -0\.5"),
        ],
    )
    def test_rejects_negative_arguments(self, kwargs: dict[str, float], message: str) -> None:
        """Negative arguments raise ValueError naming the argument and the value."""
        with pytest.raises(ValueError, match=message):
            FixedDelayStrategy(**kwargs)
