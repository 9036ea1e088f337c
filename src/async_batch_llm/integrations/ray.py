"""A Ray Data stage that runs LLM calls with this library: one long-lived processor per actor.

```python
import ray
from async_batch_llm.integrations.ray import LLMStage, llm_stage_options

ds = ray.data.read_parquet("prompts.parquet")  # columns "id" and "prompt"
ds = ds.map_batches(
    LLMStage,
    fn_constructor_kwargs={"strategy": make_strategy, "id_column": "id", "max_workers": 32},
    **llm_stage_options(actors=4, batch_size=256),
)
```

Each actor of the pool builds its strategy and one `ParallelBatchProcessor` on its own
event loop at the first batch, and feeds every later batch into the same long-running
stream: retries, adaptive rate control, token accounting and the checkpoint are shared by
all the batches an actor runs, and no worker idles at batch boundaries. Every row comes
back with its input columns and the result columns (`RESULT_COLUMNS`); a failed call is a
row with ``error`` set, never an exception that stops the job.

Needs Ray Data: the extra ``async-batch-llm[ray]`` (``pip install '.[ray]'`` from a checkout),
or ``pip install 'ray[data]'``. See the guide *Ray Data* for sharing rate limits between
actors, checkpoints and Ray's retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

try:
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
    import ray.data
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    _msg = (
        "async_batch_llm.integrations.ray needs Ray Data, which is not installed (no module "
        f"named {exc.name!r}): install the extra async-batch-llm[ray] (from a checkout of "
        "this project: pip install '.[ray]'), or Ray Data itself: pip install 'ray[data]'"
    )
    raise ImportError(_msg, name=exc.name) from exc

from async_batch_llm._internal.checkpointing import FORMAT, FORMAT_KEY, SESSION_KEY, VERSION_KEY
from async_batch_llm._internal.optional import loaded
from async_batch_llm._internal.values import WorkItemResult
from async_batch_llm.base import LLMWorkItem
from async_batch_llm.checkpoint.base import (
    CheckpointEntry,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    EntryState,
    ResumePolicy,
)
from async_batch_llm.checkpoint.sqlite import SQLiteCheckpointReader, SQLiteCheckpointStore
from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.llm_strategies import LLMCallStrategy
from async_batch_llm.parallel import ParallelBatchProcessor
from async_batch_llm.rate_control import AdaptiveRateLimitStrategy

__all__ = ["LLMStage", "llm_stage_options", "RESULT_COLUMNS", "INVALID_INPUT", "StrategySource"]

logger = logging.getLogger(__name__)

#: What `LLMStage` accepts as ``strategy``: a strategy, or a function (sync or async, no
#: arguments) that builds one inside the actor.
StrategySource: TypeAlias = (
    LLMCallStrategy[Any]
    | Callable[[], LLMCallStrategy[Any]]
    | Callable[[], Awaitable[LLMCallStrategy[Any]]]
)

#: The columns `LLMStage` adds to every row, besides ``output_column`` (default
#: ``"output"``): ``error`` (``"<ExceptionClass>: <message>"`` or null), ``error_category``
#: (``"rate_limit"``, ``"timeout"``, ... or null), ``attempts`` (calls made for the row),
#: ``input_tokens``, ``output_tokens``, ``total_tokens`` and ``replayed`` (read back from
#: the checkpoint instead of called in this run).
RESULT_COLUMNS: Final = (
    "error",
    "error_category",
    "attempts",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "replayed",
)

#: The ``error_category`` of a row that was never sent: no prompt, no id, or an id that is
#: in flight already with another prompt.
INVALID_INPUT: Final = "invalid_input"

# How long closing a stage (its processor and checkpoint) may take when Ray drops the actor.
_CLOSE_TIMEOUT = 30.0
_SHARD_PREFIX = "actor-"
_SHARD_SUFFIX = ".sqlite"
_MAX_SHARDS = 4096
# Closings started from a finaliser on the loop's own thread, kept until they are done.
_closing: set[asyncio.Task[None]] = set()


def llm_stage_options(
    actors: int | tuple[int, int] = 1,
    *,
    batch_size: int = 256,
    batches_per_actor: int = 2,
    num_cpus: float = 0.25,
    **map_batches_kwargs: Any,
) -> dict[str, Any]:
    """``Dataset.map_batches`` keyword arguments that suit `LLMStage`.

    ```python
    ds.map_batches(LLMStage, fn_constructor_kwargs={...}, **llm_stage_options(actors=4))
    ```

    Args:
        actors: Actors in the pool (`ray.data.ActorPoolStrategy` ``size``), or
            ``(min, max)`` for an autoscaling pool.
        batch_size: Rows per call of the stage. With ``batches_per_actor``, it bounds the
            rows an actor holds: make ``batch_size * batches_per_actor`` at least twice the
            stage's ``max_workers`` so that its calls never wait for the next batch.
        batches_per_actor: Ray tasks (blocks) an actor runs at once
            (``max_concurrent_calls_per_actor``). All of them feed the actor's one
            processor, so its concurrency stays ``max_workers`` however many there are;
            more than one lets the next batch arrive while the last calls of the previous
            one finish.
        num_cpus: CPUs Ray reserves per actor. The stage waits on the network, so the
            default is a quarter: with Ray's default of one CPU per actor, a pool as large
            as the cluster's CPU count leaves none for the tasks that read the input, and
            the job waits forever.
        **map_batches_kwargs: Anything else for ``map_batches`` (``max_restarts``,
            ``memory``, ``runtime_env``, ...); these override the values above.

    Returns:
        ``compute``, ``num_cpus``, ``batch_size`` and ``batch_format="pyarrow"`` (the
        format `LLMStage` works in), plus ``map_batches_kwargs``.

    Raises:
        ValueError: A count is not positive.
    """
    size: object = actors
    if isinstance(size, tuple):
        if len(size) != 2 or not all(_is_positive_int(n) for n in size) or size[0] > size[1]:
            msg = f"actors must be a positive int or a (min, max) pair of them, got {actors!r}"
            raise ValueError(msg)
    elif not _is_positive_int(size):
        msg = f"actors must be a positive int or a (min, max) pair of them, got {actors!r}"
        raise ValueError(msg)
    for name, value in (("batch_size", batch_size), ("batches_per_actor", batches_per_actor)):
        if not _is_positive_int(value):
            msg = f"{name} must be a positive int, got {value!r}"
            raise ValueError(msg)
    cpus: object = num_cpus
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus < 0:
        msg = f"num_cpus must be a number >= 0, got {num_cpus!r}"
        raise ValueError(msg)
    if isinstance(actors, tuple):
        compute = ray.data.ActorPoolStrategy(
            min_size=actors[0],
            max_size=actors[1],
            max_concurrent_calls_per_actor=batches_per_actor,
        )
    else:
        compute = ray.data.ActorPoolStrategy(
            size=actors, max_concurrent_calls_per_actor=batches_per_actor
        )
    options: dict[str, Any] = {
        "compute": compute,
        "num_cpus": num_cpus,
        "batch_size": batch_size,
        "batch_format": "pyarrow",
    }
    options.update(map_batches_kwargs)
    return options


class LLMStage:
    """A Ray Data callable class that runs one LLM call per row.

    Use it with ``Dataset.map_batches`` and an actor pool (`llm_stage_options` gives the
    arguments). Ray builds one instance per actor from ``fn_constructor_kwargs``, which it
    pickles with cloudpickle: they must be picklable, which is why `strategy` may be a
    function that builds the strategy (and its SDK client) inside the actor.

    Nothing starts in ``__init__``. At the first batch, on the event loop Ray runs the
    actor's async calls on, the stage builds the strategy, an `AdaptiveRateLimitStrategy`
    (when ``rate_limit`` or ``budget`` is given) and one `ParallelBatchProcessor`, entered
    like ``async with``; every batch after that is fed to the same processor, in one
    stream, whatever the number of batches running at once. The processor is shut down
    (strategies cleaned up, checkpoint closed) when Ray drops the actor, or by `aclose`.

    Batches are pyarrow tables (``batch_format="pyarrow"``); dicts of columns and pandas
    frames are accepted too. The returned table holds the input columns, then the output
    column and `RESULT_COLUMNS`, with fixed types (strings, ints, a bool) whatever the
    batch, so that blocks concatenate. Existing columns of those names are replaced.
    The output is the strategy's output when it is text; a structured output (a pydantic
    model, a dict) is stored as its JSON text.

    A row whose call failed has ``error`` set and a null output: errors are values, the
    job goes on. Only a failure of the stage itself (its strategy cannot be built, the
    checkpoint is unusable) raises, and fails the batches it affects.

    Args:
        strategy: The `LLMCallStrategy` every row is called with, or a function without
            arguments (sync or async) that returns it, called once in each actor. Prefer
            a function for strategies holding SDK clients, connection pools or anything
            else that should not travel through pickle (the function must be importable
            or picklable by cloudpickle, e.g. a module-level function or a
            ``functools.partial`` of one).
        prompt_column: The column holding each row's prompt (text).
        id_column: The column holding each row's id (converted to text). Ids key the
            checkpoint and the rows in flight, so they must be unique and stable across
            runs: pass one. Without it a row's id is the SHA-256 of its prompt, so rows
            with the same prompt are one item (called once, sharing the result).
        output_column: The column the output is written to.
        config: The processor's settings (retries, timeouts, ``max_workers``);
            default ``ProcessorConfig()``.
        max_workers: Calls in flight at once in each actor; overrides
            ``config.max_workers``.
        rate_limit: Keyword arguments of `AdaptiveRateLimitStrategy` (``rpm``, ``tpm``,
            ``window_seconds``, ...). With neither this nor ``budget``, the processor
            chooses its rate control from ``config`` (adaptive by default), per actor.
        budget: A shared rate-limit budget (a ``RedisBudget``), passed as
            ``AdaptiveRateLimitStrategy(budget=budget, **rate_limit)``, so that every actor
            paces against the same provider limits. It must pickle (``RedisBudget``
            pickles as its URL and options and connects on the actor's loop).
        checkpoint: A directory for the checkpoint, created if missing. Each actor writes
            its own SQLite store in it (``actor-0.sqlite``, ``actor-1.sqlite``, ...: one
            SQLite store takes one writer) and looks rows up in all of them, so a row
            committed by any actor, in this run or an earlier one, is replayed
            (``replayed=True``) instead of called again. Use a local or shared
            filesystem with working file locks, seen by every actor.
        checkpoint_version: Your version of the run (prompt template, ...); a checkpoint
            written under another version is refused.
        resume: Which stored results are replayed: `ResumePolicy.REUSE_SUCCESSES` (the
            default) or `ResumePolicy.REUSE_ALL`. To start over, use a new directory.
        processor_options: Other `ParallelBatchProcessor` arguments (``error_classifier``,
            ``middlewares``, ``observers``, ``post_processor``, ``budget`` for a spending
            limit per actor, ...).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A column name is empty, or ``resume`` is `ResumePolicy.NONE`.
    """

    def __init__(
        self,
        strategy: StrategySource,
        *,
        prompt_column: str = "prompt",
        id_column: str | None = None,
        output_column: str = "output",
        config: ProcessorConfig | None = None,
        max_workers: int | None = None,
        rate_limit: Mapping[str, Any] | None = None,
        budget: object | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_version: str | None = None,
        resume: ResumePolicy = ResumePolicy.REUSE_SUCCESSES,
        processor_options: Mapping[str, Any] | None = None,
    ) -> None:
        given: object = strategy
        if not isinstance(given, LLMCallStrategy) and not callable(given):
            msg = (
                "strategy must be an LLMCallStrategy or a function without arguments that "
                f"returns one, got {type(given).__name__}"
            )
            raise TypeError(msg)
        for name, column in (("prompt_column", prompt_column), ("output_column", output_column)):
            _check_column(name, column)
        if id_column is not None:
            _check_column("id_column", id_column)
        if output_column in RESULT_COLUMNS or output_column == prompt_column:
            msg = (
                f"output_column {output_column!r} collides with the prompt column or a "
                f"result column ({', '.join(RESULT_COLUMNS)}); choose another name"
            )
            raise ValueError(msg)
        given_config: object = config
        if given_config is not None and not isinstance(given_config, ProcessorConfig):
            msg = f"config must be a ProcessorConfig, got {type(given_config).__name__}"
            raise TypeError(msg)
        if max_workers is not None and not _is_positive_int(max_workers):
            msg = f"max_workers must be a positive int, got {max_workers!r}"
            raise ValueError(msg)
        mappings: tuple[tuple[str, object], ...] = (
            ("rate_limit", rate_limit),
            ("processor_options", processor_options),
        )
        for name, mapping in mappings:
            if mapping is not None and not isinstance(mapping, Mapping):
                msg = f"{name} must be a dict of keyword arguments, got {type(mapping).__name__}"
                raise TypeError(msg)
        reserved = {"config", "rate_limit_strategy", "checkpoint", "resume", "checkpoint_version"}
        clashes = sorted(reserved & set(processor_options or {}))
        if clashes:
            msg = (
                f"processor_options must not set {', '.join(clashes)}: use LLMStage's own "
                "arguments for them"
            )
            raise ValueError(msg)
        path: object = checkpoint
        if path is not None and not isinstance(path, str | os.PathLike):
            msg = f"checkpoint must be a directory path, got {type(path).__name__}"
            raise TypeError(msg)
        policy: object = resume
        if not isinstance(policy, ResumePolicy):
            msg = f"resume must be a ResumePolicy, got {resume!r}"
            raise TypeError(msg)
        if resume is ResumePolicy.NONE:
            msg = (
                "resume=ResumePolicy.NONE would empty only the store of each actor, not the "
                "ones other actors wrote; to start over, use a new checkpoint directory"
            )
            raise ValueError(msg)
        version: object = checkpoint_version
        if version is not None and not isinstance(version, str):
            msg = f"checkpoint_version must be a string, got {type(version).__name__}"
            raise TypeError(msg)
        self.strategy = strategy
        self.prompt_column = prompt_column
        self.id_column = id_column
        self.output_column = output_column
        self.config = config
        self.max_workers = max_workers
        self.rate_limit = dict(rate_limit) if rate_limit is not None else None
        self.budget = budget
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        self.checkpoint_version = checkpoint_version
        self.resume = resume
        self.processor_options = dict(processor_options) if processor_options else {}
        self._runtime: _Runtime | None = None

    # -- Ray's entry point ---------------------------------------------------------------------

    async def __call__(self, batch: Any) -> Any:
        """Run the batch's rows and return them with the result columns (a pyarrow table).

        Raises:
            KeyError: The prompt or id column is missing.
            TypeError: The batch is not a table, or the strategy cannot be built.
            CheckpointError: The checkpoint cannot be used.
            RuntimeError: The stage was closed, or is used from another event loop.
        """
        table = _as_table(batch)
        prompts = _column(table, self.prompt_column, "prompt_column")
        ids = _column(table, self.id_column, "id_column") if self.id_column else None
        runtime = await self._started()
        waiting: list[asyncio.Future[WorkItemResult[Any, Any]] | WorkItemResult[Any, Any]] = []
        for position, prompt in enumerate(prompts):
            raw_id = ids[position] if ids is not None else None
            waiting.append(runtime.submit(_row_id(raw_id, prompt, ids is not None), prompt))
        futures = {entry for entry in waiting if isinstance(entry, asyncio.Future)}
        if futures:
            # Not gather: a cancelled batch must not cancel futures other batches share.
            await asyncio.wait(futures)
        results = [
            entry.result() if isinstance(entry, asyncio.Future) else entry for entry in waiting
        ]
        return _with_results(table, results, self.output_column)

    async def aclose(self) -> None:
        """Finish the rows in flight, then shut the processor down (cleans up the strategy,
        closes the checkpoint). Ray does it when it drops the actor; later calls start
        afresh."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.aclose()

    # -- pickling and lifetime -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_runtime"] = None  # a running processor stays where it runs
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:
        runtime = self.__dict__.get("_runtime")
        if runtime is not None:
            runtime.close_soon()

    def __repr__(self) -> str:
        state = "running" if self._runtime is not None else "not started"
        return (
            f"LLMStage(prompt_column={self.prompt_column!r}, id_column={self.id_column!r}, "
            f"output_column={self.output_column!r}, checkpoint={self.checkpoint!r}, {state})"
        )

    async def _started(self) -> _Runtime:
        runtime = self._runtime
        if runtime is None:
            # Set before the first await: concurrent first batches share one runtime.
            runtime = self._runtime = _Runtime(self)
        elif runtime.loop is not asyncio.get_running_loop():
            msg = (
                "This LLMStage runs its processor on another event loop; call aclose() on "
                "that loop before using the stage from this one"
            )
            raise RuntimeError(msg)
        try:
            await asyncio.shield(runtime.started)
        except BaseException:
            if self._runtime is runtime and runtime.started.done():
                self._runtime = None  # the next batch tries again
            raise
        return runtime


# -- the processor of one actor ---------------------------------------------------------------


class _Pending:
    __slots__ = ("future", "prompt")

    def __init__(self, prompt: str, future: asyncio.Future[WorkItemResult[Any, Any]]) -> None:
        self.prompt = prompt
        self.future = future


class _Runtime:
    """One actor's processor and the stream every batch feeds.

    Rows in flight are kept by id: a row whose id is in flight already (the same block
    sent again, or a duplicate) waits for that call instead of making another.
    """

    def __init__(self, stage: LLMStage) -> None:
        # The stage is not kept: Ray drops the actor's stage to shut it down (`__del__`).
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[LLMWorkItem[str, Any, None] | None] = asyncio.Queue()
        self.pending: dict[str, _Pending] = {}
        self.strategy: LLMCallStrategy[Any] | None = None
        self.processor: ParallelBatchProcessor[str, Any, None] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.closed = False
        self.started: asyncio.Future[None] = asyncio.ensure_future(self._start(_settings(stage)))

    async def _start(self, settings: dict[str, Any]) -> None:
        strategy = await _build_strategy(settings["strategy"])
        config = settings["config"] or ProcessorConfig()
        if settings["max_workers"] is not None:
            config = dataclasses.replace(config, max_workers=settings["max_workers"])
        rate_limit_strategy = None
        if settings["rate_limit"] is not None or settings["budget"] is not None:
            options: dict[str, Any] = dict(settings["rate_limit"] or {})
            if settings["budget"] is not None:
                options["budget"] = settings["budget"]
            rate_limit_strategy = AdaptiveRateLimitStrategy(**options)
        store = None
        if settings["checkpoint"] is not None:
            store = _ShardedCheckpointStore(settings["checkpoint"])
        processor: ParallelBatchProcessor[str, Any, None] = ParallelBatchProcessor(
            config=config,
            rate_limit_strategy=rate_limit_strategy,
            checkpoint=store,
            resume=settings["resume"],
            checkpoint_version=settings["checkpoint_version"],
            **settings["processor_options"],
        )
        await processor.__aenter__()
        self.strategy = strategy
        self.processor = processor

    def submit(
        self, item_id: str | None, prompt: object
    ) -> asyncio.Future[WorkItemResult[Any, Any]] | WorkItemResult[Any, Any]:
        """The future result of one row, or at once the failed result of an invalid row."""
        if self.closed:
            msg = "This LLMStage was closed"
            raise RuntimeError(msg)
        if not isinstance(prompt, str):
            what = "null" if prompt is None else type(prompt).__name__
            return _invalid(item_id or "", f"the row's prompt is {what}, not text")
        if item_id is None:
            return _invalid("", "the row's id is null")
        pending = self.pending.get(item_id)
        if pending is not None:
            if pending.prompt == prompt:
                return pending.future
            return _invalid(
                item_id,
                f"id {item_id!r} is in flight already with another prompt; ids must be unique",
            )
        assert self.strategy is not None
        future: asyncio.Future[WorkItemResult[Any, Any]] = self.loop.create_future()
        self.pending[item_id] = _Pending(prompt, future)
        self.queue.put_nowait(LLMWorkItem(item_id=item_id, strategy=self.strategy, prompt=prompt))
        if self.pump is None or self.pump.done():
            self.pump = self.loop.create_task(self._pump())
        return future

    async def _source(self) -> Any:
        while True:
            item = await self.queue.get()
            if item is None:  # aclose(): the stream ends once the rows in flight have
                return
            yield item

    async def _pump(self) -> None:
        processor = self.processor
        assert processor is not None
        try:
            async for result in processor.stream(self._source()):
                pending = self.pending.pop(result.item_id, None)
                if pending is not None and not pending.future.done():
                    pending.future.set_result(result)
        except asyncio.CancelledError:
            self._fail_all(None)
            raise
        except BaseException as exc:
            # The stage itself failed (the checkpoint, a strategy the processor refuses):
            # every batch waiting now raises it; the next batch starts a new stream.
            logger.error("The LLMStage's processor stopped: %s: %s", type(exc).__name__, exc)
            self._fail_all(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._fail_all(None)

    def _fail_all(self, exc: BaseException | None) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            if entry.future.done():
                continue
            if exc is None:
                entry.future.cancel()
            else:
                entry.future.set_exception(exc)

    async def aclose(self) -> None:
        self.closed = True
        try:
            await self.started
        except Exception:
            return
        pump = self.pump
        if pump is not None and not pump.done():
            self.queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(pump), _CLOSE_TIMEOUT)
            except TimeoutError:
                pump.cancel()
                await asyncio.wait([pump])
        if self.processor is not None:
            await self.processor.__aexit__(None, None, None)

    def close_soon(self) -> None:
        """Close from any thread, without raising: waits (bounded) when called from another
        thread than the loop's, as Ray does when it drops the actor."""
        loop = self.loop
        try:
            if loop.is_closed() or not loop.is_running():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                task = loop.create_task(self.aclose())
                _closing.add(task)  # the loop holds tasks weakly
                task.add_done_callback(_closing.discard)
                return
            future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            future.result(timeout=_CLOSE_TIMEOUT + 5.0)
        except Exception:
            logger.warning("Closing the LLMStage's processor failed", exc_info=True)


def _settings(stage: LLMStage) -> dict[str, Any]:
    return {
        "strategy": stage.strategy,
        "config": stage.config,
        "max_workers": stage.max_workers,
        "rate_limit": stage.rate_limit,
        "budget": stage.budget,
        "checkpoint": stage.checkpoint,
        "checkpoint_version": stage.checkpoint_version,
        "resume": stage.resume,
        "processor_options": stage.processor_options,
    }


async def _build_strategy(source: StrategySource) -> LLMCallStrategy[Any]:
    if isinstance(source, LLMCallStrategy):
        return source
    built: Any = source()
    if inspect.isawaitable(built):
        built = await built
    if not hasattr(built, "execute"):
        msg = f"the strategy factory must return an LLMCallStrategy, got {type(built).__name__}"
        raise TypeError(msg)
    strategy: LLMCallStrategy[Any] = built
    return strategy


# -- tables --------------------------------------------------------------------------------------


def _as_table(batch: Any) -> Any:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, Mapping):
        return pa.table({name: _to_arrow(values) for name, values in batch.items()})
    data_frame = loaded("pandas", "DataFrame")  # a pandas batch means pandas is imported
    if data_frame is not None and isinstance(batch, data_frame):
        return pa.Table.from_pandas(batch, preserve_index=False)
    msg = (
        "LLMStage expects pyarrow batches (map_batches(..., batch_format='pyarrow')), a dict "
        f"of columns or a pandas DataFrame, got {type(batch).__name__}"
    )
    raise TypeError(msg)


