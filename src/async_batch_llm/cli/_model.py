"""The model behind ``abl run -m provider:model``: a pydantic-ai agent and its strategy."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from async_batch_llm.classifiers.gemini import _http_status as http_status
from async_batch_llm.cli._input import ChatMessage, parse_request
from async_batch_llm.llm_strategies import PydanticAIStrategy
from async_batch_llm.strategies.errors import (
    DefaultErrorClassifier,
    ErrorInfo,
    error_info,
    unwrap_token_tracking,
)

__all__ = [
    "ChatStrategy",
    "HTTPStatusClassifier",
    "ModelSpec",
    "UsageError",
    "build_strategy",
    "parse_model",
]

#: pydantic-ai's provider prefixes that this command line builds models for, and the
#: environment variable that holds each one's API key.
PROVIDERS: Final = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google-gla": "GEMINI_API_KEY",
}
# A placeholder key for servers that need none (vLLM, Ollama, the simulator): the SDKs
# refuse to start without one.
_NO_KEY: Final = "not-needed"
# Anthropic's API requires max_tokens; pydantic-ai sends 4096 when none is given.
_ANTHROPIC_MAX_TOKENS: Final = 4096


class UsageError(ValueError):
    """A command-line argument cannot be used (the command exits with status 2)."""


class ModelSpec:
    """A parsed ``provider:model`` argument."""

    def __init__(self, provider: str, name: str) -> None:
        self.provider = provider
        self.name = name

    def __str__(self) -> str:
        return f"{self.provider}:{self.name}"


def parse_model(text: str) -> ModelSpec:
    """``"openai:gpt-4o-mini"`` as a `ModelSpec` (a bare name is an OpenAI model)."""
    provider, sep, name = text.partition(":")
    if not sep:
        provider, name = "openai", text
    if provider == "google":
        provider = "google-gla"
    if provider not in PROVIDERS:
        supported = ", ".join(f"{p}:MODEL" for p in PROVIDERS)
        msg = f"unsupported model {text!r}: use {supported} (as pydantic-ai names them)"
        raise UsageError(msg)
    if not name:
        msg = f"model {text!r} has no model name after {provider!r}"
        raise UsageError(msg)
    return ModelSpec(provider, name)


def load_schema(path: str) -> dict[str, Any]:
    """The JSON Schema in `path`, for structured output."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read the schema file {path}: {exc.strerror or exc}"
        raise UsageError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"the schema file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
        raise UsageError(msg) from None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        msg = f"the schema in {path} must be a JSON Schema of an object"
        raise UsageError(msg)
    return schema


#: OpenAI request fields (as an OpenAI Batch API body spells them) and their pydantic-ai
#: setting; those not listed go to the request body as they are (``extra_body``).
_OPENAI_SPELLINGS: Final = {"max_completion_tokens": "max_tokens", "stop": "stop_sequences"}
_SETTINGS: Final = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "stop_sequences",
        "parallel_tool_calls",
        "timeout",
    }
)


def model_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """pydantic-ai model settings for a line's (or ``-o``) generation options.

    Raises:
        UsageError: An option asks for what a run cannot do (streaming, several answers).
    """
    settings: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.items():
        if key == "stream":
            if value:
                raise UsageError("'stream': true is not supported: each line is one answer")
            continue
        if key == "n" and value not in (None, 1):
            raise UsageError(f"'n': {value!r} is not supported: each line gets one answer")
        if key == "n":
            continue
        name = _OPENAI_SPELLINGS.get(key, key)
        if name == "stop_sequences" and isinstance(value, str):
            value = [value]
        if name in _SETTINGS:
            settings[name] = value
        else:
            extra[key] = value
    if extra:
        settings["extra_body"] = extra
    return settings


def build_model(
    spec: ModelSpec, base_url: str | None, settings: Mapping[str, Any], *, batch: bool = False
) -> Any:
    """The pydantic-ai model for `spec`, talking to `base_url` when given.

    With `batch` (``--mode batch|auto``), OpenAI models use the Responses API, whose
    pydantic-ai model has a batch API (the chat-completions one does not).
    """
    key = os.environ.get(PROVIDERS[spec.provider])
    if key is None and base_url is None:
        msg = (
            f"{PROVIDERS[spec.provider]} is not set: export your {spec.provider} API key, or "
            "pass --base-url for a server that needs none (e.g. `abl simulate`)"
        )
        raise UsageError(msg)
    api_key = key or _NO_KEY
    if spec.provider == "openai":
        from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
        from pydantic_ai.providers.openai import OpenAIProvider

        model_class = OpenAIResponsesModel if batch else OpenAIChatModel
        return model_class(spec.name, provider=OpenAIProvider(base_url=base_url, api_key=api_key))
    if spec.provider == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        defaults = {} if "max_tokens" in settings else {"max_tokens": _ANTHROPIC_MAX_TOKENS}
        return AnthropicModel(
            spec.name,
            provider=AnthropicProvider(base_url=base_url, api_key=api_key),
            settings=defaults,  # type: ignore[arg-type]
        )
    from pydantic_ai.models.google import GoogleModel
    from pydantic_ai.providers.google import GoogleProvider

    return GoogleModel(spec.name, provider=GoogleProvider(base_url=base_url, api_key=api_key))


class _Reply:
    """A direct request's answer, shaped like an agent run's result."""

    __slots__ = ("output", "usage")

    def __init__(self, output: str, usage: Any) -> None:
        self.output = output
        self.usage = usage


