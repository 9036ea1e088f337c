"""The short way to stream a batch: a plain async function and a list of prompts.

`process_stream` is for code that would otherwise be ``asyncio.gather`` over a semaphore:
no strategy class to write and no ids to invent. It builds a `ParallelBatchProcessor`
for the run, streams the prompts through it and closes it when the loop ends:

```python
async def call(prompt: str) -> str:
    ...

async with aclosing(process_stream(call, prompts, checkpoint="run.sqlite")) as results:
    async for result in results:
        print(result.item_id, result.output)
```
"""

from __future__ import annotations

import inspect
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, TypeAlias

from async_batch_llm._internal.values import RetryState, TokenUsage, WorkItemResult
from async_batch_llm.base import LLMWorkItem
from async_batch_llm.checkpoint.base import CheckpointStore, ResumePolicy
from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.observers.base import ProcessorObserver
from async_batch_llm.parallel import ParallelBatchProcessor

__all__ = ["CallFunction", "FunctionStrategy", "PromptSpec", "process_stream"]

CallFunction: TypeAlias = Callable[[str], Awaitable[Any]]
"""An ``async def call(prompt)`` returning the output, or ``(output, token_usage)``."""
PromptSpec: TypeAlias = str | tuple[Any, str] | tuple[Any, str, Any] | LLMWorkItem[Any, Any, Any]
"""One prompt: a string (its id is its position), ``(id, prompt)``, ``(id, prompt,
context)`` or a ready `LLMWorkItem`."""

_NO_USAGE: TokenUsage = {}


class FunctionStrategy(LLMCallStrategy[Any]):
    """A strategy that calls a plain async function with the prompt.

    The function returns the output, or a pair ``(output, token_usage)`` where the usage
    is a mapping such as ``{"input_tokens": 12, "output_tokens": 40}`` (or ``None``).
    Anything else it returns, a tuple of another shape included, is the output itself.

    Args:
        function: ``async def call(prompt: str) -> str | tuple[output, usage]``.
        identity: What the function calls (model, options), for checkpoints; by default
            the function's qualified name, so that editing its code does not re-run
            results already stored, while renaming it (or another function) does.

    Raises:
        TypeError: `function` is not an async function.
    """

    def __init__(self, function: CallFunction, *, identity: object = None) -> None:
        if not _is_async_callable(function):
            msg = (
                "process_stream() needs an async function (async def call(prompt) -> str) "
                f"or an LLMCallStrategy, got {_describe(function)}"
            )
            raise TypeError(msg)
        self.function = function
        self.identity = identity

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Any, TokenUsage]:
        """Call the function with `prompt` and split its return into output and usage."""
        returned = await self.function(prompt)
        if (
            type(returned) is tuple
            and len(returned) == 2
            and (returned[1] is None or isinstance(returned[1], Mapping))
        ):
            output, usage = returned
            return output, dict(usage) if usage is not None else {}  # type: ignore[return-value]
        return returned, _NO_USAGE

    def checkpoint_identity(self) -> object:
        """The `identity` given, else the function's module and qualified name."""
        if self.identity is not None:
            return self.identity
        function: Any = self.function
        target = getattr(function, "func", function)  # functools.partial
        module = getattr(target, "__module__", None) or type(target).__module__
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
        return {"function": f"{module}.{name}"}


