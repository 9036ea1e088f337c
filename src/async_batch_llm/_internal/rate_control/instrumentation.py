"""Find the HTTP client inside a strategy's SDK client and add the rate-limit response hook.

With the hook, the rate controller reads the provider's rate-limit headers on every
response, successes included, without the user building a hooked client. It is best
effort: the SDKs keep their HTTP client in private attributes, so a strategy whose client
cannot be found (or an SDK that changed) simply goes without, and the controller still
learns from the 429s, whose headers travel on the exception.

Known places, for the strategies built in (``GeminiStrategy`` with ``GeminiModel`` or
``GeminiCachedModel``, ``PydanticAIStrategy`` with an OpenAI, Anthropic or Google model):

* openai / anthropic clients: ``client._client`` (an ``httpx2.AsyncClient``);
* google-genai ``Client``: ``client._api_client._async_httpx_client``.

The hook does nothing for requests made outside an admitted call, so a client shared with
other code is not affected.
"""

from __future__ import annotations

import logging
from typing import Any

from async_batch_llm._internal.rate_control.controller import (
    instrument,
    rate_limit_response_hook,
)

__all__ = ["instrument_strategy", "sdk_http_clients"]

logger = logging.getLogger(__name__)


def instrument_strategy(strategy: object) -> int:
    """Add the response hook to every HTTP client found in `strategy`; return how many."""
    count = 0
    for client in sdk_http_clients(strategy):
        try:
            hooks = client.event_hooks
            if rate_limit_response_hook not in hooks.get("response", ()):
                instrument(client)
            count += 1
        except Exception:
            logger.debug("Could not add the rate-limit hook to %r", client, exc_info=True)
    return count


def sdk_http_clients(strategy: object) -> list[Any]:
    """The async httpx clients the SDK objects of `strategy` send their requests through."""
    sdk_clients: list[object] = []
    agent = getattr(strategy, "agent", None)
    if agent is not None:
        sdk_clients.append(_attribute(_attribute(agent, "model"), "client"))
    model = getattr(strategy, "model", None)
    if model is not None:
        sdk_clients.append(_attribute(model, "_client"))
        sdk_clients.append(_attribute(model, "client"))
    found: list[Any] = []
    for sdk_client in sdk_clients:
        for candidate in (
            _attribute(sdk_client, "_client"),
            _attribute(_attribute(sdk_client, "_api_client"), "_async_httpx_client"),
        ):
            if _is_hookable(candidate) and all(candidate is not seen for seen in found):
                found.append(candidate)
    return found


def _attribute(owner: object, name: str) -> object:
    if owner is None:
        return None
    try:
        return getattr(owner, name, None)
    except Exception:
        return None


def _is_hookable(candidate: object) -> bool:
    # Only a real hooks dict counts: a Mock would invent the attribute.
    hooks = _attribute(candidate, "event_hooks")
    return isinstance(hooks, dict) and isinstance(hooks.get("response", []), list)
