"""A pydantic-ai model's batch API (OpenAI Responses, Anthropic, Google), for
`PydanticAIStrategy` and the command line.

pydantic-ai's ``Model.batch_*`` methods encode a request exactly as the model would send
it online and drive the SDK's batch endpoints (OpenAI's file upload and ``/v1/batches``,
Anthropic's ``messages.batches``, Gemini's ``batches``); this module only adapts them to
`BatchAPI` and turns a response into the agent's output. Agents whose requests need a run
(tools, dynamic instructions, output validators) stay online: see `batch_api_for_agent`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from pydantic import BaseModel, TypeAdapter

from async_batch_llm._internal.usage import usage_of_object
from async_batch_llm._internal.values import TokenUsage
from async_batch_llm.batch.base import (
    BatchAPI,
    BatchJob,
    BatchRequestNotRun,
    EncodedRequest,
    RequestResult,
)

__all__ = ["PydanticAIBatchAPI", "batch_api_for_agent"]

#: The name of the tool a structured answer is given through (pydantic-ai's default).
OUTPUT_TOOL: Final = "final_result"

MessagesFor = Callable[[str], tuple[list[Any], dict[str, Any] | None]]
"""A prompt's messages and the request's own model settings."""


class PydanticAIBatchAPI(BatchAPI[Any]):
    """The batch API of a pydantic-ai `Model`.

    Args:
        model: The model (its ``batch_max_requests`` must not be ``None``).
        messages_for: The messages and model settings of one prompt's request.
        output_type: ``str`` for text answers, or a pydantic model (or any type a pydantic
            ``TypeAdapter`` validates from a JSON object) for a structured one, asked for
            through an output tool as pydantic-ai does online.
    """

    def __init__(
        self,
        model: Any,
        messages_for: MessagesFor,
        *,
        output_type: Any = str,
    ) -> None:
        from pydantic_ai.models import ModelRequestParameters
        from pydantic_ai.tools import ToolDefinition

        self._model = model
        self._messages_for = messages_for
        self.provider = str(model.system)
        self.model = str(model.model_name)
        self.max_requests = int(model.batch_max_requests)
        self.max_bytes = model.batch_max_bytes
        self.group = f"{self.provider}:{self.model}"
        self._text = output_type is str
        self._adapter: TypeAdapter[Any] | None = None
        if self._text:
            self._parameters = ModelRequestParameters()
            return
        self._adapter = TypeAdapter(output_type)
        schema = self._adapter.json_schema()
        tool = ToolDefinition(
            name=OUTPUT_TOOL,
            parameters_json_schema=schema,
            description=str(schema.get("description") or "The final response."),
            kind="output",
        )
        self._parameters = ModelRequestParameters(
            output_mode="tool", output_tools=[tool], allow_text_output=False
        )

    def _request(self, custom_id: str, prompt: str) -> Any:
        from pydantic_ai.models.batch import BatchRequest

        messages, settings = self._messages_for(prompt)
        return BatchRequest(
            custom_id=custom_id,
            messages=messages,
            model_settings=settings,  # type: ignore[arg-type]
            model_request_parameters=self._parameters,
        )

    async def encode(self, custom_id: str, prompt: str) -> EncodedRequest:
        encoded = await self._model.batch_encode(self._request(custom_id, prompt))
        self.group = f"{self.provider}:{encoded.group}"
        return EncodedRequest(custom_id, self._model.batch_request_size(encoded), encoded)

    async def submit(self, requests: Sequence[EncodedRequest]) -> BatchJob:
        batch = await self._model.batch_create([request.body for request in requests])
        return self._job(batch, time.time())

    async def refresh(self, job: BatchJob) -> BatchJob:
        batch = await self._model.batch_status(_batch_of(job))
        return self._job(batch, job.submitted_at)

    async def results(self, job: BatchJob) -> list[RequestResult]:
        results = await self._model.batch_results(_batch_of(job))
        return [RequestResult(result.custom_id, result.status, result) for result in results]

    async def cancel(self, job: BatchJob) -> BatchJob:
        batch = await self._model.batch_cancel(_batch_of(job))
        return self._job(batch, job.submitted_at)

    def decode(self, result: RequestResult, prompt: str) -> tuple[Any, TokenUsage]:
        if result.status in ("expired", "canceled"):
            raise BatchRequestNotRun(
                f"The provider ended the batch request unrun ({result.status})",
                status=result.status,
            )
        response = self._model.batch_decode(result.body, self._request(result.custom_id, prompt))
        usage = usage_of_object(response.usage)
        return self._output_of(response), usage

    def _output_of(self, response: Any) -> Any:
        from pydantic_ai.exceptions import UnexpectedModelBehavior
        from pydantic_ai.messages import TextPart, ToolCallPart

        if self._text:
            return "".join(part.content for part in response.parts if isinstance(part, TextPart))
        for part in response.parts:
            if isinstance(part, ToolCallPart) and part.tool_name == OUTPUT_TOOL:
                arguments = part.args_as_dict()
                assert self._adapter is not None
                return self._adapter.validate_python(arguments)
        msg = f"The batch response has no call of the {OUTPUT_TOOL!r} output tool"
        raise UnexpectedModelBehavior(msg)

    def _job(self, batch: Any, submitted_at: float) -> BatchJob:
        from pydantic_ai.models.batch import Batch

        handle = TypeAdapter(Batch).dump_python(batch, mode="json")
        details = batch.provider_details or {}
        status = details.get("status") or details.get("state") or batch.status
        return BatchJob(
            id=batch.id,
            provider=self.provider,
            model=self.model,
            group=self.group,
            state=batch.status,
            request_count=batch.request_count,
            submitted_at=submitted_at,
            handle=handle,
            provider_status=str(status),
        )


def _batch_of(job: BatchJob) -> Any:
    from pydantic_ai.models.batch import Batch

    return TypeAdapter(Batch).validate_python(job.handle)


def batch_api_for_agent(agent: Any) -> PydanticAIBatchAPI | None:
    """The batch API for runs of `agent`, or ``None`` when they must run online.

    A run goes through the batch API when it is one request: the agent's model has a
    batch API, its instructions and system prompts are fixed strings, it has no tools or
    output validators, and its output is text or a structured object.
    """
    from pydantic_ai.models import infer_model

    model = getattr(agent, "model", None)
    if model is None:
        return None
    if isinstance(model, str):
        model = infer_model(model)
    if getattr(model, "batch_max_requests", None) is None:
        return None
    instructions = _fixed_instructions(agent)
    if instructions is None or _has_run_logic(agent):
        return None
    output_type = getattr(agent, "output_type", str)
    if output_type is not str and not _is_structured(output_type):
        return None
    settings = getattr(agent, "model_settings", None)

    def messages_for(prompt: str) -> tuple[list[Any], dict[str, Any] | None]:
        from pydantic_ai.messages import ModelRequest

        return [ModelRequest.user_text_prompt(prompt, instructions=instructions)], settings

    return PydanticAIBatchAPI(model, messages_for, output_type=output_type)


def _fixed_instructions(agent: Any) -> str | None:
    """The agent's instructions and system prompts as one string ("" for none), or
    ``None`` when one of them is computed per run."""
    if getattr(agent, "_system_prompt_functions", None):
        return None
    parts: list[str] = [p for p in getattr(agent, "_system_prompts", ()) if isinstance(p, str)]
    for sourced in getattr(agent, "_instructions", ()):
        instruction = getattr(sourced, "instruction", None)
        if not isinstance(instruction, str):
            return None
        parts.append(instruction)
    return "\n\n".join(parts)


#: The capabilities every pydantic-ai agent has, which add nothing to a single request.
_DEFAULT_CAPABILITIES: Final = frozenset({"ToolSearch", "PendingMessageDrainCapability"})


def _has_run_logic(agent: Any) -> bool:
    """Whether a run of `agent` may be more than the one request built here: tools of any
    kind, toolsets, output validators, capabilities that add instructions, settings or
    native tools, instructions computed per run."""
    toolset = getattr(agent, "_function_toolset", None)
    if getattr(toolset, "tools", None):
        return True
    for name in (
        "_output_validators",
        "_user_toolsets",
        "_dynamic_toolsets",
        "_cap_toolsets",
        "_cap_instructions",
        "_cap_model_settings",
        "_system_prompt_dynamic_functions",
    ):
        if getattr(agent, name, None):
            return True
    for tool in getattr(agent, "_cap_native_tools", None) or ():
        if not getattr(tool, "optional", False):
            return True
    root = getattr(agent, "_root_capability", None)
    capabilities = getattr(root, "capabilities", None) or ()
    return any(type(c).__name__ not in _DEFAULT_CAPABILITIES for c in capabilities)


def _is_structured(output_type: Any) -> bool:
    """Whether `output_type` is one object asked for through a single output tool (a
    pydantic model or a ``StructuredDict``; not unions, functions or several types)."""
    if not isinstance(output_type, type):
        return False
    model_like = bool(getattr(output_type, "__is_model_like__", False))
    return issubclass(output_type, BaseModel) or model_like
