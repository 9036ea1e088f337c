"""Shared rate-limit cooldowns: one pause for a whole burst of 429s, then a slow start.

Cooldowns are numbered by *generation*. A worker remembers the generation current when its
attempt started; a 429 from an attempt that began before the latest cooldown started belongs
to a burst that has already been paid for, so that worker only waits for the cooldown instead
of starting another. The first worker to report a 429 in a new generation leads: it picks the
length (the server's retry hint if the error carried one, else the strategy's formula),
pauses the gate every worker passes before taking its next item, sleeps, and reopens it.

All state changes happen between awaits, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from async_batch_llm._internal.rate_control.controller import loop_time
from async_batch_llm.observers.base import ProcessingEvent
from async_batch_llm.strategies.rate_limit import RateLimitStrategy

__all__ = ["DEFAULT_MAX_COOLDOWN", "RateLimitCoordinator"]

logger = logging.getLogger(__name__)

#: Upper bound for a server-provided retry hint when the strategy has no ``max_cooldown``.
DEFAULT_MAX_COOLDOWN = 600.0

Publish = Callable[[ProcessingEvent, dict[str, Any]], None]
#: Runs a user hook under a time bound: ``await run_hook(lambda: hook(...), "what")``.
HookRunner = Callable[[Callable[[], Coroutine[Any, Any, Any]], str], Awaitable[Any]]


def _no_publish(event: ProcessingEvent, payload: dict[str, Any]) -> None:
    return None


async def _unbounded(factory: Callable[[], Coroutine[Any, Any, Any]], what: str) -> Any:
    return await factory()


class RateLimitCoordinator:
    """Cooldown generations, the worker gate and the slow-start ramp of one processor.

    Args:
        strategy: Chooses cooldown lengths and the slow-start delays.
        publish: Publishes ``COOLDOWN_STARTED`` / ``COOLDOWN_ENDED``; called only when
            ``has_listeners()`` is true.
        has_listeners: Whether anyone listens to events (skip building payloads if not).
        run_hook: Runs the strategy's ``on_rate_limit`` under a time bound.
        sleep: The sleep used for cooldowns and slow-start delays (tests inject their own).
        clock: Monotonic clock for measuring cooldowns.
    """

    def __init__(
        self,
        strategy: RateLimitStrategy,
        *,
        publish: Publish = _no_publish,
        has_listeners: Callable[[], bool] = lambda: False,
        run_hook: HookRunner = _unbounded,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = loop_time,
    ) -> None:
        self.strategy = strategy
        self._publish = publish
        self._has_listeners = has_listeners
        self._run_hook = run_hook
        self._sleep = sleep
        self._clock = clock
        #: Set while workers may take items; cleared for the length of a cooldown.
        self.resume_event = asyncio.Event()
        self.resume_event.set()
        self.in_cooldown = False
        #: Number of cooldowns started so far.
        self.generation = 0
        #: Generation of the last cooldown that has ended.
        self.completed_generation = 0
        #: Cooldowns since the last successful attempt; grows the strategy's cooldown.
        self.consecutive = 0
        self.slow_start_active = False
        self.items_since_resume = 0
        #: True when an attempt may start without waiting at all (no cooldown, no ramp). A
        #: flag kept in step with the two, because it is read for every attempt.
        self.gate_open = True
        self._generation_done = asyncio.Event()
        self._generation_done.set()

    async def wait_turn(self) -> None:
        """Worker gate, passed once per dequeued item: wait out a cooldown, then slow start."""
        while not self.resume_event.is_set():
            await self.resume_event.wait()
        delay = self.slow_start_delay()
        if delay > 0:
            await self._sleep(delay)

    def slow_start_delay(self) -> float:
        """Next slow-start delay in seconds (0.0 once the ramp is over)."""
        if not self.slow_start_active:
            return 0.0
        should_delay, delay = self.strategy.should_apply_slow_start(self.items_since_resume)
        if should_delay:
            self.items_since_resume += 1
            return delay
        self.slow_start_active = False
        self.gate_open = self.resume_event.is_set()
        self.items_since_resume = 0
        return 0.0

    def record_success(self) -> None:
        """A call succeeded: the next cooldown starts again from the strategy's first step."""
        self.consecutive = 0

    async def handle_rate_limit(
        self,
        worker_id: int,
        observed_generation: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Wait out the cooldown this 429 belongs to, leading a new one if there is none.

        Args:
            worker_id: The reporting worker (passed to the strategy and events).
            observed_generation: ``generation`` when the failed attempt started; ``None``
                means the current one. An older value marks a 429 from an attempt that was
                in flight when the latest cooldown began.
            retry_after: The server's hint in seconds; when given it sets the cooldown
                length (clipped to ``[0, max_cooldown]``) instead of the strategy's formula.
        """
        if self.in_cooldown or (
            observed_generation is not None and observed_generation < self.generation
        ):
            await self._generation_done.wait()
            return

        self.in_cooldown = True
        self.generation += 1
        self.slow_start_active = True
        self.consecutive += 1
        consecutive = self.consecutive
        self.resume_event.clear()
        self.gate_open = False
        done = self._generation_done = asyncio.Event()
        started = self._clock()
        error: BaseException | None = None
        try:
            cooldown = await self._choose_cooldown(worker_id, consecutive, retry_after)
        except Exception as exc:
            logger.warning(
                "Rate-limit strategy %s failed to choose a cooldown (%s); resuming at once",
                type(self.strategy).__name__,
                exc,
                exc_info=True,
            )
            error = exc
            cooldown = 0.0
        except BaseException:
            self._finish(done)
            raise
        try:
            if self._has_listeners():
                self._publish(
                    ProcessingEvent.COOLDOWN_STARTED,
                    {"worker_id": worker_id, "duration": cooldown, "consecutive": consecutive},
                )
            if cooldown > 0:
                logger.warning(
                    "Rate limit hit (cooldown %d in a row): pausing all workers for %.1fs",
                    consecutive,
                    cooldown,
                )
                await self._sleep(cooldown)
            else:
                logger.warning("Rate limit hit: cooldown is 0s, resuming at once")
        except Exception as exc:
            error = exc
        finally:
            self._finish(done)
        if self._has_listeners():
            payload: dict[str, Any] = {"duration": max(0.0, self._clock() - started)}
            if error is not None:
                payload["error"] = str(error)[:200]
            self._publish(ProcessingEvent.COOLDOWN_ENDED, payload)

    async def _choose_cooldown(
        self, worker_id: int, consecutive: int, retry_after: float | None
    ) -> float:
        if retry_after is not None:
            ceiling = getattr(self.strategy, "max_cooldown", DEFAULT_MAX_COOLDOWN)
            return min(max(retry_after, 0.0), float(ceiling))
        strategy = self.strategy
        cooldown = float(
            await self._run_hook(
                lambda: strategy.on_rate_limit(worker_id, consecutive),
                f"on_rate_limit() of {type(strategy).__name__}",
            )
        )
        if math.isnan(cooldown) or cooldown < 0:
            return 0.0
        return min(cooldown, DEFAULT_MAX_COOLDOWN) if math.isinf(cooldown) else cooldown

    def _finish(self, done: asyncio.Event) -> None:
        # Runs on every exit path, cancellation included, so no worker stays paused.
        self.items_since_resume = 0
        self.in_cooldown = False
        self.completed_generation = self.generation
        self.resume_event.set()
        done.set()
