"""The tools one response offers the model, as each turn's chat request shows them.

Function tools are the client's to run; MCP tools come from the servers bound
to the response (:class:`McpBinding`, which also runs their calls), each under
the name the model calls it by. ``tool_choice`` is checked against them once,
then mapped to chat's ``tool_choice`` for every turn.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from candle_agents.mcp import McpClient, McpTool, McpToolResult
from candle_agents.openai.errors import OpenAIError
from candle_agents.responses.protocol import (
    FunctionToolChoice,
    FunctionToolParam,
    McpToolChoice,
    McpToolParam,
)


@dataclass
class McpBinding:
    """An MCP server offered to one response: its request entry and how to reach it."""

    param: McpToolParam
    connect: Callable[[], Awaitable[McpClient]]
    client: McpClient | None = None
    tools: list[McpTool] = field(default_factory=list)

    async def call(self, tool: McpTool, arguments: str) -> McpToolResult:
        """Run ``tool`` with the model's JSON ``arguments``; bad arguments are an error result."""
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return McpToolResult(text=f"the arguments are not valid JSON: {exc}", is_error=True)
        if not isinstance(parsed, dict):
            return McpToolResult(text="the arguments must be a JSON object", is_error=True)
        assert self.client is not None
        return await self.client.call_tool(tool.name, parsed)


# The MCP tools by the name the model sees, with the server each belongs to.
McpNames = dict[str, tuple[McpBinding, McpTool]]
# A request's tool_choice: "auto", "none", "required", or one of the two named choices.
ToolChoice = str | FunctionToolChoice | McpToolChoice | None


def check_tool_choice(
    choice: ToolChoice, function_tools: list[FunctionToolParam], mcp: list[McpBinding]
) -> None:
    """A 400 when ``tool_choice`` names a function or MCP server the request does not offer."""
    if isinstance(choice, FunctionToolChoice) and choice.name not in {
        t.name for t in function_tools
    }:
        raise OpenAIError(
            f"tool_choice names function {choice.name!r}, which is not among the "
            "request's function tools",
            param="tool_choice.name",
        )
    if isinstance(choice, McpToolChoice) and choice.server_label not in {
        b.param.server_label for b in mcp
    }:
        raise OpenAIError(
            f"tool_choice names MCP server {choice.server_label!r}, which is not among "
            "the request's mcp tools",
            param="tool_choice.server_label",
        )


def mcp_names(function_tools: list[FunctionToolParam], mcp: list[McpBinding]) -> McpNames:
    """Names the model sees: a tool's own name unless another tool already has it."""
    taken = {t.name for t in function_tools}
    names: McpNames = {}
    for binding in mcp:
        for tool in binding.tools:
            name = tool.name
            if name in taken:
                name = f"{binding.param.server_label}__{tool.name}"[:64]
            taken.add(name)
            names[name] = (binding, tool)
    return names


def chat_tools(function_tools: list[FunctionToolParam], names: McpNames) -> list[dict[str, Any]]:
    """Every tool in chat's shape: the function tools, then the MCP tools."""
    return [
        {
            "type": "function",
            "function": {
                k: v
                for k, v in {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                }.items()
                if v is not None
            },
        }
        for t in function_tools
    ] + [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": tool.description,
                "parameters": tool.input_schema,
            },
        }
        for name, (_, tool) in names.items()
    ]


def chat_tool_choice(choice: ToolChoice, forced: bool, names: McpNames) -> Any:
    """Forced choices hold until the model has called a tool; then it may answer."""
    if choice is None or choice == "auto" or (not forced and choice != "none"):
        return "auto"
    if isinstance(choice, FunctionToolChoice):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, McpToolChoice):
        if choice.name is None:
            return "required"
        for name, (binding, tool) in names.items():
            if binding.param.server_label == choice.server_label and tool.name == choice.name:
                return {"type": "function", "function": {"name": name}}
        raise OpenAIError(
            f"tool_choice names tool {choice.name!r}, which MCP server "
            f"{choice.server_label!r} does not offer",
            param="tool_choice.name",
        )
    return choice
