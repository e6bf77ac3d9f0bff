"""Conversation items: validating a request's input, building a response's output
items, and turning items into chat messages.

A conversation is a list of Responses items (messages, function calls and their
outputs, MCP calls, approval requests...). It is stored as items, so chains of
``previous_response_id`` replay exactly; each model turn renders it to chat
messages for the model's template.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from candle_agents.mcp import McpTool
from candle_agents.openai.errors import OpenAIError
from candle_agents.responses.protocol import new_id


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ContentPart(_Item):
    type: Literal["input_text", "output_text", "text", "refusal"]
    text: str | None = None
    refusal: str | None = None


class _Message(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[_ContentPart]


class _FunctionCall(_Item):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"


class _FunctionCallOutput(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]


class _McpApprovalResponse(_Item):
    type: Literal["mcp_approval_response"]
    approval_request_id: str
    approve: bool
    reason: str | None = None


# Items a client may send back verbatim from an earlier output.
_PASSTHROUGH = {"mcp_call", "mcp_list_tools", "mcp_approval_request", "reasoning"}
_PARSERS: dict[str, type[_Item]] = {
    "message": _Message,
    "function_call": _FunctionCall,
    "function_call_output": _FunctionCallOutput,
    "mcp_approval_response": _McpApprovalResponse,
}


def parse_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``input`` as items; a bad item is a 400 naming ``input[i].field``."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    items = []
    for i, raw in enumerate(value):
        kind = raw.get("type", "message")
        if kind in _PASSTHROUGH:
            items.append(dict(raw))
            continue
        parser = _PARSERS.get(kind)
        if parser is None:
            raise OpenAIError(
                f"input[{i}]: item type {kind!r} is not supported; use one of "
                f"{', '.join(sorted((*_PARSERS, *_PASSTHROUGH)))}",
                param=f"input[{i}].type",
            )
        if kind == "message" and isinstance(raw.get("content"), list):
            _check_parts(raw, i)
        try:
            item = parser.model_validate(raw)
        except ValidationError as exc:
            err = OpenAIError.from_validation_error(exc)
            raise OpenAIError(
                f"input[{i}].{err.message}", param=f"input[{i}].{err.param}"
            ) from None
        items.append(item.model_dump(exclude_none=True))
    return items


def _check_parts(raw: dict[str, Any], i: int) -> None:
    for j, part in enumerate(raw["content"]):
        if isinstance(part, dict) and part.get("type") in (
            "input_image",
            "input_file",
            "input_audio",
        ):
            raise OpenAIError(
                f"input[{i}].content[{j}]: {part['type']} is not supported by this model; "
                "send text",
                param=f"input[{i}].content[{j}].type",
            )


def message_text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or p.get("refusal") or "" for p in content or ())


def to_chat_messages(
    items: list[dict[str, Any]], instructions: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for the model: calls join the assistant turn they belong to."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})

    def assistant() -> dict[str, Any]:
        # Calls attach to the assistant message just before them (its text, if any).
        if messages and messages[-1]["role"] == "assistant":
            return messages[-1]
        messages.append({"role": "assistant", "content": None})
        return messages[-1]

    def call(call_id: str, name: str, arguments: str) -> None:
        turn = assistant()
        turn.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )

    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            last = messages[-1] if messages else None
            if (
                item["role"] == "assistant"
                and last is not None
                and last["role"] == "assistant"
                and last["content"] is None
                and "tool_calls" not in last
            ):
                last["content"] = message_text(item)  # the answer after its reasoning
            else:
                messages.append({"role": item["role"], "content": message_text(item)})
        elif kind == "reasoning" and reasoning_text(item):
            # The turn's reasoning, for templates that render it (so the prompt the model
            # wrote stays the cached prefix); its answer or calls attach to this message.
            messages.append(
                {"role": "assistant", "content": None, "reasoning_content": reasoning_text(item)}
            )
        elif kind == "function_call":
            call(item["call_id"], item["name"], item.get("arguments", "{}"))
        elif kind == "function_call_output":
            output = item["output"]
            if not isinstance(output, str):
                output = "".join(p.get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "mcp_call" and (item.get("output") is not None or item.get("error")):
            call(item["id"], item["name"], item.get("arguments", "{}"))
            messages.append(
                {"role": "tool", "tool_call_id": item["id"], "content": mcp_call_result(item)}
            )
        # mcp_list_tools and approval requests/responses are not shown to the model:
        # the tools are offered in the template, and an approved call becomes an mcp_call.
    return messages


def mcp_call_result(item: dict[str, Any]) -> str:
    """What the model sees of an MCP call: its output, or its error."""
    if item.get("output") is not None:
        return str(item["output"])
    error = item.get("error")
    if isinstance(error, dict):
        if error.get("type") == "mcp_tool_execution_error":
            content = error.get("content")
            text = (
                "".join(c.get("text", "") for c in content if isinstance(c, dict))
                if isinstance(content, list)
                else str(content)
            )
            return f"Error: {text}"
        return f"Error: {error.get('message', json.dumps(error))}"
    return f"Error: {error}"


def approval_requests(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Approval requests in ``items`` not yet answered, by id."""
    pending = {i["id"]: i for i in items if i.get("type") == "mcp_approval_request"}
    for item in items:
        if item.get("type") == "mcp_approval_response" or (
            item.get("type") == "mcp_call" and item.get("approval_request_id")
        ):
            pending.pop(item["approval_request_id"], None)
    return pending


