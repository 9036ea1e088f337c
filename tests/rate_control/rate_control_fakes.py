"""Fakes for the rate-control tests: a virtual clock, so no test here sleeps for real."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from async_batch_llm._internal.rate_control.controller import RateController
from async_batch_llm._internal.rate_control.scope import RateScope, RateSettings

SCOPE = RateScope(provider="openai", key_id="k1", model="gpt-test")
OTHER_SCOPE = RateScope(provider="openai", key_id="k1", model="other-model")


class FakeClock:
    """Virtual time: ``now`` moves only through :meth:`sleep` (jump mode) or :meth:`advance`.

    In jump mode (the default) ``sleep`` moves ``now`` forward at once, which suits one task
    at a time. With ``jump=False`` sleepers wait on timers that :meth:`advance` (or
    :meth:`run`, which advances whenever every task is asleep) fires in time order.
    """

    def __init__(self, start: float = 1000.0, *, jump: bool = True) -> None:
        self.now = start
        self.jump = jump
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.jump:
            self.now += max(0.0, delay)
            await asyncio.sleep(0)
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), timer))
        await timer

    @property
    def sleepers(self) -> int:
        """Tasks currently asleep on this clock."""
        return sum(1 for _, _, timer in self._timers if not timer.done())

    def advance(self, seconds: float) -> None:
        """Move ``now`` forward by ``seconds``, waking every sleeper due by then in order."""
        target = self.now + seconds
        while self._fire_next(limit=target):
            pass
        self.now = target

    def _fire_next(self, limit: float | None = None) -> bool:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)  # cancelled sleepers
        if not self._timers or (limit is not None and self._timers[0][0] > limit):
            return False
        wake_at, _, timer = heapq.heappop(self._timers)
        self.now = max(self.now, wake_at)
        timer.set_result(None)
        return True

    async def settle(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Let the loop run until every unfinished task in ``tasks`` sleeps on this clock."""
        # A few turns first: a task woken a moment ago may still hold a stale timer.
        for _ in range(5):
            await asyncio.sleep(0)
        for _ in range(1000):
            if self.sleepers >= sum(not task.done() for task in tasks):
                return
            await asyncio.sleep(0)
        msg = "tasks are blocked on something other than the fake clock"
        raise AssertionError(msg)

    async def run(
        self,
        coros: list[Coroutine[Any, Any, None]],
        *,
        until: float,
        on_tick: Callable[[float], None] | None = None,
    ) -> None:
        """Run ``coros`` as tasks in virtual time until they finish or ``now`` passes ``until``.

        ``on_tick`` is called with each whole second of virtual time as it passes.
        """
        tasks = [asyncio.ensure_future(coro) for coro in coros]
        next_tick = self.now
        try:
            while self.now < until and not all(task.done() for task in tasks):
                await self.settle(tasks)
                if all(task.done() for task in tasks) or not self._fire_next():
                    break
                while on_tick is not None and self.now >= next_tick:
                    on_tick(next_tick)
                    next_tick += 1.0
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result


def make_controller(
    clock: FakeClock, wall: Callable[[], float] | None = None, **options: Any
) -> RateController:
    """A controller on ``clock`` with ``RateSettings(**options)``."""
    return RateController(
        RateSettings(**options), clock=clock, sleep=clock.sleep, wall_clock=wall or clock
    )


async def admitted_after(clock: FakeClock, admission: Awaitable[Any]) -> float:
    """Seconds of virtual time ``admission`` took (jump mode)."""
    start = clock.now
    await admission
    return clock.now - start


class ProviderBucket:
    """A provider's per-window request bucket: starts full, refills continuously.

    ``take`` answers whether a request arriving at ``now`` is served; ``headers`` renders the
    state the way OpenAI reports it.
    """

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.updated = now

    def take(self, now: float) -> bool:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if self.level >= 1.0 - 1e-9:
            self.level -= 1.0
            return True
        return False

    def headers(self) -> dict[str, str]:
        reset = (self.capacity - self.level) / self.rate
        return {
            "x-ratelimit-limit-requests": str(int(self.capacity)),
            "x-ratelimit-remaining-requests": str(int(max(0.0, self.level))),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }
