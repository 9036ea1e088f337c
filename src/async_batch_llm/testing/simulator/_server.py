"""`ProviderSimulator`: the aiohttp server that answers as OpenAI, Anthropic and Gemini."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType
from typing import Literal, Self

try:
    from aiohttp import web
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    _msg = (
        "async_batch_llm.testing.simulator needs aiohttp, which is not installed; "
        "install it with: pip install aiohttp"
    )
    raise ImportError(_msg, name="aiohttp") from exc

from async_batch_llm.testing.simulator._caches import CacheStore, InvalidCacheRequest
from async_batch_llm.testing.simulator._config import SimulatorConfig, is_int
from async_batch_llm.testing.simulator._gemini import error_body
from async_batch_llm.testing.simulator._http import (
    ANTHROPIC,
    GEMINI,
    OPENAI,
    api_key,
    cache_name,
    guess_wire,
    json_body,
)
from async_batch_llm.testing.simulator._limits import Admission, KeyLimits
from async_batch_llm.testing.simulator._request import (
    Provider,
    ProviderRequest,
    RawReply,
    Reply,
    ReplyHook,
)
from async_batch_llm.testing.simulator._script import Fault, FaultQueue, ReplyQueue, default_reply
from async_batch_llm.testing.simulator._stats import RequestRecord, SimulatorStats
from async_batch_llm.testing.simulator._text import estimate_tokens
from async_batch_llm.testing.simulator._wire import Json, Usage, Wire

__all__ = ["ProviderSimulator"]

logger = logging.getLogger(__name__)

_CACHE_MISSING = "CachedContent not found (or permission denied)"
# In-flight handlers get this long to finish when the simulator stops, then they are cancelled.
_SHUTDOWN_TIMEOUT = 0.5


class _Keep(enum.Enum):
    KEEP = enum.auto()


class ProviderSimulator:
    """A local HTTP server speaking OpenAI, Anthropic and Gemini for the real SDK clients.

    Use it as an async context manager; it binds ``host`` (127.0.0.1) on ``port`` (0 picks a
    free one) and serves in the running event loop:

    ```python
    async with ProviderSimulator(SimulatorConfig(rpm=60)) as sim:
        client = AsyncOpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0)
    ```

    Each API key (per provider, and per model with ``limits_per_model``) gets its own
    continuously refilling requests and tokens buckets (see `SimulatorConfig`). A generation
    request goes through, in order: scripted failures (`fail_next`), random failures
    (``error_rate``), the hard quota (``daily_request_quota``), the buckets, then the reply:
    a scripted one (`script`), the ``reply`` hook's, or the default (``"Echo: <last user
    text>"``, or JSON valid for the requested schema or forced tool). Only successful replies
    wait for ``latency``. Streaming requests (``"stream": true``, ``:streamGenerateContent``)
    get the same reply as server-sent events.

    Args:
        config: Limits, latency, failures and clocks; defaults to no limits and no latency.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        reply: Hook called with each admitted `ProviderRequest`; returning ``None`` keeps the
            default reply.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: ReplyHook | None = None,
    ) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._host = host
        self._port = port
        self.reply_hook: ReplyHook | None = reply
        self.stats = SimulatorStats(self._config.recent_requests)
        self._keys: dict[tuple[Provider, str, str], KeyLimits] = {}
        self._caches = CacheStore()
        self._faults = FaultQueue()
        self._replies = ReplyQueue()
        seed = self._config.seed
        self._error_rng = random.Random(None if seed is None else f"errors:{seed}")
        self._latency_rng = random.Random(None if seed is None else f"latency:{seed}")
        self._sequence = 0
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and start serving; `base_url` is valid afterwards."""
        if self._runner is not None:
            msg = f"ProviderSimulator is already running at {self._base_url}; stop it first"
            raise RuntimeError(msg)
        runner = web.AppRunner(
            self._build_app(),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._base_url = f"http://{host}:{port}"
        logger.debug("provider simulator listening on %s", self._base_url)

    async def stop(self) -> None:
        """Stop serving and close the port (in-flight replies are cut short)."""
        runner, self._runner = self._runner, None
        self._base_url = None
        if runner is not None:
            await runner.cleanup()

    # -- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._base_url is None:
            msg = "ProviderSimulator is not running; use 'async with ProviderSimulator() as sim'"
            raise RuntimeError(msg)
        return self._base_url

    @property
    def gemini_base_url(self) -> str:
        """For ``google.genai.Client(http_options=HttpOptions(base_url=...))``."""
        return self.base_url

    @property
    def openai_base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=...)`` (ends in ``/v1``)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For ``AsyncAnthropic(base_url=...)``."""
        return self.base_url

    # -- control ---------------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The current settings (reflects `set_limits`)."""
        return self._config

    def set_limits(
        self,
        *,
        rpm: float | Literal[_Keep.KEEP] | None = _Keep.KEEP,
        tpm: float | Literal[_Keep.KEEP] | None = _Keep.KEEP,
    ) -> None:
        """Change the per-key limits while running; omitted ones stay, ``None`` removes one.

        Existing buckets keep what they hold (capped at the new limit), so halving a limit
        takes effect at once and raising one refills at the new rate.
        """
        self._config = replace(
            self._config,
            rpm=self._config.rpm if rpm is _Keep.KEEP else rpm,
            tpm=self._config.tpm if tpm is _Keep.KEEP else tpm,
        )
        now = self._config.clock()
        for limits in self._keys.values():
            limits.resize(self._config.rpm, self._config.tpm, self._config.window_seconds, now)

    def script(self, *replies: Reply, provider: Provider | None = None) -> None:
        """Answer the next admitted generation requests with ``replies``, one each, in order.

        A reply is text (sent as the message, or as raw tool arguments when a tool is forced),
        a JSON object, or a `RawReply`. ``provider`` limits them to one wire format.
        """
        for reply in replies:
            self._replies.add(reply, provider)

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        provider: Provider | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Fail the next ``count`` generation requests with ``status`` in the provider's format.

        They fail before reaching the buckets, so they cost no quota. A 429 carries
        ``retry_after`` as the provider's retry hint when given.
        """
        if not is_int(count) or count < 1:
            msg = f"count must be a positive number of requests, got {count!r}"
            raise ValueError(msg)
        if not is_int(status) or not 400 <= status <= 599:
            msg = f"status must be an HTTP error status (400-599), got {status!r}"
            raise ValueError(msg)
        if retry_after is not None and not retry_after >= 0:
            msg = f"retry_after must be seconds >= 0 or None, got {retry_after!r}"
            raise ValueError(msg)
        self._faults.add(
            Fault(status=status, provider=provider, retry_after=retry_after, remaining=count)
        )

    def reset(self) -> None:
        """Forget buckets, quota usage, scripted replies and failures, caches and stats."""
        self._keys.clear()
        self._faults.clear()
        self._replies.clear()
        self._caches = CacheStore()
        self.stats.reset()
        self._sequence = 0

    def __repr__(self) -> str:
        where = self._base_url or "stopped"
        return f"ProviderSimulator({where}, {self._config!r})"

    # -- routing ---------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        add = app.router.add_route
        add("POST", "/v1/chat/completions", self._openai)
        add("POST", "/v1/messages", self._anthropic)
        add(
            "POST",
            r"/{version}/{collection:models|tunedModels}/{model:[^/:]+}"
            r":{method:generateContent|streamGenerateContent}",
            self._gemini_generate,
        )
        add("POST", "/{version}/cachedContents", self._cache_create)
        add("GET", "/{version}/cachedContents", self._cache_list)
        add("GET", "/{version}/cachedContents/{id}", self._cache_get)
        add("PATCH", "/{version}/cachedContents/{id}", self._cache_update)
        add("DELETE", "/{version}/cachedContents/{id}", self._cache_delete)
        add("*", "/{tail:.*}", self._not_found)
        return app

    async def _openai(self, request: web.Request) -> web.Response:
        return await self._generate(request, OPENAI, model="")

    async def _anthropic(self, request: web.Request) -> web.Response:
        return await self._generate(request, ANTHROPIC, model="")

    async def _gemini_generate(self, request: web.Request) -> web.Response:
        return await self._generate(request, GEMINI, model=request.match_info["model"])

    async def _not_found(self, request: web.Request) -> web.Response:
        wire = guess_wire(request)
        body = wire.status_body(404, f"Invalid URL ({request.method} {request.path})")
        return self._finish(request, wire.provider, None, 404, body)

    # -- generation ------------------------------------------------------------------------

    async def _generate(self, request: web.Request, wire: Wire, *, model: str) -> web.Response:
        config = self._config
        body = await json_body(request)
        if body is None:
            error = wire.status_body(400, "Invalid JSON payload received.")
            return self._finish(request, wire.provider, model or None, 400, error)
        self._sequence += 1
        call = wire.parse(
            body, model=model, api_key=api_key(request), path=request.path, sequence=self._sequence
        )

        fault = self._faults.take(wire.provider)
        if fault is None and config.error_rate and self._error_rng.random() < config.error_rate:
            statuses = config.error_statuses
            fault = Fault(status=statuses[self._error_rng.randrange(len(statuses))])
        if fault is not None:
            self.stats.injected_errors += 1
            return self._fault_response(request, wire, call, fault)

        cached_tokens = 0
        if call.cached_content is not None:
            found = self._caches.tokens(cache_name(call.cached_content), config.wall_clock())
            if found is None:
                return self._finish(
                    request, "gemini", call.model, 403, error_body(403, _CACHE_MISSING)
                )
            cached_tokens = found
            call = replace(call, prompt_tokens=call.prompt_tokens + found)

        now = config.clock()
        limits = self._limits(call, now)
        quota = config.daily_request_quota
        if quota is not None and limits.served >= quota:
            self.stats.quota_exhausted += 1
            status, error = wire.quota_body(call, quota)
            return self._finish(request, wire.provider, call.model, status, error)

        reserved = call.prompt_tokens + (call.max_output_tokens or 0)
        admission = limits.admit(reserved, now)
        if not admission.admitted:
            self.stats.rate_limited += 1
            return self._rejection(request, wire, call, limits, admission, reserved)
        limits.served += 1

        reply = self._reply_for(call)
        if isinstance(reply, RawReply):
            await self._wait_latency(request, call)
            return self._finish(
                request, wire.provider, call.model, reply.status, dict(reply.body), reply.headers
            )
        truncated = False
        if reply is None:
            reply, truncated = default_reply(call)
        output_text = reply if isinstance(reply, str) else json.dumps(reply)
        output_tokens = estimate_tokens(len(output_text))
        if call.max_output_tokens is None:
            limits.charge_tokens(output_tokens)
        self.stats.prompt_tokens += call.prompt_tokens
        self.stats.output_tokens += output_tokens
        usage = Usage(call.prompt_tokens, output_tokens, cached_tokens)
        payload = wire.reply_body(
            call, reply, usage, truncated=truncated, created=config.wall_clock()
        )
        headers = self._limit_headers(wire, limits)
        if wire.request_id_header is not None:
            headers[wire.request_id_header] = f"req_sim{call.sequence:08d}"
        await self._wait_latency(request, call)
        if call.stream:
            self._record(request, wire.provider, call.model, 200)
            return web.Response(
                text=wire.stream_body(call, payload),
                headers=headers,
                content_type="text/event-stream",
            )
        return self._finish(request, wire.provider, call.model, 200, payload, headers)

    def _reply_for(self, call: ProviderRequest) -> Reply | None:
        scripted = self._replies.take(call.provider)
        if scripted is not None:
            return scripted
        hook = self.reply_hook
        return hook(call) if hook is not None else None

    def _limits(self, call: ProviderRequest, now: float) -> KeyLimits:
        config = self._config
        scope = (call.provider, call.api_key, call.model if config.limits_per_model else "")
        limits = self._keys.get(scope)
        if limits is None:
            limits = KeyLimits(config.rpm, config.tpm, config.window_seconds, now)
            self._keys[scope] = limits
        return limits

    def _limit_headers(self, wire: Wire, limits: KeyLimits) -> dict[str, str]:
        if not self._config.send_rate_limit_headers:
            return {}
        requests = limits.requests.state() if limits.requests is not None else None
        tokens = limits.tokens.state() if limits.tokens is not None else None
        if requests is None and tokens is None:
            return {}
        return wire.limit_headers(requests, tokens, self._config.wall_clock())

    def _rejection(
        self,
        request: web.Request,
        wire: Wire,
        call: ProviderRequest,
        limits: KeyLimits,
        admission: Admission,
        reserved: int,
    ) -> web.Response:
        headers = self._limit_headers(wire, limits)
        if admission.too_large:
            capacity = limits.tokens.state().limit if limits.tokens is not None else 0
            body = wire.too_large_body(call, capacity, reserved)
            return self._finish(request, wire.provider, call.model, 429, body, headers)
        blocked_by = admission.blocked_by or "requests"
        bucket = limits.requests if blocked_by == "requests" else limits.tokens
        state = bucket.state() if bucket is not None else None
        requested = 1 if blocked_by == "requests" else reserved
        hint = admission.retry_after if self._config.send_retry_after else None
        body = wire.rate_limited_body(call, blocked_by, state, requested, hint)
        if hint is not None:
            headers.update(wire.retry_headers(hint))
        return self._finish(request, wire.provider, call.model, 429, body, headers)

    def _fault_response(
        self, request: web.Request, wire: Wire, call: ProviderRequest, fault: Fault
    ) -> web.Response:
        headers: dict[str, str] = {}
        if fault.status == 429:
            hint = fault.retry_after if self._config.send_retry_after else None
            body = wire.rate_limited_body(call, "requests", None, 1, hint)
            if hint is not None:
                headers.update(wire.retry_headers(hint))
        else:
            body = wire.status_body(fault.status)
        return self._finish(request, wire.provider, call.model, fault.status, body, headers)

    async def _wait_latency(self, request: web.Request, call: ProviderRequest) -> None:
        latency = self._config.latency
        if callable(latency):
            delay = float(latency())
        elif isinstance(latency, tuple):
            delay = self._latency_rng.uniform(latency[0], latency[1])
        else:
            delay = latency
        if delay <= 0:
            return
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            # The client went away (or the server is stopping): count it as nginx's 499.
            self._record(request, call.provider, call.model, 499)
            raise

    # -- Gemini cachedContents -------------------------------------------------------------

    async def _cache_create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if body is None:
            return self._finish(
                request, "gemini", None, 400, error_body(400, "Invalid JSON payload.")
            )
        try:
            created = self._caches.create(body, self._config.wall_clock())
        except InvalidCacheRequest as exc:
            return self._finish(request, "gemini", None, 400, error_body(400, str(exc)))
        return self._finish(request, "gemini", created["model"], 200, created)

    async def _cache_list(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            page = self._caches.page(
                query.get("pageSize"), query.get("pageToken"), self._config.wall_clock()
            )
        except InvalidCacheRequest as exc:
            return self._finish(request, "gemini", None, 400, error_body(400, str(exc)))
        return self._finish(request, "gemini", None, 200, page)

    async def _cache_get(self, request: web.Request) -> web.Response:
        found = self._caches.get(cache_name(request.match_info["id"]), self._config.wall_clock())
        if found is None:
            return self._finish(request, "gemini", None, 403, error_body(403, _CACHE_MISSING))
        return self._finish(request, "gemini", found["model"], 200, found)

    async def _cache_update(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if body is None:
            return self._finish(
                request, "gemini", None, 400, error_body(400, "Invalid JSON payload.")
            )
        name = cache_name(request.match_info["id"])
        try:
            updated = self._caches.update(name, body, self._config.wall_clock())
        except InvalidCacheRequest as exc:
            return self._finish(request, "gemini", None, 400, error_body(400, str(exc)))
        if updated is None:
            return self._finish(request, "gemini", None, 403, error_body(403, _CACHE_MISSING))
        return self._finish(request, "gemini", updated["model"], 200, updated)

    async def _cache_delete(self, request: web.Request) -> web.Response:
        name = cache_name(request.match_info["id"])
        if not self._caches.delete(name, self._config.wall_clock()):
            return self._finish(request, "gemini", None, 403, error_body(403, _CACHE_MISSING))
        return self._finish(request, "gemini", None, 200, {})

    # -- responses -------------------------------------------------------------------------

    def _finish(
        self,
        request: web.Request,
        provider: Provider,
        model: str | None,
        status: int,
        body: Json,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self._record(request, provider, model, status)
        return web.json_response(body, status=status, headers=headers)

    def _record(
        self, request: web.Request, provider: Provider, model: str | None, status: int
    ) -> None:
        self.stats.record(
            RequestRecord(
                time=self._config.clock(),
                provider=provider,
                method=request.method,
                path=request.path,
                api_key=api_key(request),
                model=model,
                status=status,
            )
        )
