"""Strategies: how one work item becomes one LLM call.

Subclass `LLMCallStrategy` and implement `execute`; the
processor calls the other hooks at the points described on each method. Two strategies are
built in: `GeminiStrategy` (an `LLMModel` plus a response
parser) and `PydanticAIStrategy` (a pydantic-ai agent).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from pydantic import BaseModel

from async_batch_llm._internal.optional import loaded
from async_batch_llm._internal.rate_control.scope import RateScope
from async_batch_llm._internal.usage import FAILED_USAGE_ATTR, add_usage, usage_of_object
from async_batch_llm._internal.values import LLMResponse, RetryState, TokenUsage
from async_batch_llm.checkpoint._identity import fingerprint, stable_value
from async_batch_llm.core.protocols import AgentLike, LLMModel, ManagedLLMModel
from async_batch_llm.strategies.errors import TokenTrackingError

if TYPE_CHECKING:
    from pydantic_ai import Agent

    from async_batch_llm.batch.base import BatchAPI


def __getattr__(name: str) -> Any:
    # ``Agent`` (pydantic-ai's, or ``typing.Any`` without it) is imported on first use:
    # pydantic-ai takes about a second to import.
    if name == "Agent":
        try:
            from pydantic_ai import Agent as agent_class
        except ImportError:  # pydantic-ai is an optional extra
            agent_class = Any  # type: ignore[assignment,misc]
        globals()["Agent"] = agent_class
        return agent_class
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


TOutput = TypeVar("TOutput")

__all__ = ["Agent", "LLMCallStrategy", "GeminiStrategy", "PydanticAIStrategy", "TOutput"]

logger = logging.getLogger(__name__)

# Attributes whose integer value marks an object as a usage record rather than a method.
_USAGE_COUNT_NAMES: Final = (
    "input_tokens",
    "output_tokens",
    "request_tokens",
    "response_tokens",
    "total_tokens",
)


class LLMCallStrategy(ABC, Generic[TOutput]):
    """How to call a model for one work item.

    The processor calls `prepare` once per strategy instance before its first attempt,
    `execute` once per attempt, `on_error` after every failed attempt,
    `dry_run` instead of `execute` when ``ProcessorConfig.dry_run`` is set, and
    `cleanup` once per prepared instance when the processor shuts down.
    """

    async def prepare(self) -> None:
        """Set up shared resources (a client, a provider cache). Called once per instance."""

    @abstractmethod
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Make one call and return ``(output, token_usage)``.

        Args:
            prompt: The work item's prompt.
            attempt: 1 for the first call of the item, then 2, 3, ... (rate-limited calls count).
            timeout: The per-attempt deadline the processor enforces, in seconds.
            state: The item's `RetryState`, shared by all of its attempts.

        To have the tokens of a failed call counted, store its usage dict on the exception as
        ``exc.__dict__["_failed_token_usage"]`` (or raise
        `TokenTrackingError` from it).
        """

    async def cleanup(self) -> None:
        """Release what `prepare` set up. Called once per prepared instance."""

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        """Observe a failed attempt before it is classified and retried (or not)."""

    def rate_limit_scope(self) -> RateScope | None:
        """The provider, API key and model this strategy's calls count against.

        Used by `AdaptiveRateLimitStrategy` to pace and
        pause each scope on its own. ``None`` (the default) gives every strategy class one
        scope of its own.
        """
        return None

    def estimate_tokens(self, prompt: str) -> int:
        """Tokens a call for ``prompt`` may use, booked against a tokens-per-minute budget.

        The estimate is reconciled with the reported usage after the call. The default
        counts about four characters per token; override it to add the output tokens you
        reserve (``max_tokens``) or to use a real tokenizer.
        """
        return len(prompt) // 4 + 1

    def checkpoint_identity(self) -> object:
        """What this strategy calls, for checkpoints: the provider, model and options.

        A checkpoint replays an item's stored result only for a strategy with the same
        identity, and refuses a store written with another one. Return JSON-like data (a
        dict of strings and numbers, typically) that changes when the outputs would:
        another model, temperature or system prompt. Leave code out of it, so that editing
        the strategy does not re-run everything. ``None`` (the default) identifies the
        strategy by its class only; the built-in strategies describe their model and
        settings.
        """
        return None

    def batch_api(self) -> BatchAPI[TOutput] | None:
        """The provider batch API this strategy's calls can go through, or ``None``.

        Used with ``ProcessorConfig(mode="batch" | "auto")``: items of a strategy that
        returns a `BatchAPI` are submitted as requests of provider batch jobs instead of
        being called one by one. ``None`` (the default) keeps the strategy online (in
        ``"auto"`` mode; ``"batch"`` mode refuses it). Called once per strategy object.
        """
        return None

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """Return placeholder output without calling a model (``ProcessorConfig.dry_run``)."""
        output: Any = f"[DRY-RUN] Mock output for prompt: {prompt[:50]}..."
        return output, {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}


