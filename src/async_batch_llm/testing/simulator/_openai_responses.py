"""OpenAI's Responses API (``POST /v1/responses``), plain or streamed.

It shares chat completions' errors, rate-limit headers and retry hints (`OpenAIWire`); only
the request and reply shapes differ: ``input`` items instead of ``messages``, flat function
tools, ``text.format`` instead of ``response_format``, and ``output`` items in the reply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from async_batch_llm.testing.simulator._openai import OpenAIWire
from async_batch_llm.testing.simulator._request import ProviderRequest
from async_batch_llm.testing.simulator._text import count_text_chars, estimate_tokens, text_of_parts
from async_batch_llm.testing.simulator._wire import Json, ReplyContent, Usage, pick_tool, sse

__all__ = ["OpenAIResponsesWire"]


class OpenAIResponsesWire(OpenAIWire):
    """Reads Responses API requests and writes ``response`` objects (errors as `OpenAIWire`)."""

    def parse(
        self, body: Mapping[str, Any], *, model: str, api_key: str, path: str, sequence: int
    ) -> ProviderRequest:
        """Read the input items, instructions, output limit, text format and forced tool."""
        items = body.get("input")
        tools = body.get("tools")
        tools = tools if isinstance(tools, list) else []
        max_tokens = body.get("max_output_tokens")
        schema, json_output = _text_format(body.get("text"))
        tool_name, tool_schema = _forced_tool(tools, body.get("tool_choice"))
        return ProviderRequest(
            provider="openai",
            model=str(body.get("model") or model),
            api_key=api_key,
            path=path,
            body=body,
            prompt=_last_user_text(items),
            prompt_tokens=estimate_tokens(count_text_chars(items, body.get("instructions"), tools)),
            max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
            output_schema=tool_schema if tool_name else schema,
            tool_name=tool_name,
            json_output=json_output or tool_name is not None,
            stream=body.get("stream") is True,
            sequence=sequence,
        )

    def reply_body(
        self,
        request: ProviderRequest,
        content: ReplyContent,
        usage: Usage,
        *,
        truncated: bool,
        created: float,
    ) -> Json:
        """A ``response`` whose output is a message, or a ``function_call`` when one is forced.

        A reply cut at ``max_output_tokens`` is ``incomplete``, as the real API reports it.
        """
        text = content if isinstance(content, str) else json.dumps(content)
        item: Json
        if request.tool_name is not None:
            item = {
                "id": f"fc_sim{request.sequence:08d}",
                "type": "function_call",
                "call_id": f"call_sim{request.sequence:08d}",
                "name": request.tool_name,
                "arguments": text,
                "status": "completed",
            }
        else:
            item = {
                "id": f"msg_sim{request.sequence:08d}",
                "type": "message",
                "role": "assistant",
                "status": "incomplete" if truncated else "completed",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        body = request.body
        tool_choice = body.get("tool_choice", "auto")
        return {
            "id": f"resp_sim{request.sequence:08d}",
            "object": "response",
            "created_at": int(created),
            "completed_at": None if truncated else int(created),
            "status": "incomplete" if truncated else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": request.max_output_tokens,
            "metadata": body.get("metadata") or {},
            "model": request.model,
            "output": [item],
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True) is not False,
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": tool_choice if tool_choice is not None else "auto",
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation") or "disabled",
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": usage.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens + usage.output_tokens,
            },
            "user": None,
        }

    def stream_body(self, request: ProviderRequest, reply: Json) -> str:
        """``response.created`` and ``in_progress``, the output item's events, ``completed``."""
        pending = {**reply, "status": "in_progress", "output": [], "usage": None}
        events: list[Json] = [
            {"type": "response.created", "response": pending},
            {"type": "response.in_progress", "response": pending},
        ]
        for index, item in enumerate(reply["output"]):
            events.extend(_item_events(index, item))
        done = "response.incomplete" if reply["status"] == "incomplete" else "response.completed"
        events.append({"type": done, "response": reply})
        return "".join(
            sse({**event, "sequence_number": number}, event["type"])
            for number, event in enumerate(events)
        )


def _item_events(index: int, item: Json) -> list[Json]:
    where = {"output_index": index, "item_id": item["id"]}
    if item["type"] == "function_call":
        opening = {**item, "arguments": "", "status": "in_progress"}
        return [
            {"type": "response.output_item.added", "output_index": index, "item": opening},
            {
                "type": "response.function_call_arguments.delta",
                **where,
                "delta": item["arguments"],
            },
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": item["name"],
                "arguments": item["arguments"],
            },
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    part = item["content"][0]
    empty = {**part, "text": ""}
    at = {**where, "content_index": 0}
    return [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "content": [], "status": "in_progress"},
        },
        {"type": "response.content_part.added", **at, "part": empty},
        {"type": "response.output_text.delta", **at, "delta": part["text"], "logprobs": []},
        {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


def _last_user_text(items: Any) -> str:
    """The text of the last user message: ``input`` itself when it is a string."""
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, Mapping) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return text_of_parts(content)
            return ""
    return ""


def _text_format(text: Any) -> tuple[Mapping[str, Any] | None, bool]:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None, False
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = fmt.get("schema")
        return (schema if isinstance(schema, Mapping) else None), True
    return None, kind == "json_object"


def _forced_tool(tools: list[Any], choice: Any) -> tuple[str | None, Mapping[str, Any] | None]:
    functions: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        if (
            isinstance(tool, Mapping)
            and tool.get("type") == "function"
            and isinstance(tool.get("name"), str)
        ):
            parameters = tool.get("parameters")
            functions[tool["name"]] = parameters if isinstance(parameters, Mapping) else {}
    if not functions:
        return None, None
    name: str | None = None
    if choice == "required":
        name = pick_tool(list(functions))
    elif isinstance(choice, Mapping):
        if choice.get("type") == "function" and choice.get("name") in functions:
            name = str(choice["name"])
        elif choice.get("type") == "allowed_tools" and choice.get("mode") == "required":
            allowed = [
                str(tool["name"])
                for tool in choice.get("tools") or []
                if isinstance(tool, Mapping) and isinstance(tool.get("name"), str)
            ]
            name = pick_tool(list(functions), allowed or None)
    if name is None:
        return None, None
    return name, functions[name]
