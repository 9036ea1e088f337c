"""The simulator's settings, validated when they are built."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = ["Latency", "SimulatorConfig", "is_int"]

Latency: TypeAlias = float | tuple[float, float] | Callable[[], float]
"""Seconds a successful reply waits: a fixed value, a ``(low, high)`` uniform range, or a
callable that returns the delay for one request."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Settings of a `ProviderSimulator`.

    Args:
        rpm: Requests each API key may make per window, or ``None`` for no limit.
        tpm: Tokens (estimated prompt tokens plus requested output tokens) each API key may
            use per window, or ``None`` for no limit.
        window_seconds: Length of the rate-limit "minute". Benchmarks shrink it to compress
            time; the buckets refill at ``limit / window_seconds`` per second.
        latency: Delay before a successful reply (see `Latency`). Rejections answer at once.
        error_rate: Probability in ``[0, 1]`` that a generation request fails with one of
            ``error_statuses`` before it reaches the rate limiter.
        error_statuses: HTTP statuses injected at ``error_rate``, picked uniformly.
        send_rate_limit_headers: Send the provider's rate-limit headers (OpenAI
            ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``).
        send_retry_after: Send retry hints on 429s (``retry-after``/``retry-after-ms``
            headers, Gemini ``RetryInfo``).
        daily_request_quota: Requests each API key may make in the simulator's lifetime
            before every further request fails as a hard quota exhaustion, or ``None``.
        limits_per_model: Give each model of a key its own buckets and quota, as OpenAI and
            Gemini do, instead of one set per key.
        seed: Seed for injected errors and latency ranges, so runs repeat exactly.
        clock: Monotonic clock in seconds that drives the buckets; tests inject their own.
        wall_clock: Wall clock in epoch seconds for timestamps (cache expiry, reset times).
        recent_requests: How many recent requests `SimulatorStats.recent` keeps.
        batch_latency: Seconds a batch job takes: request ``i`` of ``n`` is done at
            ``created + batch_latency * (i + 1) / n`` on ``clock``, so a job completes
            progressively and ends when its last request is done; 0 ends it at once.
        batch_error_rate: Probability in ``[0, 1]`` that a request inside a batch job fails
            with the provider's per-request server error (500), drawn from ``seed``.
        batch_expiry: Seconds after creation at which a batch job that has not ended expires:
            its requests done by then keep their results, the others are expired. ``None``
            keeps the providers' own window of 24 hours (86400 seconds).
        batch_max_requests: Most requests a batch job may hold, below the provider's own cap,
            or ``None`` for only the provider's cap; larger jobs are refused with the
            provider's 400, so tests can check that a client splits its jobs.
    """

    rpm: float | None = None
    tpm: float | None = None
    window_seconds: float = 60.0
    latency: Latency = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 503)
    send_rate_limit_headers: bool = True
    send_retry_after: bool = True
    daily_request_quota: int | None = None
    limits_per_model: bool = False
    seed: int | None = None
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    wall_clock: Callable[[], float] = field(default=time.time, compare=False)
    recent_requests: int = 1000
    batch_latency: float = 0.0
    batch_error_rate: float = 0.0
    batch_expiry: float | None = None
    batch_max_requests: int | None = None

    def __post_init__(self) -> None:
        _check_limit("rpm", self.rpm)
        _check_limit("tpm", self.tpm)
        if not _is_number(self.window_seconds) or not self.window_seconds > 0:
            msg = (
                f"window_seconds must be a positive number of seconds, got "
                f"{self.window_seconds!r}; use 60.0 for real per-minute limits"
            )
            raise ValueError(msg)
        _check_latency(self.latency)
        if not _is_number(self.error_rate) or not 0.0 <= self.error_rate <= 1.0:
            msg = f"error_rate must be a probability between 0.0 and 1.0, got {self.error_rate!r}"
            raise ValueError(msg)
        statuses = tuple(self.error_statuses)
        if not statuses or any(
            not is_int(status) or not 400 <= status <= 599 for status in statuses
        ):
            msg = (
                f"error_statuses must be a non-empty tuple of HTTP error statuses (400-599), "
                f"got {self.error_statuses!r}; for example (500, 503)"
            )
            raise ValueError(msg)
        object.__setattr__(self, "error_statuses", statuses)
        quota = self.daily_request_quota
        if quota is not None and (not is_int(quota) or quota < 1):
            msg = (
                f"daily_request_quota must be a positive number of requests or None for no "
                f"quota, got {quota!r}"
            )
            raise ValueError(msg)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            msg = f"seed must be an integer or None, got {self.seed!r}"
            raise TypeError(msg)
        for name in ("clock", "wall_clock"):
            if not callable(getattr(self, name)):
                msg = f"{name} must be a callable returning seconds, got {getattr(self, name)!r}"
                raise TypeError(msg)
        if not is_int(self.recent_requests) or self.recent_requests < 0:
            msg = f"recent_requests must be a non-negative integer, got {self.recent_requests!r}"
            raise ValueError(msg)
        self._check_batches()

    def _check_batches(self) -> None:
        if not _is_number(self.batch_latency) or self.batch_latency < 0:
            msg = (
                f"batch_latency must be seconds >= 0, got {self.batch_latency!r}; use 0 for "
                f"batch jobs that end at once"
            )
            raise ValueError(msg)
        rate = self.batch_error_rate
        if not _is_number(rate) or not 0.0 <= rate <= 1.0:
            msg = f"batch_error_rate must be a probability between 0.0 and 1.0, got {rate!r}"
            raise ValueError(msg)
        expiry = self.batch_expiry
        if expiry is not None and (not _is_number(expiry) or not expiry > 0):
            msg = (
                f"batch_expiry must be a positive number of seconds or None for jobs that never "
                f"expire, got {expiry!r}; the providers' own window is 86400"
            )
            raise ValueError(msg)
        cap = self.batch_max_requests
        if cap is not None and (not is_int(cap) or cap < 1):
            msg = (
                f"batch_max_requests must be a positive number of requests or None for the "
                f"provider's own cap, got {cap!r}"
            )
            raise ValueError(msg)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` (and not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if not _is_number(value) or not value > 0:
        msg = (
            f"{name} must be a positive number per window or None for no limit, got {value!r}; "
            f"for example {name}=600"
        )
        raise ValueError(msg)


def _check_latency(latency: object) -> None:
    if callable(latency):
        return
    if isinstance(latency, tuple):
        if (
            len(latency) == 2
            and all(_is_number(bound) for bound in latency)
            and 0 <= latency[0] <= latency[1]
        ):
            return
        msg = (
            f"latency range must be (low, high) with 0 <= low <= high seconds, got {latency!r}; "
            f"for example (0.1, 0.8)"
        )
        raise ValueError(msg)
    if not isinstance(latency, int | float) or not _is_number(latency) or latency < 0:
        msg = (
            f"latency must be seconds >= 0, a (low, high) range or a callable, got {latency!r}; "
            f"use 0 for immediate replies"
        )
        raise ValueError(msg)
