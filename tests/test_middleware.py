"""Middleware base classes and the EventDispatcher's three middleware chains."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from async_batch_llm._internal.event_dispatcher import EventDispatcher
from async_batch_llm.base import LLMWorkItem, RetryState, TokenUsage, WorkItemResult
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.middleware import BaseMiddleware, Middleware
from async_batch_llm.middleware import base as middleware_base

DISPATCHER_LOGGER = "async_batch_llm._internal.event_dispatcher"

Item = LLMWorkItem[str, str, Any]
Result = WorkItemResult[str, Any]


class _EchoStrategy(LLMCallStrategy[str]):
    async def execute(
        self,
        prompt: str,
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[str, TokenUsage]:
        return prompt, {}


def _item(prompt: str = "p", item_id: str = "item-1") -> Item:
    return LLMWorkItem(item_id=item_id, strategy=_EchoStrategy(), prompt=prompt)


def _result(output: str = "out", item_id: str = "item-1") -> Result:
    return WorkItemResult(item_id=item_id, success=True, output=output)


class Recording(BaseMiddleware[str, str, Any]):
    """Appends ``<name>.<hook>`` to a shared log and tags prompts/outputs with its name."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def before_process(self, work_item: Item) -> Item | None:
        self.log.append(f"{self.name}.before")
        return dataclasses.replace(work_item, prompt=work_item.prompt + self.name)

    async def after_process(self, result: Result) -> Result:
        self.log.append(f"{self.name}.after")
        return dataclasses.replace(result, output=(result.output or "") + self.name)

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        self.log.append(f"{self.name}.on_error")
        return None


class Skipping(Recording):
    async def before_process(self, work_item: Item) -> Item | None:
        self.log.append(f"{self.name}.before")
        return None


class Recovering(Recording):
    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        self.log.append(f"{self.name}.on_error")
        return WorkItemResult(item_id=work_item.item_id, success=True, output=self.name)


