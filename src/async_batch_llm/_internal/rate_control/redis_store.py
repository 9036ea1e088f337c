"""`RedisBudget`: where processes that share a provider key keep its rate state.

The rate controller's logic stays in each process; the per-scope state it paces by (request
and token GCRA, the pause after a 429, learned and header limits, an exhausted quota) lives
in one Redis hash per scope and changes only through the atomic scripts of
`redis_scripts`. This module owns the connection: made lazily on the running event loop (so
a pickled budget works in Ray, Dask, Spark or Celery workers), bounded in time, and watched,
so that a lost Redis degrades the processes instead of failing their items.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from async_batch_llm._internal.rate_control import redis_scripts
from async_batch_llm._internal.rate_control.scope import RateScope

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "RedisBudget",
    "SharedBudgetUnavailableError",
    "StoreErrorPolicy",
    "StoreUnavailable",
]

logger = logging.getLogger(__name__)

StoreErrorPolicy = Literal["local", "pause", "raise"]
_POLICIES: Final = ("local", "pause", "raise")

#: The scripts by name, registered on each client.
_SCRIPTS: Final = {
    "admit": redis_scripts.ADMIT,
    "succeeded": redis_scripts.SUCCEEDED,
    "rate_limited": redis_scripts.RATE_LIMITED,
    "exhaust": redis_scripts.EXHAUST,
    "set_limit": redis_scripts.SET_LIMIT,
}

#: Event names passed to listeners (the processor turns them into `ProcessingEvent`s).
DEGRADED: Final = "degraded"
RESTORED: Final = "restored"

Listener = Callable[[str, dict[str, Any]], object]


class SharedBudgetUnavailableError(Exception):
    """The shared budget's Redis cannot be reached and ``on_store_error="raise"`` was chosen.

    The attempt that needed it fails with this error (``error_category``
    ``"budget_store_error"``); with ``"local"`` (the default) or ``"pause"`` no item fails
    because of the store.
    """

    error_category = "budget_store_error"


class StoreUnavailable(Exception):
    """Internal: one call to Redis failed or timed out (the budget is now degraded)."""


class RedisBudget:
    """One provider budget shared by every process that names the same Redis and namespace.

    Pass it to the adaptive controller:
    ``AdaptiveRateLimitStrategy(budget=RedisBudget("redis://host:6379/0", namespace="prod"))``.
    Requests and tokens are paced on the Redis server's clock (GCRA), a 429 pauses the scope
    for every process, limits learned or read from headers by one process apply to all, and
    an exhausted quota fails every process fast. Needs redis-py (the ``redis`` extra).

    It pickles as its URL and options and connects on first use, on the event loop that uses
    it, so it can be handed to Ray actors or other worker processes.

    Args:
        url: A redis-py URL: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS,
            ``unix:///path/to/redis.sock``.
        namespace: Processes with the same namespace share budgets; another namespace on the
            same Redis is independent (for example one per environment).
        on_store_error: What to do while Redis cannot be reached: ``"local"`` (default) paces
            each process to its share of the last known limit (the limit divided by the
            processes seen recently); ``"pause"`` admits nothing until Redis is back;
            ``"raise"`` fails the attempt with `SharedBudgetUnavailableError`.
        timeout: Seconds one Redis call (and connecting) may take before the store counts
            as unavailable.
        retry_interval: Seconds between attempts to reach Redis again while it is unavailable.
        max_booking_ahead: How far ahead (seconds) a process may book slots: what a crashed
            process can leave unused, and how long after a pause began calls admitted
            before it may still go.
        quota_seconds: How long an exhausted quota, once reported, fails calls in every
            process before one is tried again.
        idle_ttl: Seconds after which a scope nobody used is removed from Redis.
        expected_processes: The share to fall back to when Redis is lost before any process
            count was seen (default: assume this process is alone).
        key_prefix: Prefix of every key this budget writes.

    Raises:
        ValueError: If an option is out of range or the URL is not a redis URL.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "default",
        on_store_error: StoreErrorPolicy = "local",
        timeout: float = 1.0,
        retry_interval: float = 1.0,
        max_booking_ahead: float = 0.1,
        quota_seconds: float = 3600.0,
        idle_ttl: float = 86400.0,
        expected_processes: int | None = None,
        key_prefix: str = "abl",
    ) -> None:
        given_url: object = url
        schemes = ("redis", "rediss", "unix")
        if not isinstance(given_url, str) or urlsplit(given_url).scheme not in schemes:
            msg = (
                f"url must be a redis URL (redis://host:6379/0, rediss://..., or "
                f"unix:///path/redis.sock), got {url!r}"
            )
            raise ValueError(msg)
        given_namespace: object = namespace
        if not isinstance(given_namespace, str) or not given_namespace:
            msg = f"namespace must be a non-empty string, got {namespace!r}"
            raise ValueError(msg)
        if on_store_error not in _POLICIES:
            msg = (
                f"on_store_error must be one of 'local', 'pause' or 'raise', got {on_store_error!r}"
            )
            raise ValueError(msg)
        for name, value in (
            ("timeout", timeout),
            ("retry_interval", retry_interval),
            ("max_booking_ahead", max_booking_ahead),
            ("quota_seconds", quota_seconds),
            ("idle_ttl", idle_ttl),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                msg = f"{name} must be a number of seconds, got {value!r}"
                raise ValueError(msg)
            if not (value > 0 and math.isfinite(value)):
                msg = f"{name} must be > 0 seconds, got {value!r}"
                raise ValueError(msg)
        given_processes: object = expected_processes
        if given_processes is not None and (
            isinstance(given_processes, bool)
            or not isinstance(given_processes, int)
            or given_processes < 1
        ):
            msg = f"expected_processes must be an int >= 1 or None, got {expected_processes!r}"
            raise ValueError(msg)
        self.url = url
        self.namespace = namespace
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.max_booking_ahead = float(max_booking_ahead)
        self.quota_seconds = float(quota_seconds)
        self.idle_ttl = float(idle_ttl)
        self.expected_processes = expected_processes
        self.key_prefix = key_prefix
        _import_redis()
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}
        #: Identifies this process in the set of live processes of a scope.
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.degraded = False
        self._next_probe = 0.0
        self._keys: dict[RateScope, tuple[str, str]] = {}
        self._listeners: list[weakref.WeakMethod[Any] | Callable[..., object]] = []

    # -- pickling: the URL and options only -------------------------------------------------

    _OPTIONS: Final = (
        "url",
        "namespace",
        "on_store_error",
        "timeout",
        "retry_interval",
        "max_booking_ahead",
        "quota_seconds",
        "idle_ttl",
        "expected_processes",
        "key_prefix",
    )

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._OPTIONS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _import_redis()
        self._reset_runtime()

    def __repr__(self) -> str:
        return (
            f"RedisBudget({_redacted(self.url)!r}, namespace={self.namespace!r}, "
            f"on_store_error={self.on_store_error!r})"
        )

    # -- keys -------------------------------------------------------------------------------

    def keys_for(self, scope: RateScope) -> tuple[str, str]:
        """The state hash and the process set of `scope`, in one Redis Cluster hash slot.

        The scope is fingerprinted: its key id is already a fingerprint of the API key, and
        model names do not belong in key names either.
        """
        keys = self._keys.get(scope)
        if keys is None:
            # Hashed once per scope: admissions ask for the keys on every call.
            digest = hashlib.sha256(f"{self.namespace}\0{scope}".encode()).hexdigest()[:20]
            tag = f"{self.key_prefix}:{{{digest}}}"
            keys = self._keys[scope] = (f"{tag}:state", f"{tag}:procs")
        return keys

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event, payload)`` when the store is lost (``"degraded"``) or back
        (``"restored"``). Bound methods are held weakly."""
        for known in self._listeners:
            target = known() if isinstance(known, weakref.WeakMethod) else known
            if target == listener:
                return
        ref: Any = weakref.WeakMethod(listener) if hasattr(listener, "__self__") else listener
        self._listeners.append(ref)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        kept = []
        for ref in self._listeners:
            target = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if target is not None and target != listener:
                kept.append(ref)
        self._listeners = kept

    def _notify(self, event: str, payload: dict[str, Any]) -> None:
        for ref in list(self._listeners):
            target = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if target is None:
                continue
            try:
                target(event, payload)
            except Exception:
                logger.exception("Shared budget listener %r raised", target)

    # -- state of the connection ------------------------------------------------------------

    def usable(self) -> bool:
        """Whether to ask Redis now: it is healthy, or it is time to try it again.

        While degraded, one caller per `retry_interval` is let through to probe.
        """
        if not self.degraded:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.retry_interval
        return True

    def _failed(self, error: BaseException) -> None:
        self._next_probe = time.monotonic() + self.retry_interval
        if not self.degraded:
            self.degraded = True
            logger.warning(
                "Shared budget at %s unavailable (%s: %s); on_store_error=%r",
                _redacted(self.url),
                type(error).__name__,
                error,
                self.on_store_error,
            )
            self._notify(
                DEGRADED,
                {
                    "store": _redacted(self.url),
                    "namespace": self.namespace,
                    "error": f"{type(error).__name__}: {error}"[:200],
                    "policy": self.on_store_error,
                },
            )

    def _succeeded(self) -> None:
        if self.degraded:
            self.degraded = False
            logger.warning("Shared budget at %s available again", _redacted(self.url))
            self._notify(RESTORED, {"store": _redacted(self.url), "namespace": self.namespace})

    # -- calls ------------------------------------------------------------------------------

    def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return
        import redis.asyncio as aioredis  # checked at construction (`_import_redis`)
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # A client belongs to the loop it was made on; a new loop (a new asyncio.run, a Ray
        # actor's loop) gets its own. The old one is dropped, not closed: its loop is gone.
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # One immediate retry replaces a pooled connection the server closed (a restart);
            # no more: a lost store should degrade at once, not after a retry schedule.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
            client_name=f"async-batch-llm:{self.process_id}",
        )
        self._loop = loop
        self._scripts = {
            name: self._client.register_script(source) for name, source in _SCRIPTS.items()
        }

    async def call(self, script: str, keys: Sequence[str], args: list[Any]) -> Any:
        """Run one script; raise `StoreUnavailable` (and degrade) if Redis does not answer."""
        self._connect()
        runner = self._scripts[script]
        try:
            async with asyncio.timeout(self.timeout):
                result = await runner(keys=keys, args=args)
        except Exception as exc:
            if _is_script_bug(exc):
                raise
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from exc
        self._succeeded()
        return result

    async def aclose(self) -> None:
        """Close the connection of the running loop (a later call connects again)."""
        client, self._client = self._client, None
        self._scripts = {}
        if client is not None and self._loop is asyncio.get_running_loop():
            try:
                await client.aclose()
            except Exception:
                logger.debug("Closing the shared budget's connection failed", exc_info=True)
        self._loop = None


def _import_redis() -> None:
    """Import redis-py now (a second or so), not at the first admission of a batch."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = (
            "RedisBudget needs redis-py: pip install 'redis>=5' (or this project's redis "
            "extra, pip install '.[redis]' in a checkout)"
        )
        raise ImportError(msg) from exc


def _is_script_bug(error: BaseException) -> bool:
    """A Lua error is a bug of ours, not an unavailable store: let it surface."""
    try:
        from redis.exceptions import ResponseError
    except ImportError:  # pragma: no cover
        return False
    text = str(error)
    return isinstance(error, ResponseError) and (
        "user_script" in text or "Error running script" in text or "ERR Error" in text
    )


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
