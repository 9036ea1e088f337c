"""Configuration of a batch run: retries, rate-limit handling and the processor itself.

Each config validates itself on construction and again whenever `validate()` is called:
the processor calls it when it is built and again when a batch starts, so a config edited in
place is re-checked before it is used. Invalid values raise `TypeError` (wrong type) or
`ValueError` (out of range) naming the field, the value and the fix. Combinations that are
legal but probably unintended are reported as a WARNING on this module's logger.

Every check is one row of a rule table (`_Rule`): the field, its type, the condition, and
the sentence that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["ProcessorConfig", "RateLimitConfig", "RetryConfig"]

logger = logging.getLogger(__name__)

_Kind = Literal["int", "number", "optional number", "bool"]


@dataclass(frozen=True, slots=True)
class _Rule:
    """One check of one field.

    ``accepts(config)`` is evaluated after the type check of ``field``; when it fails the
    ``ValueError`` reads ``"<requirement>, got <got(config)>; <fix>"``. A rule without
    ``accepts`` only checks the type.
    """

    field: str
    kind: _Kind
    requirement: str = ""
    accepts: Callable[[Any], bool] | None = None
    fix: str = ""
    got: Callable[[Any], str] | None = None


def _positive(name: str) -> Callable[[Any], bool]:
    # ``not (x > 0)`` style: NaN fails every comparison, so it is rejected too.
    return lambda config: getattr(config, name) > 0


def _at_least(name: str, bound: float) -> Callable[[Any], bool]:
    return lambda config: getattr(config, name) >= bound


def _positive_or_none(name: str) -> Callable[[Any], bool]:
    return lambda config: getattr(config, name) is None or getattr(config, name) > 0


def _check_type(name: str, kind: _Kind, value: object) -> None:
    # bool is an int subclass, but ``max_workers=True`` is always a mistake.
    is_bool = isinstance(value, bool)
    if kind == "int":
        if is_bool or not isinstance(value, numbers.Integral):
            msg = (
                f"{name} must be an int, got {value!r} ({type(value).__name__}); "
                f"pass a whole number, e.g. {name}=5"
            )
            raise TypeError(msg)
    elif kind in ("number", "optional number"):
        if kind == "optional number" and value is None:
            return
        if is_bool or not isinstance(value, numbers.Real):
            accepted = (
                "an int, a float or None" if kind == "optional number" else "an int or a float"
            )
            msg = (
                f"{name} must be {accepted}, got {value!r} ({type(value).__name__}); pass a number"
            )
            if kind == "optional number":
                msg += " or None"
            raise TypeError(msg)
    elif not is_bool:
        # A truthy string such as "false" would silently switch the option on.
        msg = f"{name} must be a bool, got {value!r} ({type(value).__name__}); pass True or False"
        raise TypeError(msg)


def _apply(config: object, rules: Sequence[_Rule]) -> None:
    for rule in rules:
        _check_type(rule.field, rule.kind, getattr(config, rule.field))
        if rule.accepts is not None and not rule.accepts(config):
            got = rule.got(config) if rule.got is not None else repr(getattr(config, rule.field))
            msg = f"{rule.requirement}, got {got}; {rule.fix}"
            raise ValueError(msg)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        msg = f"{name} must be one of {listed}, got {value!r}"
        raise ValueError(msg)


def _check_instance(name: str, value: object, cls: type, example: str) -> None:
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

    The wait before retry ``n`` (1-based) is
    ``min(initial_wait * exponential_base ** (n - 1), max_wait)``, scaled to 50-100% at
    random when `jitter` is on. Errors that look like a malformed answer (validation
    errors) are retried without waiting.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range.
    """

    max_attempts: int = 3
    """Calls per item, the first one included (``1`` means no retries). Calls that were
    rate limited do not count; `RateLimitConfig.max_rate_limit_retries` bounds those."""
    initial_wait: float = 1.0
    """Seconds to wait before the first retry; must be positive."""
    max_wait: float = 60.0
    """Upper bound in seconds for any single wait; at least `initial_wait`."""
    exponential_base: float = 2.0
    """Factor by which the wait grows per retry (``1`` keeps it constant)."""
    jitter: bool = True
    """Randomise each wait to 50-100% of its value, so retries of many items spread out."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise `TypeError`/`ValueError` on the first bad one.

        Range checks run in this order: `max_attempts`, `initial_wait`, `max_wait`,
        `exponential_base`.
        """
        _apply(self, _RETRY_RULES)