def _to_arrow(values: Any) -> Any:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    tolist = getattr(values, "tolist", None)  # numpy arrays
    return pa.array(tolist() if callable(tolist) else list(values))


def _column(table: Any, name: str | None, option: str) -> list[Any]:
    if name not in table.column_names:
        msg = (
            f"The batch has no column {name!r} ({option}); its columns are "
            f"{', '.join(table.column_names) or 'none'}"
        )
        raise KeyError(msg)
    values: list[Any] = table.column(name).to_pylist()
    return values


def _row_id(raw: object, prompt: object, from_column: bool) -> str | None:
    if from_column:
        if raw is None:
            return None
        if isinstance(raw, bytes):
            return raw.decode("utf-8", "backslashreplace")
        text = str(raw)
        return text if text.strip() else None
    if not isinstance(prompt, str):
        return None
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def _invalid(item_id: str, reason: str) -> WorkItemResult[Any, Any]:
    return WorkItemResult(
        item_id=item_id,
        success=False,
        error=f"ValueError: {reason}",
        token_usage={},
        error_category=INVALID_INPUT,
    )


def _output_text(output: object) -> str | None:
    if output is None or isinstance(output, str):
        return output
    dump_json = getattr(output, "model_dump_json", None)
    if callable(dump_json):
        text: str = dump_json()
        return text
    return json.dumps(output, default=str, ensure_ascii=False)


