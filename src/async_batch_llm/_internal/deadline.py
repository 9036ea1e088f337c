"""A reusable deadline for the bounded steps one task runs one after another.

``asyncio.timeout()`` schedules and cancels a timer handle on every use (about 5 µs here,
more than the whole per-item cost of a bare worker loop). A worker runs one step at a time
(a strategy call, a middleware hook), so it keeps a single timer that is re-armed lazily: a
step only moves the deadline; when the timer fires for a step that has already finished, it
re-schedules itself for the current deadline instead of being cancelled and recreated.

Expiry works like ``asyncio.timeout()``: cancel the task, then turn the ``CancelledError``
back into a timeout with ``Task.uncancel()``. A step can ignore that cancellation (user code
that swallows ``CancelledError``); the deadline then calls ``on_stuck`` once the step has
overrun by ``grace`` more seconds, so that the task's owner can give up on the task instead
of waiting for it forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["AttemptDeadline"]


class AttemptDeadline:
    """Deadline for the step the owning task is running now.

    Create it inside the task that owns it. Usage:

    ```python
    deadline.arm(seconds)
    try:
        result = await call()
    except BaseException:
        if deadline.disarm():  # True: the deadline, not someone else, cancelled us
            raise TimeoutError from None
        raise
    deadline.disarm()
    ...
    deadline.close()  # when the task is done with it
    ```

    Args:
        on_stuck: Called (from the event loop, not from the task) when a step is still
            running `grace` seconds after its deadline cancelled it.
        grace: Seconds a cancelled step gets to stop before `on_stuck` is called.
    """

    __slots__ = (
        "_armed",
        "_cancelling",
        "_deadline",
        "_expired",
        "_grace",
        "_handle",
        "_handle_when",
        "_loop",
        "_on_stuck",
        "_task",
        "_time",
        "_what",
    )

    def __init__(self, *, on_stuck: Callable[[], object] | None = None, grace: float = 5.0) -> None:
        task = asyncio.current_task()
        if task is None:
            msg = "AttemptDeadline must be created inside the task whose attempts it limits"
            raise RuntimeError(msg)
        self._task = task
        self._loop = asyncio.get_running_loop()
        # The C clock itself where the loop uses it: a Python-level loop.time() call per step
        # costs more than the rest of arm().
        loop_time = type(self._loop).time
        self._time: Callable[[], float] = (
            time.monotonic if loop_time is asyncio.BaseEventLoop.time else self._loop.time
        )
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self._deadline = 0.0
        self._armed = False
        self._expired = False
        self._cancelling = 0
        self._on_stuck = on_stuck
        self._grace = grace
        self._what = ""

    @property
    def task(self) -> asyncio.Task[object]:
        """The task whose steps this deadline limits."""
        return self._task

    @property
    def step(self) -> str:
        """What the current (or last) step was armed for; ``""`` when not named."""
        return self._what

    def arm(self, seconds: float, what: str = "") -> None:
        """Start a step, named `what` for reports, that must finish within `seconds`."""
        deadline = self._time() + seconds
        self._what = what
        self._deadline = deadline
        self._armed = True
        self._expired = False
        if self._handle is None or self._handle_when > deadline:
            self._schedule(deadline)

    def disarm(self) -> bool:
        """End the step; return True when the deadline expired and cancelled the task.

        When it did, the cancellation it requested is withdrawn (``Task.uncancel``), so the
        caller can raise a timeout in its place while an outer cancellation still counts.
        Safe to call more than once per step.
        """
        self._armed = False
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        """Drop the pending timer."""
        self._armed = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)
        self._handle_when = when

    def _fire(self) -> None:
        self._handle = None
        if not self._armed:
            return
        if self._time() >= self._deadline:
            self._expired = True
            self._armed = False
            self._cancelling = self._task.cancelling()
            self._task.cancel()
            if self._on_stuck is not None:
                # The deadline value tells the steps apart: each arm() sets a later one.
                self._loop.call_later(self._grace, self._check_stuck, self._deadline)
        else:
            self._schedule(self._deadline)

    def _check_stuck(self, deadline: float) -> None:
        # Still expired in the same step: the step has not returned since it was cancelled.
        stuck = self._expired and self._deadline == deadline and not self._task.done()
        if stuck and self._on_stuck is not None:
            self._on_stuck()
