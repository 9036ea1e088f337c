"""A per-worker attempt deadline that costs a few attribute writes per attempt.

``asyncio.timeout()`` schedules and cancels a timer handle on every use (about 5 µs here,
more than the whole per-item cost of a bare worker loop). A worker runs one attempt at a
time, so each worker keeps a single timer that is re-armed lazily: an attempt only moves the
deadline; when the timer fires for an attempt that has already finished, it re-schedules
itself for the current deadline instead of being cancelled and recreated every time.
Expiry works like ``asyncio.timeout()``: cancel the task, then turn the ``CancelledError``
back into a timeout with ``Task.uncancel()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["AttemptDeadline"]


class AttemptDeadline:
    """Deadline for the attempt the owning task is running now.

    Create it inside the task that owns it. Usage::

        deadline.arm(seconds)
        try:
            result = await call()
        except asyncio.CancelledError:
            if deadline.disarm():  # True: the deadline, not someone else, cancelled us
                raise TimeoutError from None
            raise
        deadline.disarm()
        ...
        deadline.close()  # when the task is done with it
    """

    __slots__ = (
        "_armed",
        "_cancelling",
        "_deadline",
        "_expired",
        "_handle",
        "_handle_when",
        "_loop",
        "_task",
        "_time",
    )

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            msg = "AttemptDeadline must be created inside the task whose attempts it limits"
            raise RuntimeError(msg)
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._time: Callable[[], float] = self._loop.time
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self._deadline = 0.0
        self._armed = False
        self._expired = False
        self._cancelling = 0

    def arm(self, seconds: float) -> None:
        """Start a deadline ``seconds`` from now."""
        deadline = self._time() + seconds
        self._deadline = deadline
        self._armed = True
        self._expired = False
        if self._handle is None or self._handle_when > deadline:
            self._schedule(deadline)

    def disarm(self) -> bool:
        """End the attempt; return True when the deadline expired and cancelled the task.

        When it did, the cancellation it requested is withdrawn (``Task.uncancel``), so the
        caller can raise a timeout in its place while an outer cancellation still counts.
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
        else:
            self._schedule(self._deadline)