class Raising(BaseMiddleware[str, str, Any]):
    """Every hook raises the given exception."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def before_process(self, work_item: Item) -> Item | None:
        raise self.exc

    async def after_process(self, result: Result) -> Result:
        raise self.exc

    async def on_error(self, work_item: Item, error: Exception) -> Result | None:
        raise self.exc


class TestBaseClasses:
    def test_module_exports(self) -> None:
        """The middleware package exports exactly the two classes, as the same objects."""
        import async_batch_llm.middleware as pkg

        assert pkg.__all__ == ["Middleware", "BaseMiddleware"]
        assert pkg.Middleware is middleware_base.Middleware
        assert pkg.BaseMiddleware is middleware_base.BaseMiddleware

    def test_middleware_is_abstract(self) -> None:
        """Middleware cannot be instantiated without all three hooks."""
        with pytest.raises(TypeError, match="abstract"):
            Middleware()  # type: ignore[abstract]

    async def test_base_middleware_passes_through(self) -> None:
        """BaseMiddleware returns the item and result unchanged and never recovers."""
        middleware: BaseMiddleware[str, str, Any] = BaseMiddleware()
        item, result = _item(), _result()

        assert await middleware.before_process(item) is item
        assert await middleware.after_process(result) is result
        assert await middleware.on_error(item, ValueError("x")) is None


class TestEmptyChains:
    async def test_empty_chains_return_inputs(self) -> None:
        """Without middleware the item and result come back as is and on_error gives None."""
        dispatcher = EventDispatcher([], [])
        item, result = _item(), _result()

        assert await dispatcher.before_process(item) is item
        assert await dispatcher.after_process(result) is result
        assert await dispatcher.on_error(item, ValueError("x")) is None


class TestBeforeProcess:
    async def test_runs_in_list_order_threading_the_item(self) -> None:
        """Each before hook runs in list order and receives the previous hook's item."""
        log: list[str] = []
        dispatcher = EventDispatcher([], [Recording("A", log), Recording("B", log)])

        out = await dispatcher.before_process(_item("p"))

        assert out is not None
        assert out.prompt == "pAB"
        assert log == ["A.before", "B.before"]

    async def test_first_none_skips_the_rest(self) -> None:
        """The first None stops the chain: later hooks are not called and None is returned."""
        log: list[str] = []
        dispatcher = EventDispatcher(
            [], [Recording("A", log), Skipping("S", log), Recording("C", log)]
        )

        assert await dispatcher.before_process(_item()) is None
        assert log == ["A.before", "S.before"]

    async def test_exception_is_logged_and_chain_continues(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising before hook is logged at WARNING and the next hook gets the last good item."""
        log: list[str] = []
        dispatcher = EventDispatcher(
            [], [Recording("A", log), Raising(ValueError("boom")), Recording("B", log)]
        )

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            out = await dispatcher.before_process(_item("p"))

        assert out is not None
        assert out.prompt == "pAB"
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert record.name == DISPATCHER_LOGGER
        assert "Raising" in record.getMessage()
        assert "before_process" in record.getMessage()
        assert record.exc_info is not None


class TestAfterProcess:
    async def test_runs_in_reverse_order_threading_the_result(self) -> None:
        """After hooks run in reverse list order, each receiving the previous result."""
        log: list[str] = []
        dispatcher = EventDispatcher([], [Recording("A", log), Recording("B", log)])

        out = await dispatcher.after_process(_result("r"))

        assert out.output == "rBA"
        assert log == ["B.after", "A.after"]

    async def test_full_wrapping_order(self) -> None:
        """Two middlewares A, B give A.before, B.before, B.after, A.after."""
        log: list[str] = []
        dispatcher = EventDispatcher([], [Recording("A", log), Recording("B", log)])

        await dispatcher.before_process(_item())
        await dispatcher.after_process(_result())

        assert log == ["A.before", "B.before", "B.after", "A.after"]

    async def test_exception_is_logged_and_chain_continues(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising after hook is logged at WARNING and the result so far is kept."""
        log: list[str] = []
        dispatcher = EventDispatcher(
            [], [Recording("A", log), Raising(RuntimeError("boom")), Recording("B", log)]
        )

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            out = await dispatcher.after_process(_result("r"))

        assert out.output == "rBA"
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert "Raising.after_process" in record.getMessage()

    async def test_none_return_is_ignored(self, caplog: pytest.LogCaptureFixture) -> None:
        """An after hook that returns None does not replace the result."""

        class ForgetsReturn(BaseMiddleware[str, str, Any]):
            async def after_process(self, result: Result) -> Result:
                return None  # type: ignore[return-value]

        result = _result()
        dispatcher = EventDispatcher([], [ForgetsReturn()])

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            out = await dispatcher.after_process(result)

        assert out is result
        assert "ForgetsReturn.after_process returned None" in caplog.text


class TestOnError:
    async def test_first_non_none_wins(self) -> None:
        """on_error hooks run in list order until one returns a result, which is used."""
        log: list[str] = []
        dispatcher = EventDispatcher(
            [],
            [Recording("A", log), Recovering("R1", log), Recovering("R2", log)],
        )

        out = await dispatcher.on_error(_item(), ValueError("x"))

        assert out is not None
        assert out.output == "R1"
        assert log == ["A.on_error", "R1.on_error"]

    async def test_all_none_gives_none(self) -> None:
        """When every hook returns None, the chain returns None after calling all of them."""
        log: list[str] = []
        dispatcher = EventDispatcher([], [Recording("A", log), Recording("B", log)])

        assert await dispatcher.on_error(_item(), ValueError("x")) is None
        assert log == ["A.on_error", "B.on_error"]

    async def test_hooks_receive_item_and_error(self) -> None:
        """Each on_error hook receives the failing item and the exception itself."""
        seen: list[tuple[Item, Exception]] = []

        class Spy(BaseMiddleware[str, str, Any]):
            async def on_error(self, work_item: Item, error: Exception) -> Result | None:
                seen.append((work_item, error))
                return None

        item, error = _item(), ValueError("x")
        await EventDispatcher([], [Spy()]).on_error(item, error)

        assert seen == [(item, error)]
        assert seen[0][1] is error

    async def test_exception_is_logged_and_chain_continues(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A raising on_error hook is logged at WARNING and the next hook may still recover."""
        log: list[str] = []
        dispatcher = EventDispatcher([], [Raising(KeyError("k")), Recovering("R", log)])

        with caplog.at_level(logging.WARNING, logger=DISPATCHER_LOGGER):
            out = await dispatcher.on_error(_item(), ValueError("x"))

        assert out is not None
        assert out.output == "R"
        [record] = caplog.records
        assert "Raising.on_error" in record.getMessage()


class TestCancellation:
    @pytest.mark.parametrize("hook", ["before_process", "after_process", "on_error"])
    async def test_cancelled_error_propagates(self, hook: str) -> None:
        """CancelledError from any hook propagates instead of being logged and ignored."""
        log: list[str] = []
        dispatcher = EventDispatcher(
            [], [Raising(asyncio.CancelledError()), Recording("after", log)]
        )
        calls: dict[str, Any] = {
            "before_process": lambda: dispatcher.before_process(_item()),
            "after_process": lambda: dispatcher.after_process(_result()),
            "on_error": lambda: dispatcher.on_error(_item(), ValueError("x")),
        }

        with pytest.raises(asyncio.CancelledError):
            await calls[hook]()
        # after_process runs in reverse, so only there does the other middleware run first.
        assert log == (["after.after"] if hook == "after_process" else [])


class TestLiveList:
    async def test_middleware_appended_after_construction_is_used(self) -> None:
        """The dispatcher reads the caller's list at call time, so later appends take effect."""
        log: list[str] = []
        middlewares: list[Middleware[Any, Any, Any]] = []
        dispatcher = EventDispatcher([], middlewares)

        middlewares.append(Recording("A", log))
        out = await dispatcher.before_process(_item("p"))

        assert dispatcher.middlewares is middlewares
        assert out is not None
        assert out.prompt == "pA"
        assert log == ["A.before"]