async def process_stream(
    strategy_or_async_fn: LLMCallStrategy[Any] | CallFunction,
    prompts: Iterable[PromptSpec] | AsyncIterable[PromptSpec],
    *,
    config: ProcessorConfig | None = None,
    checkpoint: str | os.PathLike[str] | CheckpointStore | None = None,
    ordered: bool = False,
    resume: ResumePolicy = ResumePolicy.REUSE_SUCCESSES,
    checkpoint_version: str | None = None,
    observers: list[ProcessorObserver] | None = None,
) -> AsyncIterator[WorkItemResult[Any, Any]]:
    """Run every prompt through `strategy_or_async_fn` and yield each result as it ends.

    Args:
        strategy_or_async_fn: An `LLMCallStrategy`, or an async function taking the prompt
            and returning the output or ``(output, token_usage)`` (see `FunctionStrategy`).
        prompts: Strings (ids ``"0"``, ``"1"``, ... by position), ``(id, prompt)`` or
            ``(id, prompt, context)`` tuples, or `LLMWorkItem` objects, from an iterable
            or async iterable; taken lazily, with backpressure. With a checkpoint, give
            ids that stay with their prompts: a string's id is its position, so inserting
            a prompt re-runs every one after it.
        config: The processor's configuration (default `ProcessorConfig()`).
        checkpoint: A path (an SQLite store) or a `CheckpointStore`: committed results
            are replayed when the same prompts run again.
        ordered: Yield results in input order instead of completion order.
        resume: Which stored results to replay (`ResumePolicy`).
        checkpoint_version: Your version of the run; a store written with another one is
            refused.
        observers: Observers of the processor (a progress bar, metrics).

    Yields:
        A `WorkItemResult` per prompt (its ``item_id`` as a string).

    Raises:
        TypeError: `prompts` is a single string, a prompt has none of the accepted shapes,
            or the function is not async.
        DuplicateItemError: With a checkpoint, an id appears twice.
        CheckpointError: The checkpoint store failed or holds another run's results.
    """
    if isinstance(prompts, str | bytes):
        # A string is an iterable of characters: one paid call per character.
        msg = (
            f"prompts must be an iterable of prompts, got a single {type(prompts).__name__}: "
            "pass [prompt] to run one"
        )
        raise TypeError(msg)
    strategy = _as_strategy(strategy_or_async_fn)
    processor: ParallelBatchProcessor[str, Any, Any]
    async with ParallelBatchProcessor(
        config=config,
        observers=observers,
        checkpoint=checkpoint,
        resume=resume,
        checkpoint_version=checkpoint_version,
    ) as processor:
        items: Any
        if isinstance(prompts, AsyncIterable):
            items = _work_items_async(prompts, strategy)
        else:
            items = _work_items(prompts, strategy)
        stream: AsyncGenerator[WorkItemResult[Any, Any], None] = processor.stream(
            items, ordered=ordered
        )
        try:
            async for result in stream:
                yield result
        finally:
            await stream.aclose()


def _as_strategy(given: object) -> LLMCallStrategy[Any]:
    if isinstance(given, LLMCallStrategy):
        return given
    return FunctionStrategy(given)  # type: ignore[arg-type]


def _work_items(
    prompts: Iterable[PromptSpec], strategy: LLMCallStrategy[Any]
) -> Iterator[LLMWorkItem[Any, Any, Any]]:
    for position, spec in enumerate(prompts):
        yield _work_item(spec, position, strategy)


async def _work_items_async(
    prompts: AsyncIterable[PromptSpec], strategy: LLMCallStrategy[Any]
) -> AsyncIterator[LLMWorkItem[Any, Any, Any]]:
    position = 0
    iterator = prompts.__aiter__()
    try:
        async for spec in iterator:
            yield _work_item(spec, position, strategy)
            position += 1
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _work_item(
    spec: object, position: int, strategy: LLMCallStrategy[Any]
) -> LLMWorkItem[Any, Any, Any]:
    if isinstance(spec, LLMWorkItem):
        return spec
    if isinstance(spec, str):
        return LLMWorkItem(item_id=str(position), strategy=strategy, prompt=spec)
    if type(spec) is tuple and len(spec) in (2, 3) and isinstance(spec[1], str):
        context = spec[2] if len(spec) == 3 else None
        return LLMWorkItem(item_id=str(spec[0]), strategy=strategy, prompt=spec[1], context=context)
    msg = (
        f"prompt #{position} must be a str, (id, prompt), (id, prompt, context) or an "
        f"LLMWorkItem, got {_describe(spec)}"
    )
    raise TypeError(msg)


def _is_async_callable(function: object) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an object with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _describe(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    if callable(value):
        return f"the sync callable {getattr(value, '__qualname__', type(value).__qualname__)}"
    return type(value).__name__
