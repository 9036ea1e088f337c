"""Gemini ``cachedContents``: create, list (paged), get, update (TTL) and delete."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from async_batch_llm.testing.simulator._formats import rfc3339
from async_batch_llm.testing.simulator._gemini import proto_field
from async_batch_llm.testing.simulator._text import count_text_chars, estimate_tokens
from async_batch_llm.testing.simulator._wire import Json

__all__ = ["CacheStore", "InvalidCacheRequest"]

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class InvalidCacheRequest(ValueError):
    """A cache request the real API would reject with 400 ``INVALID_ARGUMENT``."""


@dataclass(slots=True)
class _Entry:
    name: str
    model: str
    display_name: str | None
    create_time: float
    update_time: float
    expire_time: float
    total_tokens: int

    def to_json(self) -> Json:
        body: Json = {"name": self.name, "model": self.model}
        if self.display_name is not None:
            body["displayName"] = self.display_name
        body["createTime"] = rfc3339(self.create_time)
        body["updateTime"] = rfc3339(self.update_time)
        body["expireTime"] = rfc3339(self.expire_time)
        body["usageMetadata"] = {"totalTokenCount": self.total_tokens}
        return body


class CacheStore:
    """Cached contents by resource name (``cachedContents/<id>``); expired entries vanish.

    Times are wall-clock epoch seconds passed in by the caller, so tests can move them.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._created = 0

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, body: Mapping[str, Any], now: float) -> Json:
        """Store a new cached content and return its resource."""
        model = proto_field(body, "model")
        if not isinstance(model, str) or not model:
            msg = "CachedContent.model is required, e.g. 'models/gemini-2.0-flash'."
            raise InvalidCacheRequest(msg)
        self._created += 1
        name = f"cachedContents/sim{self._created:08d}"
        tokens = estimate_tokens(
            count_text_chars(
                proto_field(body, "contents"),
                proto_field(body, "systemInstruction"),
                proto_field(body, "tools"),
            )
        )
        display_name = proto_field(body, "displayName")
        entry = _Entry(
            name=name,
            model=model if model.startswith(("models/", "tunedModels/")) else f"models/{model}",
            display_name=display_name if isinstance(display_name, str) else None,
            create_time=now,
            update_time=now,
            expire_time=_expiry(body, now, DEFAULT_TTL_SECONDS),
            total_tokens=tokens,
        )
        self._entries[name] = entry
        return entry.to_json()

    def get(self, name: str, now: float) -> Json | None:
        """The resource, or ``None`` when it does not exist or has expired."""
        entry = self._live(name, now)
        return entry.to_json() if entry is not None else None

    def tokens(self, name: str, now: float) -> int | None:
        """Token count of a live cached content, or ``None``."""
        entry = self._live(name, now)
        return entry.total_tokens if entry is not None else None

    def update(self, name: str, body: Mapping[str, Any], now: float) -> Json | None:
        """Move the expiry (``ttl`` or ``expireTime``); ``None`` when the entry is gone."""
        entry = self._live(name, now)
        if entry is None:
            return None
        entry.expire_time = _expiry(body, now, entry.expire_time - now)
        entry.update_time = now
        return entry.to_json()

    def delete(self, name: str, now: float) -> bool:
        """Remove a live entry; ``False`` when there was none."""
        return self._live(name, now) is not None and self._entries.pop(name, None) is not None

    def page(self, page_size: str | None, page_token: str | None, now: float) -> Json:
        """One page of live entries in creation order, with ``nextPageToken`` when more follow."""
        for name in [n for n, e in self._entries.items() if e.expire_time <= now]:
            del self._entries[name]
        size = _page_size(page_size)
        try:
            start = int(page_token) if page_token else 0
        except ValueError:
            msg = f"Invalid page token {page_token!r}."
            raise InvalidCacheRequest(msg) from None
        entries = list(self._entries.values())
        body: Json = {}
        chunk = entries[start : start + size]
        if chunk:
            body["cachedContents"] = [entry.to_json() for entry in chunk]
        if start + size < len(entries):
            body["nextPageToken"] = str(start + size)
        return body

    def _live(self, name: str, now: float) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None and entry.expire_time <= now:
            del self._entries[name]
            return None
        return entry


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except ValueError:
        msg = f"Invalid pageSize {value!r}."
        raise InvalidCacheRequest(msg) from None
    return DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)


def _expiry(body: Mapping[str, Any], now: float, default_ttl: float) -> float:
    ttl = proto_field(body, "ttl")
    if isinstance(ttl, str):
        try:
            seconds = float(ttl.removesuffix("s"))
        except ValueError:
            msg = f"Invalid ttl {ttl!r}: expected a duration like '3600s'."
            raise InvalidCacheRequest(msg) from None
        return now + seconds
    expire = proto_field(body, "expireTime")
    if isinstance(expire, str):
        try:
            return datetime.fromisoformat(expire).timestamp()
        except ValueError:
            msg = f"Invalid expireTime {expire!r}: expected an RFC 3339 timestamp."
            raise InvalidCacheRequest(msg) from None
    return now + default_ttl
