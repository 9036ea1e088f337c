"""`ProviderSimulator`: the aiohttp server that answers as OpenAI, Anthropic and Gemini."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self

try:
    from aiohttp import web
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    _msg = (
        "async_batch_llm.testing.simulator needs aiohttp, which is not installed; "
        "install it with: pip install aiohttp"
    )
    raise ImportError(_msg, name="aiohttp") from exc

from async_batch_llm.testing.simulator._anthropic_batch import AnthropicBatchAPI, anthropic_status
from async_batch_llm.testing.simulator._batch_http import BatchContext, is_gemini
from async_batch_llm.testing.simulator._batches import (
    Answered,
    BatchItem,
    BatchJob,
    BatchJobRecord,
)
from async_batch_llm.testing.simulator._caches import CacheStore, InvalidCacheRequest
from async_batch_llm.testing.simulator._config import SimulatorConfig, is_int
from async_batch_llm.testing.simulator._gemini import error_body
from async_batch_llm.testing.simulator._gemini_batch import GeminiBatchAPI, gemini_state
from async_batch_llm.testing.simulator._http import (
    ANTHROPIC,
    GEMINI,
    OPENAI,
    OPENAI_RESPONSES,
    api_key,
    cache_name,
    guess_wire,
    json_body,
)
from async_batch_llm.testing.simulator._limits import Admission, KeyLimits
from async_batch_llm.testing.simulator._openai_batch import OpenAIBatchAPI, openai_status
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
# Batch inputs go up to 256 MB (Anthropic's create request) and 2 GB (a Gemini input file).
_MAX_BODY = 2_100_000_000
# Where a request keeps when the simulator took it in (`RequestRecord.received`). aiohttp
# 3.13 added typed request keys and warns about plain strings; older versions have none.
_RECEIVED: Any = (
    web.RequestKey("async_batch_llm.received", float)
    if hasattr(web, "RequestKey")
    else "async_batch_llm.received"
)


@dataclass(frozen=True, slots=True)
class _Produced:
    """A reply ready to send: its status, body and headers, and the output tokens it cost."""

    status: int
    body: Json
    headers: Mapping[str, str] = field(default_factory=dict)
    output_tokens: int = 0
    raw: bool = False


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

    The providers' batch APIs (OpenAI files and batches, Anthropic message batches, Gemini
    ``batchGenerateContent`` and files) answer each request of a job with the same reply logic,
    but without the buckets, injected failures or latency; jobs progress with ``clock`` as
    ``batch_latency`` and ``batch_expiry`` say (see `SimulatorConfig`), and `batch_jobs` and
    `expire_batches` let tests watch and steer them.

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
        self._batches = BatchContext(
            config=lambda: self._config,
            stats=self.stats,
            answer=self._answer_batch,
            record=self._record,
        )

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
        """Forget buckets, quota usage, scripted replies and failures, caches and stats.

        Batch jobs and files are forgotten too, as caches are: the simulator starts afresh. To
        zero the counters but keep the jobs (say, between a submitting and a collecting phase
        of a test), call ``sim.stats.reset()`` instead.
        """
        self._keys.clear()
        self._faults.clear()
        self._replies.clear()
        self._caches = CacheStore()
        self._batches.clear()
        self.stats.reset()
        self._sequence = 0

    # -- batch jobs ------------------------------------------------------------------------

    @property
    def batch_jobs(self) -> list[BatchJobRecord]:
        """Every batch job created since the start (or `reset`), oldest first, as of now.

        Each `BatchJobRecord` is a frozen snapshot: its ``state`` is the status the provider's
        API would report now on the simulator's clock (reading it answers the requests that
        are due, as any API read does).
        """
        now = self._config.clock()
        records: list[BatchJobRecord] = []
        for job in self._batches.store:
            self._batches.store.refresh(job, now)
            if job.provider == "openai":
                state = openai_status(job)
            elif job.provider == "anthropic":
                state = anthropic_status(job)
            else:
                state = gemini_state(job)
            records.append(
                BatchJobRecord(
                    provider=job.provider,
                    id=job.id,
                    state=state,
                    request_count=len(job.items),
                    custom_ids=job.custom_ids,
                    created_at=job.created_at,
                    cancelled=job.cancel_at is not None,
                    ended=job.ended,
                    deleted=job.deleted,
                    outcomes=dict(job.counts()),
                )
            )
        return records

    def expire_batches(self) -> int:
        """End every unfinished batch job now as expired; returns how many there were.

        Requests done by now keep their results; the others are expired, as when a job
        reaches ``batch_expiry`` (or the providers' 24 hours).
        """
        return self._batches.store.expire_all(self._config.clock())

    def __repr__(self) -> str:
        where = self._base_url or "stopped"
        return f"ProviderSimulator({where}, {self._config!r})"

    # -- routing ---------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        add = app.router.add_route
        add("POST", "/v1/chat/completions", self._openai)
        add("POST", "/v1/responses", self._openai_responses)
        add("POST", "/v1/messages", self._anthropic)
        self._add_batch_routes(app.router)
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

    def _add_batch_routes(self, router: web.UrlDispatcher) -> None:
        """The batch and file endpoints; OpenAI's ``/v1`` ids never look like Gemini's."""
        openai = OpenAIBatchAPI(self._batches)
        anthropic = AnthropicBatchAPI(self._batches)
        gemini = GeminiBatchAPI(self._batches)
        add = router.add_route
        add("POST", "/v1/messages/batches", anthropic.create)
        add("GET", "/v1/messages/batches", anthropic.listing)
        add("GET", "/v1/messages/batches/{id}", anthropic.get)
        add("DELETE", "/v1/messages/batches/{id}", anthropic.delete)
        add("GET", "/v1/messages/batches/{id}/results", anthropic.results)
        add("POST", "/v1/messages/batches/{id}/cancel", anthropic.cancel)
        add("POST", "/v1/files", openai.file_create)
        add("GET", "/v1/files", _either(openai.file_list, gemini.file_list))
        add("GET", "/v1/files/{id:file-[^/:]+}", openai.file_get)
        add("GET", "/v1/files/{id:file-[^/:]+}/content", openai.file_content)
        add("DELETE", "/v1/files/{id:file-[^/:]+}", openai.file_delete)
        add("POST", "/v1/batches", openai.batch_create)
        add("GET", "/v1/batches", _either(openai.batch_list, gemini.listing))
        add("GET", "/v1/batches/{id:batch_[^/:]+}", openai.batch_get)
        add("POST", "/v1/batches/{id:batch_[^/:]+}/cancel", openai.batch_cancel)
        add(
            "POST",
            r"/{version}/{collection:models|tunedModels}/{model:[^/:]+}:batchGenerateContent",
            gemini.create,
        )
        add("GET", "/{version}/batches", gemini.listing)
        add("GET", "/{version}/batches/{id:[^/:]+}", gemini.get)
        add("POST", "/{version}/batches/{id:[^/:]+}:cancel", gemini.cancel)
        add("DELETE", "/{version}/batches/{id:[^/:]+}", gemini.delete)
        add("POST", "/upload/{version}/files", gemini.upload)
        add("GET", "/{version}/files", gemini.file_list)
        add("GET", "/{version}/files/{id:[^/:]+}:download", gemini.file_download)
        add("GET", "/download/{version}/files/{id:[^/:]+}:download", gemini.file_download)
        add("GET", "/{version}/files/{id:[^/:]+}", gemini.file_get)
        add("DELETE", "/{version}/files/{id:[^/:]+}", gemini.file_delete)

    async def _openai(self, request: web.Request) -> web.Response:
        return await self._generate(request, OPENAI, model="")

    async def _openai_responses(self, request: web.Request) -> web.Response:
        return await self._generate(request, OPENAI_RESPONSES, model="")

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
        request[_RECEIVED] = config.clock()
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

        produced = self._produce(wire, call, cached_tokens)
        if produced.raw:
            await self._wait_latency(request, call)
            return self._finish(
                request, wire.provider, call.model, produced.status, produced.body, produced.headers
            )
        if call.max_output_tokens is None:
            limits.charge_tokens(produced.output_tokens)
        headers = self._limit_headers(wire, limits)
        if wire.request_id_header is not None:
            headers[wire.request_id_header] = f"req_sim{call.sequence:08d}"
        await self._wait_latency(request, call)
        if call.stream:
            self._record(request, wire.provider, call.model, 200)
            return web.Response(
                text=wire.stream_body(call, produced.body),
                headers=headers,
                content_type="text/event-stream",
            )
        return self._finish(request, wire.provider, call.model, 200, produced.body, headers)

    def _produce(self, wire: Wire, call: ProviderRequest, cached_tokens: int) -> _Produced:
        """The reply to an admitted request (scripted, the hook's or the default), counted."""
        reply = self._reply_for(call)
        if isinstance(reply, RawReply):
            return _Produced(reply.status, dict(reply.body), dict(reply.headers), raw=True)
        truncated = False
        if reply is None:
            reply, truncated = default_reply(call)
        output_text = reply if isinstance(reply, str) else json.dumps(reply)
        output_tokens = estimate_tokens(len(output_text))
        self.stats.prompt_tokens += call.prompt_tokens
        self.stats.output_tokens += output_tokens
        usage = Usage(call.prompt_tokens, output_tokens, cached_tokens)
        payload = wire.reply_body(
            call, reply, usage, truncated=truncated, created=self._config.wall_clock()
        )
        return _Produced(200, payload, {}, output_tokens=output_tokens)

    def _answer_batch(self, job: BatchJob, item: BatchItem) -> Answered:
        """Answer one request of a batch job: the online reply, without limits or faults."""
        self._sequence += 1
        wire = job.wire
        call = wire.parse(
            item.body, model=job.model, api_key=job.api_key, path=job.path, sequence=self._sequence
        )
        call = replace(call, stream=False, batch_id=job.id)
        self.stats.batch_requests += 1
        if item.fail:
            return Answered(500, wire.status_body(500), call.sequence)
        produced = self._produce(wire, call, 0)
        return Answered(produced.status, produced.body, call.sequence)

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
        finished = self._config.clock()
        self.stats.record(
            RequestRecord(
                time=finished,
                provider=provider,
                method=request.method,
                path=request.path,
                api_key=api_key(request),
                model=model,
                status=status,
                received=request.get(_RECEIVED, finished),
            )
        )


_Handler = Callable[[web.Request], Awaitable[web.Response]]


def _either(openai: _Handler, gemini: _Handler) -> _Handler:
    """One handler for a ``/v1`` path both OpenAI and Gemini (API version v1) serve."""

    async def handle(request: web.Request) -> web.Response:
        return await (gemini(request) if is_gemini(request) else openai(request))

    return handle
