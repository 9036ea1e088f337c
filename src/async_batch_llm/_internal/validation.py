"""Up-front checks of what users plug in, so mistakes fail at once with a clear message.

A wrong object handed to the processor would otherwise fail later, item by item, with an
error that names neither the argument nor the fix. Checks are structural where 0.7.2 was
(any object with the right async methods works, test doubles included) and strict about
what can never work: a missing or synchronous ``execute``, a non-callable callback.
"""

from __future__ import annotations

import inspect
from typing import Any

from async_batch_llm.llm_strategies import LLMCallStrategy

__all__ = [
    "check_callable",
    "check_classifier",
    "check_middlewares",
    "check_observers",
    "check_rate_limit_strategy",
    "check_strategy",
]

_STRATEGY_HOOKS = ("prepare", "cleanup", "on_error", "dry_run")


def _is_async(func: object) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - the method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def check_strategy(strategy: object, item_id: str) -> None:
    """Raise `TypeError` unless `strategy` can run: it needs an ``async def execute``.

    An `LLMCallStrategy` subclass must also keep its other hooks (``prepare``,
    ``cleanup``, ``on_error``, ``dry_run``) asynchronous.
    """
    if isinstance(strategy, type):
        msg = (
            f"strategy of item {item_id!r} is the class {strategy.__name__}, not an instance "
            f"of it: pass {strategy.__name__}(...)"
        )
        raise TypeError(msg)
    execute = getattr(strategy, "execute", None)
    if execute is None:
        hint = ""
        if hasattr(strategy, "run"):
            hint = " (a pydantic-ai Agent? wrap it: PydanticAIStrategy(agent))"
        elif callable(strategy):
            hint = " (a function? use process_stream(fn, prompts) or subclass LLMCallStrategy)"
        msg = (
            f"strategy of item {item_id!r} must be an LLMCallStrategy (an object with an "
            f"async execute() method), got {type(strategy).__name__}{hint}"
        )
        raise TypeError(msg)
    if not _is_async(execute):
        msg = (
            f"{type(strategy).__name__}.execute() of item {item_id!r} must be a coroutine "
            "function: define it with 'async def execute(self, prompt, attempt, timeout, "
            "state=None)'"
        )
        raise TypeError(msg)
    if isinstance(strategy, LLMCallStrategy):
        for name in _STRATEGY_HOOKS:
            hook = getattr(strategy, name, None)
            if hook is not None and not _is_async(hook):
                msg = f"{type(strategy).__name__}.{name}() must be defined with 'async def'"
                raise TypeError(msg)


def check_observers(observers: object) -> None:
    """Raise `TypeError` unless `observers` is a list of objects with ``async on_event``."""
    if observers is None:
        return
    if not isinstance(observers, list):
        msg = f"observers must be a list of ProcessorObserver, got {type(observers).__name__}"
        raise TypeError(msg)
    for index, observer in enumerate(observers):
        on_event = getattr(observer, "on_event", None)
        if on_event is None or not _is_async(on_event):
            msg = (
                f"observers[{index}] must be a ProcessorObserver with 'async def "
                f"on_event(self, event, data)', got {type(observer).__name__}"
            )
            raise TypeError(msg)


def check_middlewares(middlewares: object) -> None:
    """Raise `TypeError` unless `middlewares` is a list of objects with the three async hooks."""
    if middlewares is None:
        return
    if not isinstance(middlewares, list):
        msg = f"middlewares must be a list of Middleware, got {type(middlewares).__name__}"
        raise TypeError(msg)
    for index, middleware in enumerate(middlewares):
        for name in ("before_process", "after_process", "on_error"):
            hook = getattr(middleware, name, None)
            if hook is None or not _is_async(hook):
                msg = (
                    f"middlewares[{index}] must be a Middleware (subclass BaseMiddleware) "
                    f"with 'async def {name}', got {type(middleware).__name__}"
                )
                raise TypeError(msg)


def check_callable(name: str, value: object) -> None:
    """Raise `TypeError` unless `value` is ``None`` or callable."""
    if value is not None and not callable(value):
        msg = f"{name} must be a function (sync or async) or None, got {type(value).__name__}"
        raise TypeError(msg)


def check_classifier(classifier: object) -> None:
    """Raise `TypeError` unless `classifier` is ``None`` or has a ``classify`` method."""
    if classifier is not None and not callable(getattr(classifier, "classify", None)):
        msg = (
            "error_classifier must be an ErrorClassifier (an object with "
            f"classify(exception) -> ErrorInfo), got {type(classifier).__name__}"
        )
        raise TypeError(msg)


def check_rate_limit_strategy(strategy: object) -> None:
    """Raise `TypeError` unless `strategy` is ``None`` or a `RateLimitStrategy`-like object."""
    if strategy is None:
        return
    on_rate_limit: Any = getattr(strategy, "on_rate_limit", None)
    slow_start: Any = getattr(strategy, "should_apply_slow_start", None)
    if not callable(on_rate_limit) or not callable(slow_start):
        msg = (
            "rate_limit_strategy must be a RateLimitStrategy (e.g. ExponentialBackoffStrategy() "
            f"or AdaptiveRateLimitStrategy()), got {type(strategy).__name__}"
        )
        raise TypeError(msg)
