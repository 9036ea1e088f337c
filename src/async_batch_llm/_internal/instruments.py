"""What the attempt path tells observability: items, attempts, replays.

`ItemRunner` calls these hooks only when something listens (`ItemRunner.instruments` is
``None`` otherwise), so a run without OpenTelemetry or a recorded timeline pays one
attribute test per attempt. They are direct calls on the worker, not observer events:
an OpenTelemetry span has to be the current one while the strategy runs so that the
spans the SDK opens inside `execute` (pydantic-ai's, httpx's) become its children, and
that only works in the worker's own context.

Two listeners exist, each optional: `OTelInstruments` (spans and metrics, in
`_internal.otel`) and `TimelineRecorder` (aggregates a checkpointed run writes for
``abl report`` and ``abl status --watch``, in `_internal.timeline`). `Instruments` fans each
hook out to the ones present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from async_batch_llm._internal.admission import scope_of

if TYPE_CHECKING:
    from async_batch_llm._internal.values import WorkItemResult
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["Attempt", "Instruments", "Listener", "StrategyFacts", "facts_of"]

logger = logging.getLogger("async_batch_llm")

_T = TypeVar("_T")


class StrategyFacts:
    """What telemetry says about a strategy's calls: provider, model, and how to price them."""

    __slots__ = ("_pricer", "_pricer_made", "model", "model_key", "provider", "strategy")

    def __init__(self, strategy: object) -> None:
        # Kept so that the id the facts are cached under is not reused while they are.
        self.strategy = strategy
        scope = scope_of(strategy)
        self.provider = scope.provider
        self.model = scope.model
        self.model_key = (
            f"{scope.provider}:{scope.model}" if scope.provider != "default" else scope.model
        )
        self._pricer: Any = None
        self._pricer_made = False

    def cost(self, usage: dict[str, int] | None) -> float | None:
        """The price of `usage` in USD, or ``None`` (no genai-prices, or an unknown model)."""
        if not usage:
            return None
        if not self._pricer_made:
            self._pricer_made = True
            self._pricer = _pricer_for(self.provider, self.model)
        if self._pricer is None:
            return None
        try:
            price = self._pricer.price(usage)
        except Exception:
            logger.debug("pricing %s failed", self.model_key, exc_info=True)
            return None
        return None if price is None else float(price)


def _pricer_for(provider: str, model: str) -> Any:
    try:
        from async_batch_llm.pricing import Pricer
    except ImportError:
        return None
    try:
        for name in (f"{provider}:{model}", model):
            pricer = Pricer(name)
            if pricer.known:
                return pricer
    except ImportError:  # genai-prices is not installed
        return None
    return None


_facts: dict[int, StrategyFacts] = {}


def facts_of(strategy: object) -> StrategyFacts:
    """The (cached) facts of `strategy`."""
    facts = _facts.get(id(strategy))
    if facts is None or facts.strategy is not strategy:
        if len(_facts) > 4096:
            _facts.clear()
        facts = _facts[id(strategy)] = StrategyFacts(strategy)
    return facts


class Attempt:
    """One call in progress, as the listeners see it."""

    __slots__ = (
        "facts",
        "instruments",
        "item_id",
        "number",
        "otel",
        "started",
        "waited",
    )

    def __init__(
        self,
        instruments: Instruments,
        item_id: str,
        number: int,
        facts: StrategyFacts,
        waited: float,
    ) -> None:
        self.instruments = instruments
        self.item_id = item_id
        self.number = number
        self.facts = facts
        self.waited = waited
        """Seconds the attempt waited for admission (rate limit, budget) before it began."""
        self.started = time.monotonic()
        self.otel: Any = None

    def end(
        self,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
        permit: Any,
    ) -> None:
        """The call returned `usage`, or raised `error` (classified as `info`)."""
        self.instruments.attempt_ended(self, usage, error, info, permit)


class Listener(Protocol):
    """What `Instruments` calls on each listener."""

    def item_started(self, item_id: str, facts: StrategyFacts) -> Any: ...

    def item_ended(self, token: Any, result: WorkItemResult[Any, Any] | None) -> None: ...

    def attempt_started(self, attempt: Attempt) -> None: ...

    def attempt_ended(
        self,
        attempt: Attempt,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
        scope: str | None,
    ) -> None: ...

    def item_replayed(self, item_id: str, facts: StrategyFacts, result: Any) -> None: ...


class Instruments:
    """The hooks of the attempt path, fanned out to the listeners present (one or two)."""

    __slots__ = ("listeners", "otel", "timeline")

    def __init__(self, otel: Listener | None, timeline: Listener | None) -> None:
        self.otel = otel
        self.timeline = timeline
        self.listeners: tuple[Listener, ...] = tuple(
            listener for listener in (otel, timeline) if listener is not None
        )

    @classmethod
    def of(cls, otel: Listener | None, timeline: Listener | None) -> Instruments | None:
        """The instruments for these listeners, or ``None`` when there is none."""
        if otel is None and timeline is None:
            return None
        return cls(otel, timeline)

    async def run_item(
        self, item: Any, awaitable: Awaitable[WorkItemResult[Any, Any]]
    ) -> WorkItemResult[Any, Any]:
        """Await the run of `item` (`awaitable`) inside its item span."""
        facts = facts_of(item.strategy)
        listeners = self.listeners
        tokens = [listener.item_started(item.item_id, facts) for listener in listeners]
        result: WorkItemResult[Any, Any] | None = None
        try:
            result = await awaitable
            return result
        finally:
            # Innermost first: an OpenTelemetry context is detached in reverse order.
            for listener, token in zip(reversed(listeners), reversed(tokens), strict=True):
                listener.item_ended(token, result)

    def attempt_started(self, item: Any, number: int, strategy: object, waited: float) -> Attempt:
        attempt = Attempt(self, item.item_id, number, facts_of(strategy), waited)
        for listener in self.listeners:
            listener.attempt_started(attempt)
        return attempt

    def attempt_ended(
        self,
        attempt: Attempt,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
        permit: Any,
    ) -> None:
        scope: str | None = None
        try:
            described = permit.describe()
        except Exception:
            described = None
        if described:
            scope = str(described.get("scope") or "") or None
        for listener in reversed(self.listeners):
            listener.attempt_ended(attempt, usage, error, info, scope)

    def item_replayed(self, item: Any, result: Any) -> None:
        facts = facts_of(item.strategy)
        for listener in self.listeners:
            listener.item_replayed(item.item_id, facts, result)
