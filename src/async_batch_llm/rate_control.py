"""Rate control that rides each provider's real limit instead of pausing for a fixed cooldown.

Pass an `AdaptiveRateLimitStrategy` as the processor's rate-limit strategy. Limits are
tracked per `RateScope` (provider + API key + model), so a 429 pauses only its own
scope. Within a scope, calls are paced smoothly to the requests-per-minute and
tokens-per-minute budgets, which come, in order of preference, from:

1. the provider's rate-limit headers (OpenAI ``x-ratelimit-*``, Anthropic
   ``anthropic-ratelimit-*``), read from every response through an httpx event hook;
2. the limits you configure (``rpm``, ``tpm``);
3. learning: without either, the pace is set from the first 429 and then adjusted, lowered by
   ``decrease_factor`` on a rate limit (once per episode) and raised by ``increase_fraction``
   while work is waiting.

A server's retry hint (``retry-after``, Gemini ``RetryInfo``) pauses the scope for exactly that
long. An exhausted hard quota (e.g. OpenAI ``insufficient_quota``, a Gemini per-day quota)
makes every later call in the scope fail at once with `QuotaExhaustedError`.

To let the controller see headers on successes too, build the SDK's HTTP client with the hook:

```python
import httpx2
import openai
from async_batch_llm.rate_control import httpx_event_hooks

http_client = httpx2.AsyncClient(event_hooks=httpx_event_hooks())
client = openai.AsyncOpenAI(http_client=http_client)
```

or add it to a client you already have with `instrument`.

Processes that share an API key share its limit too: give each the same `RedisBudget`
(``AdaptiveRateLimitStrategy(budget=RedisBudget("redis://host:6379/0", namespace="prod"))``)
and the pacing, pauses, learned limits and an exhausted quota are kept in Redis for all of
them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from async_batch_llm._internal.rate_control.controller import (
    RateController,
    httpx_event_hooks,
    instrument,
)
from async_batch_llm._internal.rate_control.headers import (
    LimitObservation,
    parse_rate_limit_headers,
)
from async_batch_llm._internal.rate_control.redis_store import (
    RedisBudget,
    SharedBudgetUnavailableError,
)
from async_batch_llm._internal.rate_control.scope import (
    QuotaExhaustedError,
    RateScope,
    RateSettings,
    ScopeSnapshot,
)
from async_batch_llm.strategies.rate_limit import RateLimitStrategy

__all__ = [
    "AdaptiveRateLimitStrategy",
    "RedisBudget",
    "SharedBudgetUnavailableError",
    "RateScope",
    "ScopeSnapshot",
    "QuotaExhaustedError",
    "httpx_event_hooks",
    "instrument",
    "parse_rate_limit_headers",
    "LimitObservation",
]


class AdaptiveRateLimitStrategy(RateLimitStrategy):
    """Per-scope pacing to the provider's real limits, read from headers, configured or learned.

    Use it as ``RateLimitConfig``'s / the processor's rate-limit strategy. It holds a
    `controller` that admits every attempt; the cooldown methods of
    `RateLimitStrategy` are kept for compatibility: `on_rate_limit` answers the
    longest current scope pause and `should_apply_slow_start` never slows items down.

    Args:
        rpm: The provider's requests-per-minute limit, if known; applied to every scope
            unless its headers report one. ``None``: read it from headers or learn it.
        tpm: The provider's tokens-per-minute limit, if known (same rules as ``rpm``).
        window_seconds: The window the provider's header limits count over (60 for
            per-minute limits); learning adjusts the pace once per tenth of it.
        initial_rpm: The pace to start learning from. ``None`` (the default) starts
            unpaced and sets the pace from what the provider let through before its first
            429, which uses a provider's full starting budget.
        decrease_factor: The learned pace is multiplied by this on a rate limit (``> 0``
            and ``< 1``), once per episode.
        increase_fraction: The learned pace grows by this fraction (at least one request
            per minute) after each tenth of the window in which work waited for it without
            a rate limit (``> 0`` and ``<= 1``).
        safety_margin: The fraction of a known limit (configured or from headers) left
            unused, for requests counted elsewhere (``>= 0`` and ``< 1``).
        burst_seconds: How many seconds of the pace may go at once (at least one call), so
            that providers enforcing their limit per second are not overrun.
        budget: A `RedisBudget` shared with other processes (and hosts) using the same
            key: every scope is then paced, paused and learned together with them.
            ``None`` (the default) paces this process alone.
        clock: Monotonic seconds (default: the running event loop's clock); for tests.
        sleep: Async sleep (default `asyncio.sleep`); injectable for tests.

    Raises:
        ValueError: If an option is out of range; the message names it and the fix.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        window_seconds: float = 60.0,
        initial_rpm: float | None = None,
        decrease_factor: float = 0.8,
        increase_fraction: float = 0.05,
        safety_margin: float = 0.03,
        burst_seconds: float = 1.0,
        budget: RedisBudget | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        #: The validated options.
        self.settings = RateSettings(
            rpm=rpm,
            tpm=tpm,
            window_seconds=window_seconds,
            initial_rpm=initial_rpm,
            decrease_factor=decrease_factor,
            increase_fraction=increase_fraction,
            safety_margin=safety_margin,
            burst_seconds=burst_seconds,
        )
        given: object = budget
        if given is not None and not isinstance(given, RedisBudget):
            msg = f"budget must be a RedisBudget or None, got {type(given).__name__}"
            raise TypeError(msg)
        #: The shared budget, if any.
        self.budget = budget
        #: Admits every attempt and tracks every scope.
        self.controller = RateController(
            self.settings,
            clock=clock,
            sleep=asyncio.sleep if sleep is None else sleep,
            budget=budget,
        )

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return the longest current scope pause in seconds, ``0.0`` if no scope is paused.

        The controller already paused the scope that was rate limited; a global cooldown
        on top would stall the other scopes.
        """
        return self.controller.longest_pause()

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Return ``(False, 0.0)``: pacing replaces the slow-start ramp."""
        return (False, 0.0)

    async def aclose(self) -> None:
        """Send the outcomes still on their way to the shared budget (bounded by its timeout)
        and close its connection on this loop; it connects again when used. Nothing to do
        without a budget. The processor calls it on shutdown."""
        shared = self.controller.shared
        if shared is not None:
            await shared.flush()
            await shared.budget.aclose()

    def snapshot(self) -> list[ScopeSnapshot]:
        """The current state of every scope, in order of first use."""
        return self.controller.snapshot()

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"AdaptiveRateLimitStrategy(rpm={s.rpm!r}, tpm={s.tpm!r}, "
            f"window_seconds={s.window_seconds!r}, initial_rpm={s.initial_rpm!r}, "
            f"decrease_factor={s.decrease_factor!r}, increase_fraction={s.increase_fraction!r}, "
            f"safety_margin={s.safety_margin!r}, burst_seconds={s.burst_seconds!r}"
            + ("" if self.budget is None else f", budget={self.budget!r}")
            + ")"
        )


# Report the public home of the re-exported names (``async_batch_llm.rate_control.RateScope``).
for _name in (
    "RateScope",
    "ScopeSnapshot",
    "QuotaExhaustedError",
    "LimitObservation",
    "RedisBudget",
    "SharedBudgetUnavailableError",
    "httpx_event_hooks",
    "instrument",
    "parse_rate_limit_headers",
):
    globals()[_name].__module__ = __name__
del _name
