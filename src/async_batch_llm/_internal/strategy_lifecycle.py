"""Prepare each strategy instance once before its first call; clean up every prepared one.

Strategies are keyed by identity (``id``) and held strongly until cleaned up: keying by
identity works for unhashable strategies (e.g. dataclasses), and a strong reference keeps
the id from being reused and keeps a strategy nobody else references from escaping cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["StrategyLifecycle"]

logger = logging.getLogger(__name__)


class StrategyLifecycle:
    """Tracks which strategies are prepared and which still need ``cleanup()``."""

    def __init__(self) -> None:
        self._prepared: dict[int, Any] = {}
        #: ``id()`` of every prepared instance (read on the hot path, so a plain set view).
        self.prepared_ids = self._prepared.keys()
        self._needs_cleanup: dict[int, Any] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def is_prepared(self, strategy: Any) -> bool:
        """Whether ``prepare()`` has completed for this instance."""
        return id(strategy) in self._prepared

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
        instances prepare concurrently. If ``prepare()`` raises, nothing is recorded (the
        next caller tries again) and the exception propagates.
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
            await strategy.prepare()
            self._prepared[key] = strategy
            self._needs_cleanup[key] = strategy
        self._locks.pop(key, None)

    async def cleanup_all(self) -> None:
        """Call ``cleanup()`` once on every prepared strategy not yet cleaned up.

        An ``Exception`` from one strategy is logged (WARNING, with traceback) and the
        others are still cleaned up. A ``BaseException`` such as ``KeyboardInterrupt``
        propagates and leaves the remaining strategies pending for a later call.
        """
        while self._needs_cleanup:
            key, strategy = next(iter(self._needs_cleanup.items()))
            cleanup = getattr(strategy, "cleanup", None)
            if callable(cleanup):
                try:
                    await cleanup()
                except Exception as exc:
                    logger.warning(
                        "cleanup() of strategy %s failed: %s",
                        type(strategy).__name__,
                        exc,
                        exc_info=True,
                    )
            del self._needs_cleanup[key]