_RETRY_RULES: Final = (
    _Rule(
        "max_attempts",
        "int",
        "max_attempts must be >= 1",
        _at_least("max_attempts", 1),
        "use 1 to disable retries",
    ),
    _Rule(
        "initial_wait",
        "number",
        "initial_wait must be > 0",
        _positive("initial_wait"),
        "pass the seconds to wait before the first retry, e.g. 1.0",
    ),
    _Rule(
        "max_wait",
        "number",
        "max_wait must be >= initial_wait",
        lambda c: c.max_wait >= c.initial_wait,
        "raise max_wait or lower initial_wait",
        lambda c: f"max_wait={c.max_wait!r} and initial_wait={c.initial_wait!r}",
    ),
    _Rule(
        "exponential_base",
        "number",
        "exponential_base must be >= 1",
        _at_least("exponential_base", 1),
        "use 1 for a constant wait or e.g. 2 to double it per retry",
    ),
    _Rule("jitter", "bool"),
)


@dataclass
class RateLimitConfig:
    """The shared cooldown after a provider rate limit (HTTP 429), as in 0.7.2.

    The first rate limit pauses all workers for `cooldown_seconds`; each further one
    before a success multiplies the pause by `backoff_multiplier`. After a pause, the next
    `slow_start_items` calls are delayed, from `slow_start_initial_delay` down to
    `slow_start_final_delay` seconds. Rate-limited attempts do not use up
    `RetryConfig.max_attempts`.

    Leaving every field but `max_rate_limit_retries` at its default (and passing no
    `rate_limit_strategy`) selects the adaptive per-provider rate control instead (see
    `async_batch_llm.rate_control`); changing any of them selects this cooldown.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range.
    """

    cooldown_seconds: float = 300.0
    """Seconds all workers pause after the first rate limit (``0`` resumes at once)."""
    slow_start_items: int = 50
    """Calls delayed after a pause while throughput ramps back up (``0`` disables the ramp)."""
    slow_start_initial_delay: float = 2.0
    """Delay in seconds before the first call after a pause."""
    slow_start_final_delay: float = 0.1
    """Delay in seconds the ramp ends at; at most `slow_start_initial_delay`."""
    backoff_multiplier: float = 1.5
    """Factor by which the pause grows for each consecutive rate limit (``1.0`` = constant)."""
    max_rate_limit_retries: int = 10
    """Pauses in a row during which the provider let no call of the scope through, after
    which a rate-limited item fails (``0`` fails it on its first rate limit). An item that
    loses races while other calls succeed keeps retrying."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise `TypeError`/`ValueError` on the first bad one.

        Range checks run in this order: `cooldown_seconds`, `slow_start_items`,
        `slow_start_initial_delay` vs `slow_start_final_delay`, `backoff_multiplier`,
        `max_rate_limit_retries`.
        """
        _apply(self, _RATE_LIMIT_RULES)

    def configures_cooldown(self) -> bool:
        """Whether a cooldown field differs from its default (`max_rate_limit_retries` aside)."""
        defaults = RateLimitConfig()
        return any(
            getattr(self, f.name) != getattr(defaults, f.name)
            for f in dataclasses.fields(self)
            if f.name != "max_rate_limit_retries"
        )


