"""The processor's queue of work items: an `asyncio.Queue` with its common path inlined.

Every item goes through ``put_nowait`` and, in 0.7.2-style workers, ``get_nowait`` and
``task_done``. `asyncio.Queue` spends several Python-level calls in each (``full()``,
``_put()``, ``_wakeup_next()``, ``Event.clear()``); at zero latency those add up to more
than the rest of a worker's bookkeeping per item. This subclass keeps the same state and
semantics (FIFO, ``maxsize``, ``join()`` / ``task_done()``, cancellable waiters), so code
written against 0.7.2's ``processor._queue`` works unchanged, and adds what the worker pool
uses: `take` (an item, counted as finished at once) and `close` / `wait_item`.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue(asyncio.Queue[T]):
    """A FIFO queue for one event loop; see the module docstring.

    Args:
        maxsize: Most items it holds; ``0`` (or less) means no limit.
    """

    _maxsize: int
    _queue: Any
    _getters: Any
    _putters: Any
    _unfinished_tasks: int
    _finished: asyncio.Event

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        #: Set by `close`: no item will be put any more.
        self.closed = False

    def full(self) -> bool:
        """Whether ``put_nowait`` would raise `asyncio.QueueFull`."""
        return 0 < self._maxsize <= len(self._queue)

    def put_nowait(self, item: T) -> None:
        """Add `item` at the end.

        Raises:
            asyncio.QueueFull: The queue holds ``maxsize`` items.
        """
        items = self._queue
        if 0 < self._maxsize <= len(items):
            raise asyncio.QueueFull
        items.append(item)
        self._unfinished_tasks += 1
        if self._unfinished_tasks == 1:
            self._finished.clear()
        if self._getters:
            _wake_one(self._getters)

    def get_nowait(self) -> T:
        """Remove and return the first item.

        Raises:
            asyncio.QueueEmpty: The queue is empty.
        """
        items = self._queue
        if not items:
            raise asyncio.QueueEmpty
        item: T = items.popleft()
        if self._putters:
            _wake_one(self._putters)
        return item

    def take(self) -> T | None:
        """Remove and return the first item, counted as finished; ``None`` when empty.

        For a consumer that tracks completion itself (the worker pool): no `task_done`
        call is owed, and `join` does not wait for the item.
        """
        items = self._queue
        if not items:
            return None
        item: T = items.popleft()
        self._unfinished_tasks -= 1
        if not self._unfinished_tasks:
            self._finished.set()
        if self._putters:
            _wake_one(self._putters)
        return item

    async def wait_item(self) -> bool:
        """Wait until the queue holds an item (True) or is closed while empty (False)."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self.closed:
                return False
            waiter = loop.create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self._getters:
                    self._getters.remove(waiter)
                raise
        return True

    def reopen(self) -> None:
        """Accept items again after `close` (the next batch of the same processor)."""
        self.closed = False

    def close(self) -> None:
        """No more items: waiters of `wait_item` are told once the queue is empty."""
        self.closed = True
        while self._getters:
            _wake_one(self._getters)

    def __repr__(self) -> str:
        return f"<WorkQueue maxsize={self._maxsize} qsize={len(self._queue)}>"


def _wake_one(waiters: Any) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