def approval_answers(
    history: list[dict[str, Any]], items: list[dict[str, Any]], servers: set[str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(approval request, answer) pairs for the answers in a request's input ``items``.

    Each must answer a pending request of ``history`` for a call to one of ``servers``
    (the MCP server labels the request offers): otherwise a 400 naming ``input[i]``.
    """
    pending = approval_requests(history)
    answers = []
    for i, item in enumerate(items):
        if item.get("type") != "mcp_approval_response":
            continue
        asked = pending.get(item["approval_request_id"])
        if asked is None:
            raise OpenAIError(
                f"input[{i}].approval_request_id: no pending approval request "
                f"{item['approval_request_id']!r} in this conversation (send it with the "
                "previous_response_id of the response that asked)",
                param=f"input[{i}].approval_request_id",
            )
        if asked["server_label"] not in servers:
            raise OpenAIError(
                f"input[{i}]: the approved call goes to MCP server "
                f"{asked['server_label']!r}; include that server in tools again",
                param="tools",
            )
        answers.append((asked, item))
    return answers


def listed_servers(items: list[dict[str, Any]]) -> set[str]:
    """Server labels whose tools were already listed (without error) in the conversation."""
    return {
        i["server_label"] for i in items if i.get("type") == "mcp_list_tools" and not i.get("error")
    }


# -- new items (output items start in progress; the response fills them in) ---------------


def reasoning_item() -> dict[str, Any]:
    """A reasoning model's thinking, as open-weight models return it: the raw text."""
    return {
        "id": new_id("rs"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": ""}],
        "status": "in_progress",
    }


def reasoning_text(item: dict[str, Any]) -> str:
    content = item.get("content") or ()
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def message_item() -> dict[str, Any]:
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
    }


def function_call_item(name: str, call_id: str | None) -> dict[str, Any]:
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "call_id": call_id or new_id("call"),
        "name": name,
        "arguments": "",
        "status": "in_progress",
    }


def mcp_call_item(server: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": new_id("mcp"),
        "type": "mcp_call",
        "server_label": server,
        "name": name,
        "arguments": arguments,
        "output": None,
        "error": None,
        "status": "in_progress",
        "approval_request_id": None,
    }


def approval_request_item(server: str, name: str) -> dict[str, Any]:
    return {
        "id": new_id("mcpr"),
        "type": "mcp_approval_request",
        "server_label": server,
        "name": name,
        "arguments": "",
    }


def list_tools_item(server: str) -> dict[str, Any]:
    return {
        "id": new_id("mcpl"),
        "type": "mcp_list_tools",
        "server_label": server,
        "tools": [],
        "error": None,
    }


def listed_tools(tools: list[McpTool]) -> list[dict[str, Any]]:
    """The ``tools`` of an ``mcp_list_tools`` item."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": t.input_schema,
            "annotations": t.annotations,
        }
        for t in tools
    ]


def execution_error(text: str) -> dict[str, Any]:
    """The ``error`` of an ``mcp_call`` that failed (or never ran)."""
    return {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text, "id": new_id("msg")}