class ChatStrategy(PydanticAIStrategy[Any]):
    """Sends one chat request (a prompt made by `render_request`) per attempt.

    System messages become the run's instructions; the other messages before the last
    user message are the history. The agent's model settings are the run-wide ``-o``
    options (part of the checkpoint identity); a line's own options are part of its prompt.
    """

    def __init__(self, agent: Any, spec: ModelSpec, schema: Mapping[str, Any] | None) -> None:
        super().__init__(agent)
        self.spec = spec
        self.schema = schema
        self._model = agent.model
        self._settings: dict[str, Any] = dict(agent.model_settings or {})

    async def _run(self, prompt: str) -> Any:
        system, turns, options = _split_request(prompt)
        if self.schema is None:
            return await self._request(system, turns, options)
        return await self._run_agent(system, turns, options)

    def batch_api(self) -> Any:
        """pydantic-ai's batch API for the model (``--mode batch|auto``): each line is one
        request, its messages and options as an online call would send them."""
        model = self._model
        if getattr(model, "batch_max_requests", None) is None:
            return None
        from async_batch_llm.batch.pydantic_ai import PydanticAIBatchAPI

        def messages_for(prompt: str) -> tuple[list[Any], dict[str, Any] | None]:
            system, turns, options = _split_request(prompt)
            settings = {**self._settings, **model_settings(options)}
            return _history(system, turns), settings or None

        output_type = getattr(self.agent, "output_type", str)
        return PydanticAIBatchAPI(model, messages_for, output_type=output_type)

    async def _request(
        self, system: str | None, turns: list[ChatMessage], options: Mapping[str, Any]
    ) -> Any:
        # Text output needs no agent: one request through pydantic-ai's direct API skips the
        # agent graph, which costs more CPU per call than the HTTP request itself.
        from pydantic_ai.direct import model_request
        from pydantic_ai.messages import TextPart

        history = _history(system, turns)
        settings: Any = {**self._settings, **model_settings(options), "max_retries": 0}
        response = await model_request(self._model, history, model_settings=settings)
        text = "".join(part.content for part in response.parts if isinstance(part, TextPart))
        return _Reply(text, response.usage)

    async def _run_agent(
        self, system: str | None, turns: list[ChatMessage], options: Mapping[str, Any]
    ) -> Any:
        from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

        history: list[Any] = [
            ModelRequest(parts=[UserPromptPart(content=m.content)])
            if m.role == "user"
            else ModelResponse(parts=[TextPart(content=m.content)])
            for m in turns[:-1]
        ]
        settings = {**model_settings(options), "max_retries": 0}
        agent: Any = self.agent
        return await self._run_counting_failures(
            lambda: agent.run(
                turns[-1].content,
                message_history=history or None,
                instructions=system,
                model_settings=settings,
            )
        )

    def checkpoint_identity(self) -> object:
        identity = super().checkpoint_identity()
        return {"model": str(self.spec), "agent": identity, "schema": self.schema}


def _split_request(prompt: str) -> tuple[str | None, list[ChatMessage], dict[str, Any]]:
    """A rendered request's system prompt (its system messages joined), its other turns
    and its options."""
    messages, options = parse_request(prompt)
    system = "\n\n".join(m.content for m in messages if m.role == "system") or None
    return system, [m for m in messages if m.role != "system"], options


def _history(system: str | None, turns: list[ChatMessage]) -> list[Any]:
    """The pydantic-ai messages of a chat request: the system prompt and the first user
    message are one request, assistant turns are responses."""
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        SystemPromptPart,
        TextPart,
        UserPromptPart,
    )

    history: list[Any] = []
    if system is not None:
        history.append(ModelRequest(parts=[SystemPromptPart(content=system)]))
    for message in turns:
        if message.role == "assistant":
            history.append(ModelResponse(parts=[TextPart(content=message.content)]))
        elif history and isinstance(history[-1], ModelRequest):
            history[-1] = ModelRequest(
                parts=[*history[-1].parts, UserPromptPart(content=message.content)]
            )
        else:
            history.append(ModelRequest(parts=[UserPromptPart(content=message.content)]))
    return history


def build_strategy(
    spec: ModelSpec,
    *,
    base_url: str | None,
    options: Mapping[str, Any],
    schema: dict[str, Any] | None,
    batch: bool = False,
) -> ChatStrategy:
    """The strategy every line of a run uses (`batch`: for ``--mode batch|auto``)."""
    from pydantic_ai import Agent
    from pydantic_ai.output import StructuredDict

    settings: Any = model_settings(options) or None
    model = build_model(spec, base_url, settings or {}, batch=batch)
    try:
        output_type: Any = str
        if schema is not None:
            output_type = StructuredDict(schema, name=str(schema.get("title") or "result"))
        agent: Any = Agent(model, output_type=output_type, model_settings=settings)
        strategy = ChatStrategy(agent, spec, schema)
    except UsageError:
        raise
    except Exception as exc:
        msg = f"cannot use this model setup: {type(exc).__name__}: {exc}"
        raise UsageError(msg) from exc
    return strategy


class HTTPStatusClassifier(DefaultErrorClassifier):
    """The default rules, plus the HTTP status of an error they leave unclassified.

    pydantic-ai raises a provider's 400 (a bad request, a refused prompt) as
    ``ModelHTTPError``, which the default rules retry as ``unknown``: the same rejected
    request would be paid for three times. Here a 4xx other than 408, 409 and 429 is
    permanent (``client_error``) and a 5xx retryable (``server_error``).
    """

    def classify(self, exception: Exception) -> ErrorInfo:
        info = super().classify(exception)
        if info.error_category != "unknown":
            return info
        status = http_status(unwrap_token_tracking(exception))
        if status is None:
            return info
        if status >= 500 or status in (408, 409):
            return error_info("server_error", retryable=True)
        if 400 <= status < 500 and status != 429:
            return error_info("client_error", retryable=False)
        return info
