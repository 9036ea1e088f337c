"""Google Gemini models for `GeminiStrategy` (needs ``google-genai``).

* `GeminiModel` sends each prompt to ``client.aio.models.generate_content``.
* `GeminiCachedModel` does the same against a provider-side context cache (a long shared
  prefix such as a document), which it finds by tags or creates in ``prepare()`` and renews
  before it expires.
* `gemini_client` builds a ``google.genai.Client`` suited to both: requests go through
  httpx2, and the client makes one attempt per request.

SDK retries: google-genai can retry failed requests itself (``HttpOptions.retry_options``,
and a reconnect after a connection error when it runs on aiohttp). The processor already
retries, backs off and coordinates rate-limit cooldowns, and an SDK retrying inside one
attempt hides 429s from that coordination and multiplies the attempts. So by default every
request these models send through a ``google.genai.Client`` carries per-request HTTP options
that allow exactly one attempt (``retry_options.attempts=1``), whatever the client was built
with. Pass ``sdk_retries=True`` to leave the client's own retry configuration in charge, e.g.
``genai.Client(http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=3)))``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import numbers
import time
import warnings
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from async_batch_llm._internal.usage import FAILED_USAGE_ATTR
from async_batch_llm._internal.values import LLMResponse
from async_batch_llm.checkpoint._identity import fingerprint, stable_value

if TYPE_CHECKING:
    import httpx2
    from google.genai import Client
    from google.genai.types import Content

__all__ = ["GeminiModel", "GeminiCachedModel", "gemini_client"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    #: The ``google.genai`` module, or ``None`` when google-genai is not installed.
    genai: ModuleType | None


def __getattr__(name: str) -> Any:
    # ``genai`` and ``Content`` are imported on first use: google-genai takes about a
    # second to import, and most users of this package never touch Gemini.
    if name == "genai":
        return _load_genai()
    if name == "Content":
        module = _load_genai()
        content: Any = Any if module is None else module.types.Content
        globals()["Content"] = content
        return content
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def _load_genai() -> ModuleType | None:
    """``google.genai`` (imported now if need be), or ``None`` without google-genai.

    Once set, the module-level ``genai`` is what counts: tests patch it to ``None``.
    """
    if "genai" in globals():
        module: ModuleType | None = globals()["genai"]
        return module
    try:
        from google import genai as imported
    except ImportError:  # google-genai is an optional extra
        imported = None  # type: ignore[assignment]
    globals()["genai"] = imported
    return imported


#: Marks a cache ``display_name`` that encodes the cache's tags as JSON.
_TAG_DISPLAY_NAME_PREFIX: Final = "abl-tags:"

_GENAI_REQUIRED = "google-genai is required for {name}: install it with `pip install google-genai`"

_EMPTY_RESPONSE = "Empty response from model"

# Below these many seconds a cache barely outlives its creation request; 0.7.2 warns the same way.
_MIN_RECOMMENDED_SECONDS: Final = 60
_SHORT_TTL_WARNING_FLOOR: Final = 10


def _encode_tags_to_display_name(tags: dict[str, str]) -> str:
    """Encode ``tags`` as a cache display name; the same tags always give the same name."""
    return _TAG_DISPLAY_NAME_PREFIX + json.dumps(tags, sort_keys=True, separators=(",", ":"))


def _decode_tags_from_display_name(display_name: str | None) -> dict[str, str] | None:
    """The tags encoded in ``display_name``, or ``None`` when it holds no tags."""
    if not display_name or not display_name.startswith(_TAG_DISPLAY_NAME_PREFIX):
        return None
    try:
        decoded = json.loads(display_name[len(_TAG_DISPLAY_NAME_PREFIX) :])
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _count(value: object) -> int:
    # Only real integers count: test doubles such as ``unittest.mock.Mock`` invent any
    # attribute asked for.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return 0
    return int(value)


def _extract_tokens(response: Any) -> tuple[int, int, int, int]:
    """``(input, output, total, cached_input)`` token counts of a ``generate_content`` response.

    Missing or empty counts are 0; a response without ``usage_metadata`` gives all zeros.
    """
    usage_metadata = getattr(response, "usage_metadata", None)
    if usage_metadata is None:
        logger.debug("Gemini response has no usage_metadata; counting 0 tokens")
        return (0, 0, 0, 0)
    return (
        _count(getattr(usage_metadata, "prompt_token_count", 0)),
        _count(getattr(usage_metadata, "candidates_token_count", 0)),
        _count(getattr(usage_metadata, "total_token_count", 0)),
        _count(getattr(usage_metadata, "cached_content_token_count", 0)),
    )


def _extract_metadata(response: Any) -> dict[str, Any] | None:
    """Safety ratings and finish reason of the first candidate, or ``None`` when it has neither.

    Best effort: a malformed response is logged at WARNING and whatever was read before the
    failure is returned.
    """
    metadata: dict[str, Any] = {}
    try:
        candidates = response.candidates
        if candidates:
            candidate = candidates[0]
            safety_ratings = getattr(candidate, "safety_ratings", None)
            if safety_ratings:
                ratings: dict[str, str] = {}
                for rating in safety_ratings:
                    category = getattr(rating, "category", "UNKNOWN")
                    probability = getattr(rating, "probability", "UNKNOWN")
                    ratings[str(category)] = str(probability)
                metadata["safety_ratings"] = ratings
            finish_reason = getattr(candidate, "finish_reason", None)
            if finish_reason:
                metadata["finish_reason"] = str(finish_reason)
    except Exception:
        logger.warning("Could not read metadata from a Gemini response", exc_info=True)
    return metadata or None


def _require_genai(name: str) -> ModuleType:
    # Reads the module-level name at call time, so that patching ``models.genai`` to ``None``
    # makes every model behave as without google-genai.
    module = _load_genai()
    if module is None:
        raise ImportError(_GENAI_REQUIRED.format(name=name))
    return module


def _is_genai_client(client: object) -> bool:
    client_class = getattr(_load_genai(), "Client", None)
    return isinstance(client_class, type) and isinstance(client, client_class)


def gemini_client(
    api_key: str | None = None,
    *,
    base_url: str | None = None,
    http_client: httpx2.AsyncClient | None = None,
) -> Client:
    """A ``google.genai.Client`` for the Gemini Developer API, set up for batch processing.

    Compared with ``genai.Client(api_key=...)``:

    * async requests go through httpx2 even when aiohttp is installed (google-genai otherwise
      switches to aiohttp, whose session subclass warns on current aiohttp releases and which
      adds a hidden reconnect retry);
    * the client's own retries are off (``HttpRetryOptions(attempts=1)``), so a 429 or 5xx
      reaches the processor after one request, for any caller of the client.

    Close it with ``await client.aio.aclose()`` (an ``http_client`` you pass stays yours to
    close). The HTTP client it creates ignores proxy environment variables (``HTTPS_PROXY``
    and the like); behind a proxy, pass ``http_client=httpx2.AsyncClient()`` (``httpx`` with
    google-genai 2), which reads them.

    Args:
        api_key: The Gemini API key; ``None`` lets google-genai read ``GOOGLE_API_KEY`` or
            ``GEMINI_API_KEY``.
        base_url: Send requests here instead of Google's endpoint, e.g. a
            `ProviderSimulator`'s
            ``gemini_base_url``.
        http_client: The ``httpx2.AsyncClient`` to send async requests with; by default the
            client creates (and closes) its own.

    Raises:
        ImportError: google-genai is not installed.
    """
    module = _require_genai("gemini_client")
    types = module.types
    options: dict[str, Any] = {"retry_options": types.HttpRetryOptions(attempts=1)}
    if base_url is not None:
        options["base_url"] = base_url
    if http_client is not None:
        options["httpx_async_client"] = http_client
    else:
        # google-genai picks aiohttp whenever it is importable, unless it is handed an httpx
        # client or transport; a transport keeps the client (and closing it) the SDK's own.
        options["async_client_args"] = {"transport": _genai_httpx(module).AsyncHTTPTransport()}
    client: Client = module.Client(api_key=api_key, http_options=types.HttpOptions(**options))
    return client


def _genai_httpx(module: ModuleType) -> ModuleType:
    """The httpx package the google-genai `module` sends requests with: ``httpx2`` from
    google-genai 3 on, ``httpx`` before (a transport or client of the other one fails deep
    inside the SDK). google-genai 2 is what pydantic-ai may install without the
    ``gemini`` extra."""
    version = str(getattr(module, "__version__", "3"))
    major = version.split(".", 1)[0]
    return importlib.import_module("httpx" if major.isdigit() and int(major) < 3 else "httpx2")


def _single_attempt_http_options() -> dict[str, Any]:
    # Per-request retry options replace the client's and also turn off google-genai's implicit
    # reconnect retry on aiohttp. A new dict per request: the SDK may normalise it in place.
    return {"retry_options": {"attempts": 1}}


async def _generate(
    client: Any, model: str, contents: Any, call_config: dict[str, Any]
) -> LLMResponse:
    """One ``generate_content`` call turned into an `LLMResponse`."""
    response = await client.aio.models.generate_content(
        model=model, contents=contents, config=call_config
    )
    return response_of(model, response)


def response_of(model: str, response: Any) -> LLMResponse:
    """A ``GenerateContentResponse`` of `model` as an `LLMResponse` (online or from a batch).

    Raises:
        ValueError: The response has no text (with the finish reason and safety ratings);
            it carries the tokens that were billed.
    """
    input_tokens, output_tokens, total_tokens, cached_tokens = _extract_tokens(response)
    metadata = _extract_metadata(response)
    text = response.text
    if text is None:
        message = f"{_EMPTY_RESPONSE} {model!r}"
        if metadata:
            if "finish_reason" in metadata:
                message += f" (finish_reason: {metadata['finish_reason']})"
            if "safety_ratings" in metadata:
                message += f"; safety ratings: {metadata['safety_ratings']}"
        error = ValueError(message)
        # The prompt was still billed: record it the way failed strategy calls do.
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": total_tokens,
        }
        if cached_tokens:
            usage["cached_input_tokens"] = cached_tokens
        error.__dict__[FAILED_USAGE_ATTR] = usage
        raise error
    return LLMResponse(
        text,
        input_tokens,
        output_tokens,
        total_tokens,
        cached_input_tokens=cached_tokens,
        metadata=metadata,
        raw=response,
    )


class GeminiModel:
    """A Gemini model called through a ``google.genai.Client`` (implements ``LLMModel``).

    Args:
        model: The model name, e.g. ``"gemini-2.5-flash"``.
        client: The google-genai client; ``client.aio`` is used.
        safety_settings: Sent as ``safety_settings`` with every request.
        system_instruction: The default system instruction; a per-call one replaces it.
        sdk_retries: Let the client's own retry configuration apply. By default each request
            is sent once and the processor owns retrying (see the module docstring).

    Raises:
        ImportError: google-genai is not installed.
    """

    def __init__(
        self,
        model: str,
        client: Client,
        *,
        safety_settings: list[dict[str, Any]] | None = None,
        system_instruction: str | None = None,
        sdk_retries: bool = False,
    ) -> None:
        _require_genai("GeminiModel")
        self._model = model
        # Typed loosely: any object with google-genai's ``client.aio`` surface works.
        self._client: Any = client
        self._safety_settings = safety_settings
        self._default_system_instruction = system_instruction
        self._single_attempt = not sdk_retries and _is_genai_client(client)

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        """Generate a response for ``prompt``.

        ``config`` entries are added to the request config last, so they override
        ``temperature``, the system instruction and the safety settings.

        Raises:
            ValueError: The response has no text (``Empty response from model``), e.g. when
                it was blocked; the message gives the finish reason and safety ratings.
        """
        call_config: dict[str, Any] = {"temperature": temperature}
        instruction = system_instruction or self._default_system_instruction
        if instruction is not None:
            call_config["system_instruction"] = instruction
        if self._safety_settings:
            call_config["safety_settings"] = self._safety_settings
        if self._single_attempt:
            call_config["http_options"] = _single_attempt_http_options()
        if config:
            call_config.update(config)
        return await _generate(self._client, self._model, prompt, call_config)

    def batch_request_config(self, *, temperature: float) -> dict[str, Any]:
        """The request config an online call would send, for a batch request (which takes
        no HTTP options)."""
        call_config: dict[str, Any] = {"temperature": temperature}
        if self._default_system_instruction is not None:
            call_config["system_instruction"] = self._default_system_instruction
        if self._safety_settings:
            call_config["safety_settings"] = self._safety_settings
        return call_config

    def checkpoint_identity(self) -> dict[str, Any]:
        """Provider, model, default system instruction and safety settings (for checkpoints)."""
        return {
            "provider": "gemini",
            "model": self._model,
            "system_instruction": stable_value(self._default_system_instruction),
            "safety_settings": stable_value(self._safety_settings),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model!r})"


class GeminiCachedModel:
    """A Gemini model whose requests reuse a provider-side context cache (``ManagedLLMModel``).

    ``prepare()`` reuses a live cache of the same model (and, when ``cache_tags`` are given,
    with the same tags) or creates one holding ``cached_content``. Every ``generate`` call
    refers to that cache. With ``auto_renew``, a cache within
    ``cache_renewal_buffer_seconds`` of expiry is replaced first, once, however many calls
    are in flight. ``cleanup()`` keeps the cache for reuse until its TTL ends;
    `delete_cache` removes it.

    Args:
        model: The model name, e.g. ``"gemini-2.5-flash"``.
        client: The google-genai client; ``client.aio`` is used.
        cached_content: The contents to cache (``google.genai.types.Content`` objects).
        cache_ttl_seconds: Lifetime of a created cache.
        cache_renewal_buffer_seconds: Renew (or skip a listed cache) when it has this many
            seconds or fewer left. Must be less than ``cache_ttl_seconds``.
        auto_renew: Renew an expiring cache (or find/create a missing one) inside
            ``generate``; without it ``generate`` needs ``prepare()`` first.
        cache_tags: Tags stored in the cache's display name; only caches with these tags
            (others allowed) are reused.
        safety_settings: Sent as ``safety_settings`` with every request.
        sdk_retries: Let the client's own retry configuration apply. By default each request
            is sent once and the processor owns retrying (see the module docstring).

    Raises:
        ImportError: google-genai is not installed.
        ValueError: ``cache_renewal_buffer_seconds >= cache_ttl_seconds``.

    Warns ``UserWarning`` when ``cache_ttl_seconds`` (from 10) or
    ``cache_renewal_buffer_seconds`` is below 60 seconds.
    """

    def __init__(
        self,
        model: str,
        client: Client,
        cached_content: list[Content],
        *,
        cache_ttl_seconds: int = 3600,
        cache_renewal_buffer_seconds: int = 300,
        auto_renew: bool = True,
        cache_tags: dict[str, str] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        sdk_retries: bool = False,
    ) -> None:
        _require_genai("GeminiCachedModel")
        if cache_renewal_buffer_seconds >= cache_ttl_seconds:
            msg = (
                f"cache_renewal_buffer_seconds ({cache_renewal_buffer_seconds}) must be less "
                f"than cache_ttl_seconds ({cache_ttl_seconds}); lower the buffer or raise the TTL"
            )
            raise ValueError(msg)
        if _SHORT_TTL_WARNING_FLOOR <= cache_ttl_seconds < _MIN_RECOMMENDED_SECONDS:
            warnings.warn(
                f"cache_ttl_seconds={cache_ttl_seconds} is under 60 seconds: the cache will be "
                "renewed almost constantly; use a TTL of at least 60 seconds",
                UserWarning,
                stacklevel=2,
            )
        if cache_renewal_buffer_seconds < _MIN_RECOMMENDED_SECONDS:
            warnings.warn(
                f"cache_renewal_buffer_seconds={cache_renewal_buffer_seconds} is under 60 "
                "seconds: requests in flight may outlive the cache; use at least 60 seconds",
                UserWarning,
                stacklevel=2,
            )
        self._model = model
        self._client: Any = client
        self._cached_content = cached_content
        self._cache_ttl_seconds = cache_ttl_seconds
        self._cache_renewal_buffer_seconds = cache_renewal_buffer_seconds
        self._auto_renew = auto_renew
        self._cache_tags: dict[str, str] = cache_tags or {}
        self._safety_settings = safety_settings
        self._single_attempt = not sdk_retries and _is_genai_client(client)
        self._cache: Any = None
        #: Epoch seconds from which the cache's TTL counts (its creation time).
        self._cache_created_at: float | None = None
        self._cache_lock: asyncio.Lock | None = None
        self._prepared = False

    @property
    def cache_name(self) -> str | None:
        """The provider name of the cache in use (``cachedContents/...``), or ``None``."""
        cache = getattr(self, "_cache", None)
        return None if cache is None else cache.name

    def _is_cache_expired(self) -> bool:
        """Whether the cache is missing or has at most the renewal buffer left to live."""
        if self._cache is None or self._cache_created_at is None:
            return True
        age = time.time() - self._cache_created_at
        return (self._cache_ttl_seconds - age) <= self._cache_renewal_buffer_seconds

    def _lock(self) -> asyncio.Lock:
        # Created lazily so the model can be built outside a running event loop; tolerates
        # instances made with ``__new__`` that never ran ``__init__``.
        lock = getattr(self, "_cache_lock", None)
        if lock is None:
            lock = self._cache_lock = asyncio.Lock()
        return lock

    def checkpoint_identity(self) -> dict[str, Any]:
        """Provider, model, a digest of the cached content and the safety settings."""
        return {
            "provider": "gemini",
            "model": self._model,
            "cached_content": fingerprint({"content": stable_value(self._cached_content)}),
            "safety_settings": stable_value(self._safety_settings),
        }

    def _request_config(self) -> dict[str, Any]:
        if getattr(self, "_single_attempt", False):
            return {"http_options": _single_attempt_http_options()}
        return {}

    async def prepare(self) -> None:
        """Find a reusable cache or create one. A second call does nothing."""
        if self._prepared:
            return
        async with self._lock():
            # Another caller may have prepared the model while this one waited for the lock.
            if not self._prepared:
                await self._find_or_create_cache()
                self._prepared = True

    async def _find_or_create_cache(self) -> None:
        try:
            if await self._adopt_listed_cache():
                return
        except Exception:
            logger.warning(
                "Could not list Gemini caches for %s; creating a new cache",
                self._model,
                exc_info=True,
            )
        await self._create_new_cache()

    async def _adopt_listed_cache(self) -> bool:
        request_config = self._request_config()
        caches = self._client.aio.caches
        pager = await (caches.list(config=request_config) if request_config else caches.list())
        async for cache in pager:
            if not self._is_reusable(cache):
                continue
            now = time.time()
            expires_at = self._expiry_of(cache)
            if expires_at is not None and expires_at - now <= self._cache_renewal_buffer_seconds:
                logger.debug(
                    "Skipping Gemini cache %s: it expires in %.0fs",
                    getattr(cache, "name", None),
                    expires_at - now,
                )
                continue
            self._cache = cache
            # Without a known expiry the cache counts as due for renewal, so the next
            # ``generate`` checks the listing again instead of trusting an unknown age.
            self._cache_created_at = (
                expires_at - self._cache_ttl_seconds
                if expires_at is not None
                else now - self._cache_ttl_seconds
            )
            logger.info("Reusing Gemini cache %s for %s", cache.name, self._model)
            return True
        return False

    def _is_reusable(self, cache: Any) -> bool:
        cache_model = getattr(cache, "model", None)
        # The provider reports the full resource path ("models/<name>" or "projects/.../<name>").
        if not isinstance(cache_model, str) or not cache_model.endswith(self._model):
            return False
        if not self._cache_tags:
            return True
        tags = _decode_tags_from_display_name(getattr(cache, "display_name", None))
        if tags is None:
            return False
        return all(tags.get(key) == value for key, value in self._cache_tags.items())

    def _expiry_of(self, cache: Any) -> float | None:
        """Epoch seconds at which a listed cache expires, when the listing tells."""
        expire_time = getattr(cache, "expire_time", None)
        if isinstance(expire_time, datetime):
            return expire_time.timestamp()
        create_time = getattr(cache, "create_time", None)
        if create_time:
            created = create_time.timestamp()
            if isinstance(created, int | float):
                return float(created) + self._cache_ttl_seconds
        return None

    async def _create_new_cache(self) -> None:
        module = _require_genai("GeminiCachedModel")
        config_fields: dict[str, Any] = {
            "contents": self._cached_content,
            "ttl": f"{self._cache_ttl_seconds}s",
        }
        if self._cache_tags:
            config_fields["display_name"] = _encode_tags_to_display_name(self._cache_tags)
        config_fields.update(self._request_config())
        config = module.types.CreateCachedContentConfig(**config_fields)
        # The provider starts the TTL when it receives the request, not when we hear back.
        requested_at = time.time()
        self._cache = await self._client.aio.caches.create(model=self._model, config=config)
        self._cache_created_at = requested_at
        logger.info(
            "Created Gemini cache %s for %s (ttl %ds)",
            self._cache.name,
            self._model,
            self._cache_ttl_seconds,
        )

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        """Generate a response for ``prompt`` against the cache.

        ``config`` entries are added to the request config last.

        Raises:
            ValueError: ``system_instruction`` was given (it is fixed when the cache is
                created), or the response has no text (``Empty response from model``).
            RuntimeError: No cache is held and ``auto_renew`` is off: call ``prepare()``.
        """
        if system_instruction is not None:
            msg = (
                "system_instruction cannot be overridden per call on GeminiCachedModel: it is "
                "part of the cached content; put it in cached_content when creating the model"
            )
            raise ValueError(msg)
        if self._auto_renew and self._is_cache_expired():
            await self._renew()
        cache = self._cache
        if cache is None:
            msg = (
                f"GeminiCachedModel({self._model!r}) has no cache: call prepare() first "
                "(or construct it with auto_renew=True)"
            )
            raise RuntimeError(msg)
        call_config: dict[str, Any] = {"cached_content": cache.name, "temperature": temperature}
        if self._safety_settings:
            call_config["safety_settings"] = self._safety_settings
        call_config.update(self._request_config())
        if config:
            call_config.update(config)
        return await _generate(self._client, self._model, prompt, call_config)

    async def _renew(self) -> None:
        async with self._lock():
            # Callers that waited for the lock find the cache renewed by the first one.
            if not self._is_cache_expired():
                return
            age = (
                "unknown"
                if self._cache_created_at is None
                else f"{time.time() - self._cache_created_at:.0f}s"
            )
            logger.info("Renewing Gemini cache for %s (age %s)", self._model, age)
            self._cache = None
            self._cache_created_at = None
            self._prepared = False
            await self._find_or_create_cache()
            self._prepared = True

    async def cleanup(self) -> None:
        """Keep the cache for reuse by later runs until its TTL ends (see `delete_cache`)."""
        name = self.cache_name
        if name is not None:
            logger.info("Keeping Gemini cache %s for reuse until it expires", name)

    async def delete_cache(self) -> None:
        """Delete the cache at the provider now. Safe to call concurrently and repeatedly.

        A failed delete is logged at WARNING and not raised; the model forgets the cache
        either way, so the next ``prepare()``/``generate`` finds or creates another.
        """
        if getattr(self, "_cache", None) is None:
            return
        async with self._lock():
            cache = self._cache
            if cache is None:
                return
            name = cache.name
            # Forget the cache before the request, so no caller uses a cache being deleted.
            self._cache = None
            self._cache_created_at = None
            self._prepared = False
            request_config = self._request_config()
            try:
                if request_config:
                    await self._client.aio.caches.delete(name=name, config=request_config)
                else:
                    await self._client.aio.caches.delete(name=name)
            except Exception:
                logger.warning("Could not delete Gemini cache %s", name, exc_info=True)
                return
            logger.info("Deleted Gemini cache %s", name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model!r}, cache={self.cache_name!r})"