_RATE_LIMIT_RULES: Final = (
    _Rule(
        "cooldown_seconds",
        "number",
        "cooldown_seconds must be >= 0",
        _at_least("cooldown_seconds", 0),
        "pass the seconds to pause after a rate limit (0 resumes at once)",
    ),
    _Rule(
        "slow_start_items",
        "int",
        "slow_start_items must be >= 0",
        _at_least("slow_start_items", 0),
        "use 0 to disable the slow-start ramp",
    ),
    _Rule("slow_start_initial_delay", "number"),
    _Rule(
        "slow_start_final_delay",
        "number",
        "slow_start_initial_delay must be >= slow_start_final_delay",
        lambda c: c.slow_start_initial_delay >= c.slow_start_final_delay,
        "the ramp starts at the initial delay and shrinks to the final one, so swap or adjust them",
        lambda c: (
            f"slow_start_initial_delay={c.slow_start_initial_delay!r} and "
            f"slow_start_final_delay={c.slow_start_final_delay!r}"
        ),
    ),
    _Rule(
        "backoff_multiplier",
        "number",
        "backoff_multiplier must be >= 1.0",
        _at_least("backoff_multiplier", 1.0),
        "use 1.0 for equal pauses or e.g. 2.0 to double each consecutive pause",
    ),
    _Rule(
        "max_rate_limit_retries",
        "int",
        "max_rate_limit_retries must be >= 0",
        _at_least("max_rate_limit_retries", 0),
        "use 0 to fail an item on its first rate limit",
    ),
)


