"""Value types shared by the data model, the strategies and the errors.

They live here, below every public module, so that ``base``, ``llm_strategies``,
``core.protocols`` and ``strategies.errors`` can all use them without importing each other;
each is re-exported at its public home, ``async_batch_llm.base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypedDict, TypeVar

__all__ = [
    "LLMResponse",
    "RetryState",
    "TContext",
    "TInput",
    "TOutput",
    "TokenUsage",
    "WorkItemResult",
    "empty_usage",
    "split_error",
]

_PUBLIC_MODULE = "async_batch_llm.base"

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TContext = TypeVar("TContext")


class TokenUsage(TypedDict, total=False):
    """Token counts of one call or one item; every key is optional (read with ``.get(k, 0)``)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int


#: The usage key that marks a request made through a provider batch job (a count of 1):
#: pricing and cost functions price it at batch rates, and a checkpoint entry keeps it.
BATCH_USAGE_KEY: Final = "batch_requests"


@dataclass
class RetryState:
    """Scratchpad shared by every attempt of one work item (and by ``on_error``).

    A strategy can remember what went wrong on earlier attempts, e.g. to switch to a
    stronger model after two validation failures.
    """

    data: dict[str, Any] = field(default_factory=dict)
    """The stored values; prefer `get`, `set` and `delete`."""

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under `key`, or `default`."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store `value` under `key`."""
        self.data[key] = value

    def delete(self, key: str, raise_if_missing: bool = False) -> None:
        """Remove `key`; a missing key is ignored unless `raise_if_missing` is true.

        Raises:
            KeyError: `key` is missing and `raise_if_missing` is true.
        """
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
    """The generated text."""
    input_tokens: int
    """Tokens of the prompt."""
    output_tokens: int
    """Tokens generated."""
    total_tokens: int
    """Input plus output tokens, as the provider reports them."""
    cached_input_tokens: int = 0
    """Input tokens served from a provider-side cache."""
    metadata: dict[str, Any] | None = None
    """Provider details such as the finish reason or safety ratings."""
    raw: Any = None
    """The SDK's own response object."""

    @property
    def token_usage(self) -> TokenUsage:
        """The counts as a `TokenUsage` dict (`cached_input_tokens` only when non-zero)."""
        usage: TokenUsage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_input_tokens:
            usage["cached_input_tokens"] = self.cached_input_tokens
        return usage


def split_error(error: str) -> tuple[str, str]:
    """The exception class and message of a result's ``"<Class>: <message>"`` error text
    (``"Error"`` and the whole text when it is not in that form)."""
    kind, sep, message = error.partition(": ")
    if not sep or not kind.isidentifier():
        return "Error", error
    return kind, message


def empty_usage() -> TokenUsage:
    """A new usage dict of a result that used no tokens (three zero counts)."""
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


@dataclass
class WorkItemResult(Generic[TOutput, TContext]):
    """The final outcome of one work item: exactly one per accepted item."""

    item_id: str
    """The id of the work item."""
    success: bool
    """Whether the item produced an output."""
    output: TOutput | None = None
    """What the strategy returned (``None`` for a failure)."""
    error: str | None = None
    """``"<ExceptionClass>: <message>"`` of the error the item failed with."""
    context: TContext | None = None
    """The work item's context, passed through."""
    token_usage: TokenUsage = field(default_factory=empty_usage)
    """Tokens of every attempt of the item, failed ones included."""
    gemini_safety_ratings: dict[str, str] | None = None
    """Kept for compatibility; the processor does not fill it in."""
    replayed: bool = False
    """Whether the result was read back from a checkpoint store instead of produced by a
    call in this run (`token_usage` is then what the item cost when it was produced; the
    batch's token totals and statistics leave it out, as this run did not spend it)."""
    attempts: int = 0
    """How many calls were made for the item (``0``: none, e.g. it was skipped or a budget
    or quota stopped it first). A replayed result keeps the count of the run that made it."""
    error_category: str | None = None
    """What kind of failure ended the item (``None`` for a success), as the error classifier
    labels it: ``"rate_limit"``, ``"timeout"``, ``"validation_error"``, ``"quota_exhausted"``,
    ``"budget_exhausted"``, ``"skipped"``, ... Results built by middleware may leave it unset."""
    via: str = "online"
    """How the output was obtained: ``"online"`` (a call of the strategy) or ``"batch"`` (a
    request of a provider batch job, ``ProcessorConfig(mode="batch" | "auto")``). A replayed
    result keeps the way the run that made it obtained it."""


for _public in (TokenUsage, RetryState, LLMResponse, WorkItemResult):
    _public.__module__ = _PUBLIC_MODULE
del _public