def _record_failed_usage(exc: Exception, usage: TokenUsage) -> None:
    """Attach ``usage`` to ``exc`` as ``_failed_token_usage`` (the 0.7.2 convention).

    An exception without a ``__dict__`` cannot carry it: a `TokenTrackingError`
    chained from it is raised instead. Called inside the ``except`` block that re-raises.
    """
    attributes = getattr(exc, "__dict__", None)
    if attributes is None:
        raise TokenTrackingError(str(exc), token_usage=usage) from exc
    attributes.setdefault(FAILED_USAGE_ATTR, usage)


class GeminiStrategy(LLMCallStrategy[TOutput]):
    """Calls an `LLMModel` (e.g. ``GeminiModel``) and parses its reply.

    Args:
        model: Generates the response; a ``ManagedLLMModel`` (e.g. ``GeminiCachedModel``) is
            prepared and cleaned up with the strategy.
        response_parser: Turns the `LLMResponse` into the output.
            When it raises, the tokens the call used are recorded on its exception, so a
            retried parse failure still counts them.
        temperature: Passed to every ``generate`` call.
    """

    def __init__(
        self,
        model: LLMModel,
        response_parser: Callable[[LLMResponse], TOutput],
        *,
        temperature: float = 0.0,
    ) -> None:
        self.model = model
        self.response_parser = response_parser
        self.temperature = temperature

    async def prepare(self) -> None:
        """Prepare the model when it is a ``ManagedLLMModel`` (e.g. create its cache)."""
        if isinstance(self.model, ManagedLLMModel):
            await self.model.prepare()

    async def cleanup(self) -> None:
        """Clean up the model when it is a ``ManagedLLMModel``."""
        if isinstance(self.model, ManagedLLMModel):
            await self.model.cleanup()

    def rate_limit_scope(self) -> RateScope | None:
        """``gemini`` + the client's API key + the model name, when the model exposes them."""
        model_name = getattr(self.model, "_model", None)
        if not isinstance(model_name, str):
            return None
        api_client = getattr(getattr(self.model, "_client", None), "_api_client", None)
        api_key = getattr(api_client, "api_key", None)
        return RateScope.from_api_key(
            provider="gemini",
            api_key=api_key if isinstance(api_key, str) else None,
            model=model_name.removeprefix("models/"),
        )

    def batch_api(self) -> BatchAPI[TOutput] | None:
        """Gemini Batch Mode (inline requests) for a `GeminiModel` on a google-genai
        client; ``None`` for other models (a cached model's requests stay online)."""
        from async_batch_llm.models import GeminiModel, _is_genai_client

        model = self.model
        if type(model) is not GeminiModel or not _is_genai_client(model._client):
            return None
        from async_batch_llm.batch.gemini import GeminiBatchAPI

        config = model.batch_request_config(temperature=self.temperature)
        return GeminiBatchAPI(model._client, model._model, config, self.response_parser)

    def checkpoint_identity(self) -> object:
        """The model's identity (its ``checkpoint_identity()``, else its class), the
        temperature and the parser's qualified name."""
        return {
            "model": _identity_of(self.model),
            "temperature": self.temperature,
            "parser": stable_value(self.response_parser),
        }

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Generate a response for ``prompt`` and return ``(parsed output, token usage)``.

        Errors from the model propagate unchanged; a parser error carries the call's tokens.
        """
        response = await self.model.generate(prompt, temperature=self.temperature)
        usage = response.token_usage
        try:
            output = self.response_parser(response)
        except Exception as exc:
            _record_failed_usage(exc, usage)
            raise
        return output, usage


class PydanticAIStrategy(LLMCallStrategy[TOutput]):
    """Runs a pydantic-ai ``Agent`` (or any object with ``async run(prompt)``) per attempt.

    The agent's output (e.g. a pydantic model when the agent has an ``output_type``) is the
    item's output; the run's usage is its token usage.

    Retries: this strategy makes one agent run per attempt and the processor owns retrying
    failed runs. Inside a run, pydantic-ai may still ask the model again when the output
    fails validation (the agent's output retry budget, ``retries={"output": n}``, 1 by
    default); all those requests are one attempt here, and their tokens are counted. When
    the agent gives up it raises ``UnexpectedModelBehavior``, which the processor retries
    at once as a validation error. The provider SDK clients pydantic-ai builds retry failed
    HTTP requests themselves (OpenAI and Anthropic: twice, 429s included), which would hide
    rate limits from the processor's shared cooldown; so every run of a pydantic-ai agent is
    sent with ``model_settings={"max_retries": 0}`` (a run-level setting, so it overrides a
    ``max_retries`` set on the agent or model). Pass ``sdk_retries=True`` to leave the SDK's
    retries, or the agent's own ``max_retries``, in charge.

    Failed runs: the tokens of the model responses a failed run received (e.g. two invalid
    outputs before ``UnexpectedModelBehavior``) are recorded on the raised exception as
    ``_failed_token_usage``, read through ``pydantic_ai.capture_run_messages``.

    Args:
        agent: The agent. Any object with ``async run(prompt)`` returning a result with
            ``output`` and ``usage`` works (e.g. `MockAgent`).
        sdk_retries: Let the provider SDK retry failed requests inside a run.

    Raises:
        ImportError: pydantic-ai is not installed.
    """

    def __init__(
        self, agent: Agent[Any, TOutput] | AgentLike[Any], *, sdk_retries: bool = False
    ) -> None:
        if _pydantic_ai_missing():
            msg = (
                "pydantic-ai is required for PydanticAIStrategy: install it with "
                "`pip install 'pydantic-ai-slim[openai,anthropic,google]'`"
            )
            raise ImportError(msg)
        self.agent = agent
        self.sdk_retries = sdk_retries
        # The real type, not isinstance: a ``Mock(spec=Agent)`` is not a pydantic-ai agent and
        # is called with the prompt only. Its class is loaded: whoever built the agent did.
        abstract_agent = loaded("pydantic_ai.agent", "AbstractAgent")
        self._is_pydantic_ai_agent = abstract_agent is not None and issubclass(
            type(agent), abstract_agent
        )

    def rate_limit_scope(self) -> RateScope | None:
        """The agent model's provider (``system``), the provider client's API key and model."""
        model = getattr(self.agent, "model", None)
        provider = getattr(model, "system", None)
        model_name = getattr(model, "model_name", None)
        if not isinstance(provider, str) or not isinstance(model_name, str):
            return None
        api_key = getattr(getattr(model, "client", None), "api_key", None)
        return RateScope.from_api_key(
            provider=provider,
            api_key=api_key if isinstance(api_key, str) else None,
            model=model_name,
        )

    def checkpoint_identity(self) -> object:
        """The agent's provider, model, model settings, output type and instructions.

        An object that is not a pydantic-ai agent is identified by its class and its own
        ``checkpoint_identity()``, when it has one.
        """
        agent: Any = self.agent
        if not self._is_pydantic_ai_agent:
            return {"agent": _identity_of(agent)}
        model = getattr(agent, "model", None)
        prompts = [getattr(agent, "_instructions", None), getattr(agent, "_system_prompts", None)]
        return {
            "provider": getattr(model, "system", None),
            "model": model if isinstance(model, str) else getattr(model, "model_name", None),
            "model_settings": stable_value(getattr(agent, "model_settings", None)),
            "output_type": stable_value(getattr(agent, "output_type", None)),
            "instructions": fingerprint({"prompts": stable_value(prompts)}),
        }

    def batch_api(self) -> BatchAPI[TOutput] | None:
        """pydantic-ai's batch API for the agent's model, when a run is one request.

        That is: the model has a batch API (pydantic-ai's ``OpenAIResponsesModel``,
        ``AnthropicModel`` and ``GoogleModel`` do; ``OpenAIChatModel`` does not), the
        agent's instructions and system prompts are fixed strings, it has no tools or
        output validators, and its output type is ``str``, a pydantic model or a
        ``StructuredDict``. Otherwise ``None``: the agent runs online.
        """
        if not self._is_pydantic_ai_agent:
            return None
        from async_batch_llm.batch.pydantic_ai import batch_api_for_agent

        return batch_api_for_agent(self.agent)

    def estimate_input_tokens(self, prompt: str) -> int:
        """The prompt's estimated tokens alone (a `Budget` adds the expected output)."""
        return super().estimate_tokens(prompt)

    def estimate_tokens(self, prompt: str) -> int:
        """The prompt estimate plus the agent's ``max_tokens`` setting, which the provider
        reserves against the tokens-per-minute budget before it answers."""
        settings = getattr(self.agent, "model_settings", None)
        max_tokens = settings.get("max_tokens") if isinstance(settings, dict) else None
        reserved = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
        return super().estimate_tokens(prompt) + reserved

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Run the agent on ``prompt`` and return ``(output, token usage)``."""
        result = await self._run(prompt)
        # Usage first: a failure reading the output still reports the run's tokens.
        tokens = _tokens_of_result(result)
        try:
            output: TOutput = result.output
        except Exception as exc:
            _record_failed_usage(exc, tokens)
            raise
        return output, tokens

    async def _run(self, prompt: str) -> Any:
        agent: Any = self.agent
        if not self._is_pydantic_ai_agent or loaded("pydantic_ai", "capture_run_messages") is None:
            return await agent.run(prompt)
        if self.sdk_retries:
            return await self._run_counting_failures(lambda: agent.run(prompt))
        with _quiet_unsupported_max_retries():
            return await self._run_counting_failures(
                lambda: agent.run(prompt, model_settings={"max_retries": 0})
            )

    @staticmethod
    async def _run_counting_failures(run: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``run()``, an agent run; if it fails, record the tokens of the model
        responses it received on the error (as ``_failed_token_usage``)."""
        from pydantic_ai import capture_run_messages

        with capture_run_messages() as messages:
            try:
                return await run()
            except Exception as exc:
                usage = _usage_of_messages(messages)
                if usage is not None:
                    _record_failed_usage(exc, usage)
                raise

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """An unvalidated instance of the agent's pydantic output model, with estimated tokens.

        The model class is the agent's ``output_type``, else its ``result_type``; when neither
        is a pydantic model class, the base placeholder string is returned.
        """
        try:
            model_class = _model_class(getattr(self.agent, "output_type", None))
            if model_class is None:
                model_class = _model_class(getattr(self.agent, "result_type", None))
            if model_class is not None:
                output: Any = model_class.model_construct()
                input_tokens = len(prompt.split())
                return output, {
                    "input_tokens": input_tokens,
                    "output_tokens": 50,
                    "total_tokens": input_tokens + 50,
                }
        except Exception:
            logger.debug("dry_run could not build a placeholder output model", exc_info=True)
        return await super().dry_run(prompt)


