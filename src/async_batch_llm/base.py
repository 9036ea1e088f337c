"""Data types of a batch and the abstract `BatchProcessor` (queue and worker-pool lifecycle)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

if TYPE_CHECKING:
    from async_batch_llm.llm_strategies import LLMCallStrategy

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TContext = TypeVar("TContext")


class TokenUsage(TypedDict, total=False):
    """Token counts of one call or one item; every key is optional (read with ``.get(k, 0)``)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int


TOKEN_KEYS: tuple[str, ...] = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")


def _zero_usage() -> TokenUsage:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


@dataclass
class RetryState:
    """Scratchpad shared by every attempt of one work item (and by ``on_error``).

    A strategy can remember what went wrong on earlier attempts, e.g. to switch to a
    stronger model after two validation failures.
    """

    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under ``key``, or ``default``."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.data[key] = value

    def delete(self, key: str, raise_if_missing: bool = False) -> None:
        """Remove ``key``; a missing key is ignored unless ``raise_if_missing`` is true."""
        if raise_if_missing:
            del self.data[key]
        else:
            self.data.pop(key, None)

    def clear(self) -> None:
        """Remove every key."""
        self.data.clear()

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __repr__(self) -> str:
        return f"RetryState({self.data!r})"


@dataclass
class LLMResponse:
    """A provider-neutral model response: text, token counts, metadata and the raw object."""

    text: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int = 0
    metadata: dict[str, Any] | None = None
    raw: Any = None

    @property
    def token_usage(self) -> TokenUsage:
        """The counts as a :class:`TokenUsage` dict (``cached_input_tokens`` only when non-zero)."""
        usage: TokenUsage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_input_tokens:
            usage["cached_input_tokens"] = self.cached_input_tokens
        return usage


@dataclass
class LLMWorkItem(Generic[TInput, TOutput, TContext]):
    """One unit of work: an id, the strategy that runs it, the prompt and a caller context.

    Raises:
        ValueError: ``item_id`` is not a non-blank string, or ``strategy`` is ``None``.
        TypeError: ``prompt`` is not a string.
    """

    item_id: str
    strategy: LLMCallStrategy[TOutput]
    prompt: str = ""
    context: TContext | None = None

    def __post_init__(self) -> None:
        if not self.item_id or not isinstance(self.item_id, str):
            msg = f"item_id must be a non-empty string, got {self.item_id!r}"
            raise ValueError(msg)
        if not self.item_id.strip():
            msg = f"item_id must not be blank (whitespace only), got {self.item_id!r}"
            raise ValueError(msg)
        if self.strategy is None:
            msg = (
                f"strategy must not be None for item {self.item_id!r}: "
                "pass an LLMCallStrategy instance"
            )
            raise ValueError(msg)
        if not isinstance(self.prompt, str):
            msg = (
                f"prompt must be a str for item {self.item_id!r}, "
                f"got {type(self.prompt).__name__}"
            )
            raise TypeError(msg)


@dataclass
class WorkItemResult(Generic[TOutput, TContext]):
    """The final outcome of one work item: exactly one per accepted item."""

    item_id: str
    success: bool
    output: TOutput | None = None
    error: str | None = None
    context: TContext | None = None
    token_usage: TokenUsage = field(default_factory=_zero_usage)
    gemini_safety_ratings: dict[str, str] | None = None


@dataclass
class BatchResult(Generic[TOutput, TContext]):
    """All results of a batch with summary counts, always recomputed from ``results``."""

    results: list[WorkItemResult[TOutput, TContext]]
    total_items: int = 0
    succeeded: int = 0
    failed: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cached_tokens: int = 0

    def __post_init__(self) -> None:
        results = self.results
        self.total_items = len(results)
        self.succeeded = sum(1 for r in results if r.success)
        self.failed = self.total_items - self.succeeded
        self.total_input_tokens = sum(r.token_usage.get("input_tokens", 0) for r in results)
        self.total_output_tokens = sum(r.token_usage.get("output_tokens", 0) for r in results)
        self.total_cached_tokens = sum(
            r.token_usage.get("cached_input_tokens", 0) for r in results
        )

    def cache_hit_rate(self) -> float:
        """Percentage of input tokens served from a provider cache (0.0 when there were none)."""
        if self.total_input_tokens == 0:
            return 0.0
        return self.total_cached_tokens / self.total_input_tokens * 100.0

    def effective_input_tokens(self) -> int:
        """Input tokens with cached ones counted at a 90% discount."""
        return self.total_input_tokens - int(self.total_cached_tokens * 0.9)


@dataclass
class ProcessingStats:
    """Running counters of a batch; ``get_stats()`` returns a copy as a plain dict."""

    total: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    start_time: float | None = None
    error_counts: dict[str, int] = field(default_factory=dict)
    rate_limit_count: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    total_cached_tokens: int = 0

    def copy(self) -> dict[str, Any]:
        """Return the counters as a new dict (``error_counts`` copied shallowly)."""
        return {
            "total": self.total,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "start_time": self.start_time,
            "error_counts": dict(self.error_counts),
            "rate_limit_count": self.rate_limit_count,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "total_cached_tokens": self.total_cached_tokens,
        }


PostProcessorFunc = Callable[[WorkItemResult[TOutput, TContext]], Awaitable[None] | None]
ProgressCallbackFunc = Callable[[int, int, str], Awaitable[None] | None]