def _with_results(table: Any, results: Sequence[WorkItemResult[Any, Any]], output: str) -> Any:
    usages = [result.token_usage or {} for result in results]
    columns: list[tuple[str, Any]] = [
        (output, pa.array([_output_text(r.output) for r in results], pa.string())),
        ("error", pa.array([r.error for r in results], pa.string())),
        ("error_category", pa.array([r.error_category for r in results], pa.string())),
        ("attempts", pa.array([r.attempts for r in results], pa.int64())),
    ]
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        columns.append((key, pa.array([_count(u.get(key)) for u in usages], pa.int64())))
    columns.append(("replayed", pa.array([r.replayed for r in results], pa.bool_())))
    for name, values in columns:
        index = table.schema.get_field_index(name)
        if index >= 0:
            table = table.set_column(index, name, values)
        else:
            table = table.append_column(name, values)
    return table


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- the checkpoint: one SQLite store per actor, read by all -----------------------------------


class _ShardedCheckpointStore:
    """A `CheckpointStore` for a pool of actors sharing one directory.

    An SQLite store takes one writer (its lock file), so each actor writes its own shard,
    ``actor-<k>.sqlite``: the first ``k`` whose lock it gets, trying the one it had last
    first. Lookups read the actor's shard, then, for ids it has no success for, every
    other shard (read-only, while their writers go on), so a row committed by any actor of
    this run or an earlier one is found; a success wins over other outcomes.

    The processor runs one session (one stream) per actor and sees an id at most once in
    it. A row seen again in the same session (Ray sending the block again) is looked up
    like one from an earlier session, so its stored result is replayed instead of being
    reported as a duplicate.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(os.path.abspath(directory))
        self._store: SQLiteCheckpointStore | None = None
        self._shard: Path | None = None
        self._last_shard: int | None = None
        self._session = 0
        self._version = ""
        # Readers of the other shards, used only on the reader thread.
        self._readers: dict[Path, SQLiteCheckpointReader] = {}
        self._reader_thread: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def shard(self) -> Path | None:
        """The shard this actor writes (``None`` until opened)."""
        return self._shard

    async def open(self, *, reset: bool = False) -> dict[str, str]:
        if reset:
            msg = "A sharded checkpoint cannot be reset; use a new checkpoint directory"
            raise CheckpointError(msg)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._make_directory)
        candidates: Iterable[int] = range(_MAX_SHARDS)
        if self._last_shard is not None:
            candidates = [self._last_shard, *candidates]
        for index in candidates:
            path = self.directory / f"{_SHARD_PREFIX}{index}{_SHARD_SUFFIX}"
            store = SQLiteCheckpointStore(path)
            try:
                meta = await store.open()
            except CheckpointLockedError:
                continue
            self._store, self._shard, self._last_shard = store, path, index
            self._session = _int(meta.get(SESSION_KEY))
            self._version = meta.get(VERSION_KEY, "")
            self._reader_thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="async-batch-llm-ray-checkpoint"
            )
            return meta
        msg = f"Every one of the {_MAX_SHARDS} checkpoint shards in {self.directory} is locked"
        raise CheckpointLockedError(msg)

    def _make_directory(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            msg = (
                f"The Ray stage's checkpoint is a directory (one store per actor), but "
                f"{self.directory} is a file; pass a directory path"
            )
            raise CheckpointError(msg)
        self.directory.mkdir(parents=True, exist_ok=True)

    async def save_meta(self, meta: Mapping[str, str]) -> None:
        store = self._open_store()
        await store.save_meta(meta)
        if SESSION_KEY in meta:
            self._session = _int(meta[SESSION_KEY])
        if VERSION_KEY in meta:
            self._version = meta[VERSION_KEY]

    async def lookup(self, item_ids: Sequence[str]) -> list[CheckpointEntry | None]:
        store = self._open_store()
        entries = await store.lookup(item_ids)
        session = self._session
        missing: list[str] = []
        for item_id, entry in zip(item_ids, entries, strict=True):
            if entry is not None and entry.session == session:
                entry.session = 0  # seen earlier in this session: replay, not a duplicate
            if entry is None or entry.state is not EntryState.SUCCEEDED:
                missing.append(item_id)
        if not missing:
            return entries
        thread = self._reader_thread
        assert thread is not None
        loop = asyncio.get_running_loop()
        others = await loop.run_in_executor(thread, self._lookup_others, missing)
        if not others:
            return entries
        merged: list[CheckpointEntry | None] = []
        for item_id, entry in zip(item_ids, entries, strict=True):
            other = others.get(item_id)
            if other is not None and (
                entry is None
                or (other.state is EntryState.SUCCEEDED and entry.state is not EntryState.SUCCEEDED)
            ):
                entry = other
            merged.append(entry)
        return merged

    async def record(self, entries: Sequence[CheckpointEntry]) -> None:
        await self._open_store().record(entries)

    async def close(self) -> None:
        store, self._store = self._store, None
        thread, self._reader_thread = self._reader_thread, None
        try:
            if thread is not None:
                await asyncio.get_running_loop().run_in_executor(thread, self._close_readers)
                thread.shutdown(wait=True)
        finally:
            if store is not None:
                await store.close()

    def __repr__(self) -> str:
        return f"<sharded SQLite checkpoint {str(self.directory)!r}, writing {self._shard}>"

    def _open_store(self) -> SQLiteCheckpointStore:
        store = self._store
        if store is None:
            msg = f"The checkpoint in {self.directory} is not open"
            raise CheckpointError(msg)
        return store

    # Below: the reader thread.

    def _lookup_others(self, item_ids: list[str]) -> dict[str, CheckpointEntry]:
        found: dict[str, CheckpointEntry] = {}
        for path in sorted(self.directory.glob(f"{_SHARD_PREFIX}*{_SHARD_SUFFIX}")):
            if path == self._shard:
                continue
            reader = self._reader(path)
            if reader is None:
                continue
            for entry in reader.lookup(item_ids):
                if entry is None:
                    continue
                entry.session = 0  # another store's numbering
                known = found.get(entry.item_id)
                if known is None or (
                    entry.state is EntryState.SUCCEEDED and known.state is not EntryState.SUCCEEDED
                ):
                    found[entry.item_id] = entry
        return found

    def _reader(self, path: Path) -> SQLiteCheckpointReader | None:
        """A reader of another shard; ``None`` while it holds no store yet."""
        reader = self._readers.get(path)
        if reader is not None:
            return reader
        reader = SQLiteCheckpointReader._if_written(path)
        if reader is None:
            return None  # created but not written yet: looked at again next time
        try:
            meta = reader.meta()
            stored_format = meta.get(FORMAT_KEY)
            if stored_format not in (None, FORMAT):
                msg = (
                    f"Checkpoint shard {path} was written in format {stored_format!r}; this "
                    f"version of async-batch-llm reads {FORMAT!r}. Use a new checkpoint "
                    "directory"
                )
                raise CheckpointError(msg)
            if _int(meta.get(SESSION_KEY)) and meta.get(VERSION_KEY, "") != self._version:
                msg = (
                    f"The checkpoint shard {path} holds results of a run with "
                    f"checkpoint_version={meta.get(VERSION_KEY) or None!r}; this run has "
                    f"checkpoint_version={self._version or None!r}. Nothing was replayed. Use "
                    "a new checkpoint directory, or the version those results were made with."
                )
                raise CheckpointMismatchError(msg)
        except BaseException:
            reader.close()
            raise
        self._readers[path] = reader
        return reader

    def _close_readers(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            reader.close()


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_column(option: str, name: object) -> None:
    if not isinstance(name, str) or not name:
        msg = f"{option} must be a non-empty column name, got {name!r}"
        raise ValueError(msg) if isinstance(name, str) else TypeError(msg)