@dataclass
class ProcessorConfig:
    """Settings of a `ParallelBatchProcessor` run.

    The first eleven fields can be passed positionally in the order below (as in 0.7.2);
    the time bounds on user hooks after them are keyword-only. `validate()` raises on invalid
    values and logs a WARNING for legal but suspicious combinations.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field, or a field of `retry`/`rate_limit`, is out of range.
    """

    max_workers: int = 5
    """Calls in flight at once. The processor starts no more workers than there are items."""
    timeout_per_item: float = 120.0
    """Seconds allowed for each attempt (not for the item as a whole); an attempt that
    overruns is cancelled and fails with `FrameworkTimeoutError`, which is retried."""
    post_processor_timeout: float = 90.0
    """Seconds allowed for the post-processor of one result."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Retry policy for failed attempts."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    """The 0.7.2 shared cooldown; at its defaults, adaptive per-provider rate control runs
    instead (see `RateLimitConfig`)."""
    max_requests_per_minute: float | None = None
    """Proactive request budget per minute across all workers (fractions allowed, e.g.
    ``0.5`` is one request every two minutes); ``None`` disables it."""
    progress_interval: int = 10
    """Results between two progress callbacks / progress log lines."""
    progress_callback_timeout: float | None = 5.0
    """Seconds allowed for one progress callback; ``None`` means no limit."""
    enable_detailed_logging: bool = False
    """Accepted for compatibility; has no effect (configure logging levels instead)."""
    max_queue_size: int = 0
    """Capacity of the work queue; ``0`` means unbounded."""
    dry_run: bool = False
    """Call each strategy's ``dry_run()`` instead of ``execute()`` (no model calls)."""
    hook_timeout: float = field(default=30.0, kw_only=True)
    """Seconds allowed for one call of a middleware hook, of a strategy's ``on_error`` and of
    a rate-limit strategy's ``on_rate_limit``. One that overruns is cancelled and treated
    like one that raised (logged, and the item goes on)."""
    prepare_timeout: float = field(default=300.0, kw_only=True)
    """Seconds allowed for a strategy's ``prepare()``; overrunning fails the item like a
    ``prepare()`` that raised."""
    cleanup_timeout: float = field(default=60.0, kw_only=True)
    """Seconds allowed for one strategy's ``cleanup()`` at shutdown."""
    observer_timeout: float = field(default=5.0, kw_only=True)
    """Seconds an observer may take for one event before that event is skipped for it.
    Observers never hold up the workers: events reach each of them in order, from a task of
    their own."""
    observer_drain_timeout: float = field(default=30.0, kw_only=True)
    """Seconds ``process_all()`` waits, once the work is done, for observers to take the
    events still queued for them; what an observer has not taken by then is dropped, with
    one WARNING saying how many events it missed."""
    cancellation_grace: float = field(default=5.0, kw_only=True)
    """Seconds a call or hook that was cancelled for overrunning its time bound gets to
    stop. One that ignores the cancellation for longer is abandoned: its item fails (or its
    hook counts as failed) and the batch goes on without it."""
    mode: Literal["online", "batch", "auto"] = field(default="online", kw_only=True)
    """How calls are made: ``"online"`` (one request per attempt), ``"batch"`` (as requests
    of provider batch jobs, at the providers' batch prices; see `LLMCallStrategy.batch_api`)
    or ``"auto"`` (batch first; a request that fails, expires or misses `batch_deadline` runs
    online, through the normal retries and rate control)."""
    batch_deadline: float | None = field(default=None, kw_only=True)
    """Seconds after a job's submission by which it must have ended; a job still running
    then is cancelled, and its unfinished requests run online (``"auto"``) or fail with
    ``error_category="batch_deadline"`` (``"batch"``). ``None``: the provider's own window
    (24 hours)."""
    batch_poll_interval: float = field(default=30.0, kw_only=True)
    """Seconds before a job is first checked; the interval grows by half after each check."""
    batch_max_poll_interval: float = field(default=600.0, kw_only=True)
    """The longest wait between two checks of a job."""
    batch_max_requests: int | None = field(default=None, kw_only=True)
    """The most requests in one job (the provider's own cap applies too); ``None``: the
    provider's cap."""
    batch_on_cancel: Literal["auto", "cancel", "keep"] = field(default="auto", kw_only=True)
    """What happens to submitted jobs when the run is cancelled or interrupted: ``"keep"``
    leaves them running for a rerun to collect (they are in the checkpoint), ``"cancel"``
    cancels them at the provider; ``"auto"`` keeps them when a checkpoint records them and
    cancels them otherwise (nothing could collect them)."""
    timeline_interval: float | None = field(default=2.0, kw_only=True)
    """Seconds between the samples a run with a checkpoint records in its store: items,
    calls, 429s, tokens and cost per interval, each rate-limit scope's limit and achieved
    rate, latency per model, the slowest items. ``abl report`` and ``abl status --watch``
    (and `async_batch_llm.report`) show them. ``None``: record no timeline."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field, then `retry` and `rate_limit`; raise on the first bad one.

        Range checks run in this order: `max_workers`, `timeout_per_item`,
        `post_processor_timeout`, `progress_interval`, `progress_callback_timeout`,
        `max_queue_size`, `max_requests_per_minute`, then `retry.validate()` and
        `rate_limit.validate()`, then the hook bounds. Finally logs a WARNING (never raises)
        when the queue is smaller than the worker pool, when an attempt's timeout is shorter
        than the first retry wait or than half of the total retry backoff, or when the
        request budget is below one request per second per worker.
        """
        _apply(self, _PROCESSOR_RULES)
        _check_instance("retry", self.retry, RetryConfig, "RetryConfig(max_attempts=3)")
        self.retry.validate()
        _check_instance(
            "rate_limit", self.rate_limit, RateLimitConfig, "RateLimitConfig(cooldown_seconds=60)"
        )
        self.rate_limit.validate()
        _apply(self, _HOOK_RULES)
        _check_choice("mode", self.mode, ("online", "batch", "auto"))
        _check_choice("batch_on_cancel", self.batch_on_cancel, ("auto", "cancel", "keep"))
        _apply(self, _BATCH_RULES)
        self._warn_about_suspicious_values()

    def _warn_about_suspicious_values(self) -> None:
        """Log a WARNING for each legal combination that is probably a mistake, once per
        config object: it is checked again when a processor is built and when a batch
        starts (it may have been edited), and a user should read each warning once."""
        # An ordinary attribute, set at the first check (during __init__, or later for an
        # instance made otherwise): reaching into ``__dict__`` would turn every later field
        # read, two per call, into a dictionary lookup.
        warned: set[str] | None = getattr(self, "_warned", None)
        if warned is None:
            warned = set()
            self._warned: set[str] = warned
        for message in self._suspicious_values():
            if message not in warned:
                warned.add(message)
                logger.warning("%s", message)

    def _suspicious_values(self) -> Iterator[str]:
        if 0 < self.max_queue_size < self.max_workers:
            yield (
                f"max_queue_size={self.max_queue_size} is smaller than "
                f"max_workers={self.max_workers}, so some workers may sit idle waiting for "
                "items; use max_queue_size >= max_workers or 0 (unbounded)"
            )
        retry = self.retry
        if self.timeout_per_item < retry.initial_wait:
            yield (
                f"timeout_per_item={self.timeout_per_item}s is shorter than "
                f"retry.initial_wait={retry.initial_wait}s; an attempt gets less time than "
                "the wait before its retry, check that this is intended"
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
            yield (
                f"timeout_per_item={self.timeout_per_item}s is less than half of the total "
                f"retry backoff of {backoff:.1f}s over {retries} retries{jitter_note}; raise "
                "timeout_per_item or lower retry.max_wait if attempts should get more time "
                "than the waits between them"
            )
        rpm = self.max_requests_per_minute
        if rpm is not None and rpm / 60 < self.max_workers:
            yield (
                f"max_requests_per_minute={rpm} allows {rpm / 60:.2f} requests/s, fewer than "
                f"max_workers={self.max_workers}; workers will mostly wait on the limiter, so "
                "lower max_workers or raise max_requests_per_minute"
            )


def _seconds_rule(name: str, example: str) -> _Rule:
    return _Rule(
        name,
        "number",
        f"{name} must be > 0",
        _positive(name),
        f"pass a number of seconds, e.g. {name}={example}",
    )


_PROCESSOR_RULES: Final = (
    _Rule(
        "max_workers",
        "int",
        "max_workers must be >= 1",
        _at_least("max_workers", 1),
        "use at least 1 worker",
    ),
    _Rule(
        "timeout_per_item",
        "number",
        "timeout_per_item must be > 0",
        _positive("timeout_per_item"),
        "pass the seconds each attempt may take, e.g. 120.0",
    ),
    _Rule(
        "post_processor_timeout",
        "number",
        "post_processor_timeout must be > 0",
        _positive("post_processor_timeout"),
        "pass the seconds the post-processor may take, e.g. 90.0",
    ),
    _Rule(
        "progress_interval",
        "int",
        "progress_interval must be >= 1",
        _at_least("progress_interval", 1),
        "pass how many items to process between progress reports",
    ),
    _Rule(
        "progress_callback_timeout",
        "optional number",
        "progress_callback_timeout must be > 0",
        _positive_or_none("progress_callback_timeout"),
        "pass a positive number of seconds, or None for no limit",
    ),
    _Rule(
        "max_queue_size",
        "int",
        "max_queue_size must be >= 0",
        _at_least("max_queue_size", 0),
        "use 0 for an unbounded queue",
    ),
    _Rule(
        "max_requests_per_minute",
        "optional number",
        "max_requests_per_minute must be > 0 or None",
        lambda c: (
            c.max_requests_per_minute is None
            or (c.max_requests_per_minute > 0 and math.isfinite(c.max_requests_per_minute))
        ),
        "pass the requests allowed per minute (e.g. 60, or 0.5 for one every two minutes), "
        "or None to disable the proactive limiter",
    ),
    _Rule("enable_detailed_logging", "bool"),
    _Rule("dry_run", "bool"),
)

_HOOK_RULES: Final = (
    _seconds_rule("hook_timeout", "30.0"),
    _seconds_rule("prepare_timeout", "300.0"),
    _seconds_rule("cleanup_timeout", "60.0"),
    _seconds_rule("observer_timeout", "5.0"),
    _seconds_rule("observer_drain_timeout", "30.0"),
    _seconds_rule("cancellation_grace", "5.0"),
)

_BATCH_RULES: Final = (
    _Rule(
        "batch_deadline",
        "optional number",
        "batch_deadline must be > 0 or None",
        _positive_or_none("batch_deadline"),
        "pass the seconds a job may run, e.g. batch_deadline=3600, or None",
    ),
    _seconds_rule("batch_poll_interval", "30.0"),
    _seconds_rule("batch_max_poll_interval", "600.0"),
    _Rule(
        "batch_max_requests",
        "optional number",
        "batch_max_requests must be a whole number >= 1 or None",
        lambda c: (
            c.batch_max_requests is None
            or (float(c.batch_max_requests).is_integer() and c.batch_max_requests >= 1)
        ),
        "pass the most requests per job, e.g. batch_max_requests=10000, or None",
    ),
    _Rule(
        "timeline_interval",
        "optional number",
        "timeline_interval must be > 0 or None",
        _positive_or_none("timeline_interval"),
        "pass the seconds between timeline samples, e.g. timeline_interval=2.0, or None",
    ),
)
