"""process_stream(): a plain async function and prompts in, results out."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest

import async_batch_llm
from async_batch_llm import LLMWorkItem, ProcessorConfig
from async_batch_llm.checkpoint import MemoryCheckpointStore
from async_batch_llm.streaming import FunctionStrategy, process_stream
from support import EchoStrategy


async def upper(prompt: str) -> str:
    await asyncio.sleep(0)
    return prompt.upper()


async def with_usage(prompt: str) -> tuple[str, dict[str, int]]:
    return prompt[::-1], {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


def test_importable_from_the_package_root() -> None:
    assert async_batch_llm.process_stream is process_stream
    assert "process_stream" not in async_batch_llm.__all__  # 0.7.2's names only


async def test_strings_get_their_positions_as_ids() -> None:
    results = [r async for r in process_stream(upper, ["a", "b", "c"], ordered=True)]
    assert [(r.item_id, r.output) for r in results] == [("0", "A"), ("1", "B"), ("2", "C")]


async def test_tuples_give_ids_and_contexts() -> None:
    prompts = [("x", "one"), ("y", "two", {"row": 2}), (7, "three")]
    results = {r.item_id: r async for r in process_stream(upper, prompts)}
    assert set(results) == {"x", "y", "7"}
    assert results["y"].context == {"row": 2}
    assert results["x"].context is None


async def test_usage_is_read_from_a_pair() -> None:
    results = [r async for r in process_stream(with_usage, ["abc"])]
    assert results[0].output == "cba"
    assert results[0].token_usage["total_tokens"] == 7


async def test_other_tuples_are_the_output() -> None:
    async def pair(prompt: str) -> tuple[str, str]:
        return prompt, prompt

    results = [r async for r in process_stream(pair, ["q"])]
    assert results[0].output == ("q", "q")


async def test_a_strategy_and_work_items_are_accepted() -> None:
    strategy = EchoStrategy()
    own = LLMWorkItem(item_id="own", strategy=strategy, prompt="p")
    results = [r async for r in process_stream(strategy, [own, "plain"])]
    assert sorted(r.item_id for r in results) == ["1", "own"]
    assert len(strategy.calls) == 2


async def test_an_async_source_is_closed_when_the_loop_ends_early() -> None:
    closed = asyncio.Event()

    async def prompts() -> AsyncIterator[str]:
        try:
            for i in range(1000):
                yield f"p{i}"
        finally:
            closed.set()

    stream = process_stream(upper, prompts(), config=ProcessorConfig(max_workers=2))
    async for _ in stream:
        break
    await stream.aclose()
    assert closed.is_set()
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_a_checkpoint_replays_on_the_second_run() -> None:
    calls: list[str] = []

    async def call(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    store = MemoryCheckpointStore()
    prompts = [(f"id{i}", f"p{i}") for i in range(20)]
    first = [r async for r in process_stream(call, prompts, checkpoint=store)]
    second = [r async for r in process_stream(call, prompts, checkpoint=store)]
    assert len(calls) == 20
    assert not any(r.replayed for r in first)
    assert all(r.replayed for r in second)


def test_identity_is_the_function_name_not_its_code() -> None:
    assert FunctionStrategy(upper).checkpoint_identity() == {
        "function": f"{upper.__module__}.upper"
    }
    partial = functools.partial(with_usage)
    assert FunctionStrategy(partial).checkpoint_identity() == {
        "function": f"{upper.__module__}.with_usage"
    }
    assert FunctionStrategy(upper, identity={"model": "m"}).checkpoint_identity() == {"model": "m"}


def test_an_async_callable_object_is_accepted() -> None:
    class Caller:
        async def __call__(self, prompt: str) -> str:
            return prompt

    FunctionStrategy(Caller())


@pytest.mark.parametrize("bad", [len, lambda prompt: prompt, "text"])
async def test_a_sync_function_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="async function"):
        async for _ in process_stream(bad, ["a"]):
            pass


@pytest.mark.parametrize("single", ["hello", b"hello"])
async def test_a_single_string_is_refused_before_any_call(single: Any) -> None:
    calls: list[str] = []

    async def record(prompt: str) -> str:
        calls.append(prompt)
        return prompt

    with pytest.raises(TypeError, match=r"got a single (str|bytes): pass \[prompt\]"):
        async for _ in process_stream(record, single):
            pass
    assert calls == []  # not one call per character


@pytest.mark.parametrize(
    ("prompt", "shape"), [(3, "int"), (("a",), "tuple of 1"), (("a", 2), "tuple of 2")]
)
async def test_a_bad_prompt_names_its_position_and_shape(prompt: Any, shape: str) -> None:
    got: list[str] = []

    async def run() -> None:
        async for result in process_stream(upper, ["ok", prompt]):
            got.append(result.item_id)

    with pytest.raises(TypeError, match=rf"prompt #1 .* got (a )?{shape}"):
        await run()
    assert got == ["0"]
