"""An event loop whose clock jumps to the next timer whenever nothing is ready to run.

Sleeps, timeouts and ``call_later`` behave exactly as on a normal loop, but take no real
time: a batch that spends two minutes of provider-imposed waiting runs in milliseconds, and
every run of it sees the same times. Only for code without sockets or threads (a real
socket would never look ready to it).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        # The loop asks to wait until its next timer: move the clock there instead.
        events = super().select(0)
        if events or timeout is None:
            return events if events or timeout is not None else super().select(None)
        if timeout > 0:
            self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (see the module docstring)."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh `VirtualTimeLoop`."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