def _identity_of(component: object) -> object:
    """A model's or agent's ``checkpoint_identity()``, else its class name."""
    hook = getattr(component, "checkpoint_identity", None)
    cls = type(component)
    described: dict[str, object] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    if callable(hook):
        described["identity"] = stable_value(hook())
    return described


def _pydantic_ai_missing() -> bool:
    # Read at call time: tests patch the module-level ``Agent`` to ``typing.Any``.
    agent_class: object = globals()["Agent"] if "Agent" in globals() else __getattr__("Agent")
    return agent_class is Any


def _model_class(candidate: object) -> type[BaseModel] | None:
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    return None


def _int_attribute(source: object, name: str) -> int | None:
    # Only real integers count: test doubles such as ``unittest.mock.Mock`` invent any
    # attribute asked for.
    value = getattr(source, name, None)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _first_int(source: object, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = _int_attribute(source, name)
        if value is not None:
            return value
    return None


def _resolve_usage(value: object) -> object:
    # pydantic-ai's ``RunUsage`` is a property value that is also callable (a deprecated
    # ``usage()`` shim that warns); older results and ``MockResult`` have a ``usage()`` method.
    if value is None or _first_int(value, _USAGE_COUNT_NAMES) is not None:
        return value
    return value() if callable(value) else value


def _tokens_of_result(result: Any) -> TokenUsage:
    return usage_of_object(_resolve_usage(getattr(result, "usage", None)))


def _usage_of_messages(messages: list[Any]) -> TokenUsage | None:
    """Summed usage of the model responses a (failed) run received, ``None`` when none."""
    total: dict[str, int] = {}
    for message in messages:
        if getattr(message, "kind", None) == "response":
            add_usage(total, usage_of_object(getattr(message, "usage", None)))
    if not (total.get("input_tokens") or total.get("output_tokens")):
        return None
    tokens: TokenUsage = {
        "input_tokens": total.get("input_tokens", 0),
        "output_tokens": total.get("output_tokens", 0),
        "total_tokens": total.get("input_tokens", 0) + total.get("output_tokens", 0),
    }
    if total.get("cached_input_tokens"):
        tokens["cached_input_tokens"] = total["cached_input_tokens"]
    return tokens


def _quiet_unsupported_max_retries() -> AbstractContextManager[object]:
    # ``max_retries=0`` is our default, not the user's choice: models without SDK retries
    # (e.g. Bedrock) ignore it, and need not warn that they do.
    try:
        # Private in pydantic-ai; without it a model that ignores ``max_retries`` merely warns.
        from pydantic_ai._unsupported_settings import suppress_warnings
    except ImportError:
        return nullcontext()
    quiet: AbstractContextManager[object] = suppress_warnings(("max_retries",))
    return quiet
