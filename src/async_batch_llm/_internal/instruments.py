"""What telemetry knows about a strategy's calls, and the handle of one call in progress.

`StrategyFacts` (provider, model, scope, price) is worked out once per strategy and shared
by OpenTelemetry (`_internal.otel`) and the checkpoint's timeline (`_internal.timeline`).
`Attempt` is what `ItemRunner` holds while a call runs when OpenTelemetry is on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.admission import scope_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from async_batch_llm._internal.otel import OTelInstruments
    from async_batch_llm._internal.rate_control.scope import ScopeSnapshot
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["Attempt", "FactsCache", "StrategyFacts", "load_prices_in_background", "read_scopes"]

logger = logging.getLogger("async_batch_llm")


class StrategyFacts:
    """What telemetry says about a strategy's calls: provider, model, and how to price them."""

    __slots__ = (
        "_pricer",
        "_pricer_made",
        "model",
        "model_key",
        "provider",
        "scope",
        "strategy",
    )

    def __init__(self, strategy: object) -> None:
        # Kept so that the id the facts are cached under is not reused while they are.
        self.strategy = strategy
        scope = scope_of(strategy)
        self.provider = scope.provider
        self.model = scope.model
        self.model_key = (
            f"{scope.provider}:{scope.model}" if scope.provider != "default" else scope.model
        )
        #: The rate-limit scope its calls count against (as adaptive rate control names it).
        self.scope = str(scope)
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


_price_loader: threading.Thread | None = None
_price_loader_lock = threading.Lock()


def load_prices_in_background() -> threading.Thread:
    """Import genai-prices and its data on a thread (once per process); return that thread.

    The first price a run asks for (a timeline interval's cost, a call's cost metric) is
    asked on the event loop, and importing the price data takes about half a second: done
    there, it would stall every call in flight. Started when telemetry or a timeline is
    set up (with its `FactsCache`), the import is over, or running beside the loop, by then.
    """
    global _price_loader
    with _price_loader_lock:
        if _price_loader is None:
            _price_loader = threading.Thread(
                target=_load_prices, name="async-batch-llm-prices", daemon=True
            )
            _price_loader.start()
        return _price_loader


def _load_prices() -> None:
    try:
        from async_batch_llm.pricing import _bundled_snapshot

        _bundled_snapshot()
    except Exception:  # not installed, or broken: pricing says so when it is asked
        logger.debug("Loading the price data failed", exc_info=True)


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


def read_scopes(scopes: Callable[[], Iterable[ScopeSnapshot]] | None) -> list[ScopeSnapshot]:
    """The rate-limit scopes' state now (none without a source, or if reading it fails:
    telemetry never breaks a run)."""
    if scopes is None:
        return []
    try:
        return list(scopes())
    except Exception:
        logger.debug("Reading the rate-limit scopes failed", exc_info=True)
        return []


class FactsCache:
    """The facts of each strategy one owner (a run's timeline, a processor's telemetry) met.

    Per owner rather than module-wide, so that strategies are not kept alive after their
    run; keyed by identity, as strategies need not be hashable.
    """

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, StrategyFacts] = {}
        # The facts price calls: have the price data ready before the first is asked.
        load_prices_in_background()

    def __call__(self, strategy: object) -> StrategyFacts:
        facts = self._by_id.get(id(strategy))
        if facts is None or facts.strategy is not strategy:
            if len(self._by_id) > 4096:  # strategies made per item: keep the cache bounded
                self._by_id.clear()
            facts = self._by_id[id(strategy)] = StrategyFacts(strategy)
        return facts


class Attempt:
    """One call in progress (its span, when it has one, is in `otel`)."""

    __slots__ = ("answered", "facts", "item_id", "number", "otel", "owner", "started", "waited")

    def __init__(
        self,
        owner: OTelInstruments,
        item_id: str,
        number: int,
        facts: StrategyFacts,
        waited: float,
        answered: bool,
    ) -> None:
        self.owner = owner
        self.item_id = item_id
        self.number = number
        self.facts = facts
        #: Seconds the attempt waited for admission (rate limit, budget) before it began.
        self.waited = waited
        #: Whether the attempt makes no call: it finishes a provider batch job's answer.
        self.answered = answered
        self.started = time.monotonic()
        self.otel: Any = None

    def end(
        self,
        usage: dict[str, int] | None,
        error: BaseException | None,
        info: ErrorInfo | None,
    ) -> None:
        """The call returned `usage`, or raised `error` (classified as `info`)."""
        self.owner.attempt_ended(self, usage, error, info)
