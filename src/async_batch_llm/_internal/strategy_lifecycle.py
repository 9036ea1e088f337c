"""Prepare each strategy instance once before its first call; clean up every prepared one.

Strategies are keyed by identity (``id``) and held strongly until cleaned up: keying by
identity works for unhashable strategies (e.g. dataclasses), and a strong reference keeps
the id from being reused and keeps a strategy nobody else references from escaping cleanup.

``prepare()`` and ``cleanup()`` run as child tasks under their time bounds (see
`run_in_task`), so one that hangs, even one that ignores cancellation, never holds up the
batch or the other strategies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from async_batch_llm._internal.hooks import run_in_task

__all__ = ["StrategyLifecycle"]

logger = logging.getLogger(__name__)


class StrategyLifecycle:
    """Tracks which strategies are prepared and which still need ``cleanup()``.

    Args:
        prepare_timeout: Seconds allowed for one ``prepare()``; ``None`` for no limit.
        cleanup_timeout: Seconds allowed for one ``cleanup()``; ``None`` for no limit.
        grace: Seconds an overrunning hook gets to honour its cancellation.
    """

    def __init__(
        self,
        *,
        prepare_timeout: float | None = None,
        cleanup_timeout: float | None = None,
        grace: float = 5.0,
    ) -> None:
        self.prepare_timeout = prepare_timeout
        self.cleanup_timeout = cleanup_timeout
        self.grace = grace
        self._prepared: dict[int, Any] = {}
        #: ``id()`` of every prepared instance (read on the hot path, so a plain set view).
        self.prepared_ids = self._prepared.keys()
        self._needs_cleanup: dict[int, Any] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        #: Hooks that ignored their cancellation; cancelled again at cleanup.
        self.orphans: set[asyncio.Task[Any]] = set()

    @property
    def prepared(self) -> list[Any]:
        """The prepared strategy instances, in the order they were prepared."""
        return list(self._prepared.values())

    @property
    def cleaned_up(self) -> bool:
        """True when no prepared strategy is waiting for ``cleanup()``."""
        return not self._needs_cleanup

    async def ensure_prepared(self, strategy: Any) -> None:
        """Run ``strategy.prepare()`` unless it already completed for this instance.

        Concurrent callers for the same instance wait for one ``prepare()``; different
        instances prepare concurrently. If ``prepare()`` raises or overruns, nothing is
        recorded (the next caller tries again) and the error propagates.
        """
        key = id(strategy)
        if key in self._prepared:
            return
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            if key in self._prepared:
                return
            await run_in_task(
                strategy.prepare,
                timeout=self.prepare_timeout,
                grace=self.grace,
                what=f"prepare() of strategy {type(strategy).__name__}",
                orphans=self.orphans,
            )
            self._prepared[key] = strategy
            self._needs_cleanup[key] = strategy
        self._locks.pop(key, None)

    async def cleanup_all(self) -> None:
        """Call ``cleanup()`` once on every prepared strategy not yet cleaned up.

        An ``Exception`` or overrun of one strategy is logged (WARNING, with traceback) and
        the others are still cleaned up. A ``BaseException`` such as ``KeyboardInterrupt``
        propagates and leaves the remaining strategies pending for a later call.
        """
        while self._needs_cleanup:
            key, strategy = next(iter(self._needs_cleanup.items()))
            cleanup = getattr(strategy, "cleanup", None)
            if callable(cleanup):
                try:
                    await run_in_task(
                        cleanup,
                        timeout=self.cleanup_timeout,
                        grace=self.grace,
                        what=f"cleanup() of strategy {type(strategy).__name__}",
                        orphans=self.orphans,
                    )
                except Exception as exc:
                    logger.warning(
                        "cleanup() of strategy %s failed: %s",
                        type(strategy).__name__,
                        exc,
                        exc_info=True,
                    )
            del self._needs_cleanup[key]
        await self.cancel_orphans()

    async def cancel_orphans(self) -> None:
        """Cancel again the hooks that ignored their cancellation; wait briefly for them."""
        orphans = [task for task in self.orphans if not task.done()]
        for task in orphans:
            task.cancel()
        if orphans:
            _, pending = await asyncio.wait(orphans, timeout=self.grace)
            if pending:
                logger.warning(
                    "%d strategy hook(s) ignored cancellation and are still running",
                    len(pending),
                )
