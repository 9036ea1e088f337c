"""Configuration of a batch run: retries, rate-limit handling and the processor itself.

Each config validates itself on construction and again whenever :meth:`validate` is called
(the processor calls it), so a config edited in place is re-checked before it is used.
Invalid values raise ``TypeError`` (wrong type) or ``ValueError`` (out of range) naming the
field, the value and the fix. Combinations that are legal but probably unintended are
reported as a WARNING on this module's logger.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field

__all__ = ["ProcessorConfig", "RateLimitConfig", "RetryConfig"]

logger = logging.getLogger(__name__)


def _check_int(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is an integer (``bool`` excluded)."""
    # bool is an int subclass, but ``max_workers=True`` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = (
            f"{name} must be an int, got {value!r} ({type(value).__name__}); "
            f"pass a whole number, e.g. {name}=5"
        )
        raise TypeError(msg)


def _check_number(name: str, value: object, *, allow_none: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number (or ``None`` when allowed)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        accepted = "an int, a float or None" if allow_none else "an int or a float"
        msg = f"{name} must be {accepted}, got {value!r} ({type(value).__name__}); pass a number"
        if allow_none:
            msg += " or None"
        raise TypeError(msg)


def _check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is ``True`` or ``False``."""
    # A truthy string such as "false" would silently switch the option on.
    if not isinstance(value, bool):
        msg = f"{name} must be a bool, got {value!r} ({type(value).__name__}); pass True or False"
        raise TypeError(msg)


def _check_instance(name: str, value: object, cls: type, example: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``cls``."""
    if not isinstance(value, cls):
        msg = (
            f"{name} must be a {cls.__name__}, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}={example}"
        )
        raise TypeError(msg)


def _total_backoff(
    initial_wait: float, max_wait: float, exponential_base: float, retries: int
) -> float:
    """Return ``sum(min(initial_wait * exponential_base**i, max_wait) for i in range(retries))``.

    Computed in closed form so a huge ``max_attempts`` neither loops for long nor overflows
    (``2.0 ** 2000`` raises ``OverflowError``); the result may be ``inf``.
    """
    if retries < 1:
        return 0.0
    initial, cap, base = float(initial_wait), float(max_wait), float(exponential_base)
    if initial >= cap or base == 1.0:
        return min(initial, cap) * retries
    # From here on initial < cap and base > 1: the waits grow geometrically up to the cap.
    if math.isinf(base):
        return initial + cap * (retries - 1) if retries > 1 else initial
    if math.isinf(cap):
        uncapped = retries
    else:
        # Waits with index i < log_base(cap / initial) are still below the cap.
        uncapped = min(retries, max(1, math.ceil(math.log(cap / initial) / math.log(base))))
    try:
        total = initial * (base**uncapped - 1.0) / (base - 1.0)
    except OverflowError:
        return math.inf
    if uncapped < retries:
        total += cap * (retries - uncapped)
    return total


@dataclass
class RetryConfig:
    """How often a failed item is retried and how long to wait between attempts.

    The wait before retry ``n`` (1-based) is ``min(initial_wait * exponential_base ** (n - 1),
    max_wait)``, scaled to 50-100% at random when ``jitter`` is on. Validation-type errors
    are retried without waiting.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range (see :meth:`validate`).
    """

    #: Calls per item, the first one included (``1`` means no retries). Calls that failed
    #: with a rate limit do not count; ``RateLimitConfig.max_rate_limit_retries`` bounds them.
    max_attempts: int = 3
    #: Seconds to wait before the first retry; must be positive.
    initial_wait: float = 1.0
    #: Upper bound in seconds for any single wait; at least ``initial_wait``.
    max_wait: float = 60.0
    #: Factor by which the wait grows per retry (``1`` keeps it constant).
    exponential_base: float = 2.0
    #: Randomise each wait to 50-100% of its value, so retries of many items spread out.
    jitter: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``TypeError``/``ValueError`` on the first bad one.

        Range checks run in this order: ``max_attempts``, ``initial_wait``, ``max_wait``,
        ``exponential_base``.
        """
        # Range checks on floats are written as ``not (x >= bound)`` so that NaN, which
        # fails every comparison, is rejected as well.
        _check_int("max_attempts", self.max_attempts)
        if self.max_attempts < 1:
            msg = f"max_attempts must be >= 1, got {self.max_attempts!r}; use 1 to disable retries"
            raise ValueError(msg)
        _check_number("initial_wait", self.initial_wait)
        if not self.initial_wait > 0:
            msg = (
                f"initial_wait must be > 0, got {self.initial_wait!r}; "
                "pass the seconds to wait before the first retry, e.g. 1.0"
            )
            raise ValueError(msg)
        _check_number("max_wait", self.max_wait)
        if not self.max_wait >= self.initial_wait:
            msg = (
                f"max_wait must be >= initial_wait, got max_wait={self.max_wait!r} and "
                f"initial_wait={self.initial_wait!r}; raise max_wait or lower initial_wait"
            )
            raise ValueError(msg)
        _check_number("exponential_base", self.exponential_base)
        if not self.exponential_base >= 1:
            msg = (
                f"exponential_base must be >= 1, got {self.exponential_base!r}; "
                "use 1 for a constant wait or e.g. 2 to double it per retry"
            )
            raise ValueError(msg)
        _check_bool("jitter", self.jitter)


@dataclass
class RateLimitConfig:
    """How the processor pauses and ramps back up after a provider rate limit (HTTP 429).

    The first rate limit pauses all workers for ``cooldown_seconds``; each further one
    before a success multiplies the pause by ``backoff_multiplier``. After a pause, the
    next ``slow_start_items`` items are delayed, from ``slow_start_initial_delay`` down to
    ``slow_start_final_delay`` seconds. Rate-limited attempts do not use up
    ``RetryConfig.max_attempts``: an item is retried after each of up to
    ``max_rate_limit_retries`` rate limits, and the next one fails it with the rate-limit
    error.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range (see :meth:`validate`).
    """

    #: Seconds all workers pause after the first rate limit (``0`` resumes at once).
    cooldown_seconds: float = 300.0
    #: Items delayed after a pause while throughput ramps back up (``0`` disables the ramp).
    slow_start_items: int = 50
    #: Delay in seconds before the first item after a pause.
    slow_start_initial_delay: float = 2.0
    #: Delay in seconds the ramp ends at; at most ``slow_start_initial_delay``.
    slow_start_final_delay: float = 0.1
    #: Factor by which the pause grows for each consecutive rate limit (``1.0`` = constant).
    backoff_multiplier: float = 1.5
    #: Retries one item gets after rate limits; ``0`` fails it on its first rate limit.
    max_rate_limit_retries: int = 10

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``TypeError``/``ValueError`` on the first bad one.

        Range checks run in this order: ``cooldown_seconds``, ``slow_start_items``,
        ``slow_start_initial_delay`` vs ``slow_start_final_delay``, ``backoff_multiplier``,
        ``max_rate_limit_retries``.
        """
        # ``not (x >= bound)`` also rejects NaN.
        _check_number("cooldown_seconds", self.cooldown_seconds)
        if not self.cooldown_seconds >= 0:
            msg = (
                f"cooldown_seconds must be >= 0, got {self.cooldown_seconds!r}; "
                "pass the seconds to pause after a rate limit (0 resumes at once)"
            )
            raise ValueError(msg)
        _check_int("slow_start_items", self.slow_start_items)
        if self.slow_start_items < 0:
            msg = (
                f"slow_start_items must be >= 0, got {self.slow_start_items!r}; "
                "use 0 to disable the slow-start ramp"
            )
            raise ValueError(msg)
        _check_number("slow_start_initial_delay", self.slow_start_initial_delay)
        _check_number("slow_start_final_delay", self.slow_start_final_delay)
        if not self.slow_start_initial_delay >= self.slow_start_final_delay:
            msg = (
                "slow_start_initial_delay must be >= slow_start_final_delay, got "
                f"slow_start_initial_delay={self.slow_start_initial_delay!r} and "
                f"slow_start_final_delay={self.slow_start_final_delay!r}; the ramp starts at "
                "the initial delay and shrinks to the final one, so swap or adjust them"
            )
            raise ValueError(msg)
        _check_number("backoff_multiplier", self.backoff_multiplier)
        if not self.backoff_multiplier >= 1.0:
            msg = (
                f"backoff_multiplier must be >= 1.0, got {self.backoff_multiplier!r}; "
                "use 1.0 for equal pauses or e.g. 2.0 to double each consecutive pause"
            )
            raise ValueError(msg)
        _check_int("max_rate_limit_retries", self.max_rate_limit_retries)
        if self.max_rate_limit_retries < 0:
            msg = (
                f"max_rate_limit_retries must be >= 0, got {self.max_rate_limit_retries!r}; "
                "use 0 to fail an item on its first rate limit"
            )
            raise ValueError(msg)


@dataclass
class ProcessorConfig:
    """Settings of a :class:`~async_batch_llm.ParallelBatchProcessor` run.

    Fields can be passed positionally in the order below. :meth:`validate` raises on
    invalid values and logs a WARNING for legal but suspicious combinations.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field, or a field of ``retry``/``rate_limit``, is out of range.
    """

    #: Number of worker tasks, i.e. items processed concurrently.
    max_workers: int = 5
    #: Seconds allowed for each attempt (not for the item as a whole).
    timeout_per_item: float = 120.0
    #: Seconds allowed for the post-processor of one result.
    post_processor_timeout: float = 90.0
    #: Retry policy for failed attempts.
    retry: RetryConfig = field(default_factory=RetryConfig)
    #: Pause and ramp-up policy after rate limits.
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    #: Proactive request budget per minute across all workers; ``None`` disables it.
    max_requests_per_minute: float | None = None
    #: Items between two progress callbacks / progress log lines.
    progress_interval: int = 10
    #: Seconds allowed for the progress callback; ``None`` means no limit.
    progress_callback_timeout: float | None = 5.0
    #: Accepted for compatibility; has no effect (configure logging levels instead).
    enable_detailed_logging: bool = False
    #: Capacity of the work queue; ``0`` means unbounded.
    max_queue_size: int = 0
    #: Call each strategy's ``dry_run()`` instead of ``execute()`` (no model calls).
    dry_run: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field, then ``retry`` and ``rate_limit``; raise on the first bad one.

        Range checks run in this order: ``max_workers``, ``timeout_per_item``,
        ``post_processor_timeout``, ``progress_interval``, ``progress_callback_timeout``,
        ``max_queue_size``, ``max_requests_per_minute``, then ``retry.validate()`` and
        ``rate_limit.validate()``. Finally logs a WARNING (never raises) when the queue is
        smaller than the worker pool, when an attempt's timeout is shorter than the first
        retry wait or than half of the total retry backoff, or when the request budget is
        below one request per second per worker.
        """
        # ``not (x > 0)`` also rejects NaN.
        _check_int("max_workers", self.max_workers)
        if self.max_workers < 1:
            msg = f"max_workers must be >= 1, got {self.max_workers!r}; use at least 1 worker"
            raise ValueError(msg)
        _check_number("timeout_per_item", self.timeout_per_item)
        if not self.timeout_per_item > 0:
            msg = (
                f"timeout_per_item must be > 0, got {self.timeout_per_item!r}; "
                "pass the seconds each attempt may take, e.g. 120.0"
            )
            raise ValueError(msg)
        _check_number("post_processor_timeout", self.post_processor_timeout)
        if not self.post_processor_timeout > 0:
            msg = (
                f"post_processor_timeout must be > 0, got {self.post_processor_timeout!r}; "
                "pass the seconds the post-processor may take, e.g. 90.0"
            )
            raise ValueError(msg)
        _check_int("progress_interval", self.progress_interval)
        if self.progress_interval < 1:
            msg = (
                f"progress_interval must be >= 1, got {self.progress_interval!r}; "
                "pass how many items to process between progress reports"
            )
            raise ValueError(msg)
        _check_number("progress_callback_timeout", self.progress_callback_timeout, allow_none=True)
        if self.progress_callback_timeout is not None and not self.progress_callback_timeout > 0:
            msg = (
                f"progress_callback_timeout must be > 0, got {self.progress_callback_timeout!r}; "
                "pass a positive number of seconds, or None for no limit"
            )
            raise ValueError(msg)
        _check_int("max_queue_size", self.max_queue_size)
        if self.max_queue_size < 0:
            msg = (
                f"max_queue_size must be >= 0, got {self.max_queue_size!r}; "
                "use 0 for an unbounded queue"
            )
            raise ValueError(msg)
        _check_number("max_requests_per_minute", self.max_requests_per_minute, allow_none=True)
        if self.max_requests_per_minute is not None and not self.max_requests_per_minute > 0:
            msg = (
                f"max_requests_per_minute must be > 0 or None, got "
                f"{self.max_requests_per_minute!r}; pass None to disable the proactive limiter"
            )
            raise ValueError(msg)
        _check_instance("retry", self.retry, RetryConfig, "RetryConfig(max_attempts=3)")
        self.retry.validate()
        _check_instance(
            "rate_limit", self.rate_limit, RateLimitConfig, "RateLimitConfig(cooldown_seconds=60)"
        )
        self.rate_limit.validate()
        _check_bool("enable_detailed_logging", self.enable_detailed_logging)
        _check_bool("dry_run", self.dry_run)
        self._warn_about_suspicious_values()

    def _warn_about_suspicious_values(self) -> None:
        """Log a WARNING for each legal combination that is probably a mistake."""
        if 0 < self.max_queue_size < self.max_workers:
            logger.warning(
                "max_queue_size=%s is smaller than max_workers=%s, so some workers may sit "
                "idle waiting for items; use max_queue_size >= max_workers or 0 (unbounded)",
                self.max_queue_size,
                self.max_workers,
            )
        retry = self.retry
        if self.timeout_per_item < retry.initial_wait:
            logger.warning(
                "timeout_per_item=%ss is shorter than retry.initial_wait=%ss; an attempt gets "
                "less time than the wait before its retry, check that this is intended",
                self.timeout_per_item,
                retry.initial_wait,
            )
        retries = retry.max_attempts - 1
        backoff = _total_backoff(
            retry.initial_wait, retry.max_wait, retry.exponential_base, retries
        )
        if backoff > 0 and self.timeout_per_item < 0.5 * backoff:
            jitter_note = (
                f" (with jitter the waits add up to {0.5 * backoff:.1f}-{backoff:.1f}s)"
                if retry.jitter
                else ""
            )
            logger.warning(
                "timeout_per_item=%ss is less than half of the total retry backoff of %.1fs "
                "over %d retries%s; raise timeout_per_item or lower retry.max_wait if "
                "attempts should get more time than the waits between them",
                self.timeout_per_item,
                backoff,
                retries,
                jitter_note,
            )
        rpm = self.max_requests_per_minute
        if rpm is not None and rpm / 60 < self.max_workers:
            logger.warning(
                "max_requests_per_minute=%s allows %.2f requests/s, fewer than max_workers=%s; "
                "workers will mostly wait on the limiter, so lower max_workers or raise "
                "max_requests_per_minute",
                rpm,
                rpm / 60,
                self.max_workers,
            )
