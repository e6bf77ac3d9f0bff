"""What ChatCandle sends for LangChain tools and output schemas: OpenAI tools (Python-
derived argument schemas closed), ``tool_choice`` and a json_schema ``response_format``."""

from __future__ import annotations

from typing import Any

from langchain_core.utils.function_calling import (
    convert_to_openai_function,
    convert_to_openai_tool,
)

from candle_agents.integrations import _tools

__all__ = ["openai_response_format", "openai_tool", "openai_tool_choice"]


def openai_tool(tool: Any, strict: bool | None) -> dict[str, Any]:
    """``tool`` in OpenAI's format. A dict is the caller's own schema and is kept as
    given; schemas derived from Python get closed (see ``closed_schema``)."""
    formatted = convert_to_openai_tool(tool, strict=strict)
    if not isinstance(tool, dict) and "parameters" in formatted["function"]:
        formatted["function"]["parameters"] = _tools.closed_schema(
            formatted["function"]["parameters"]
        )
    return formatted


def openai_tool_choice(
    choice: dict[str, Any] | str | bool | None, names: list[str]
) -> str | dict[str, Any] | None:
    """LangChain's tool_choice values in OpenAI's form (None: send none)."""
    if choice is None or choice is False:
        return None
    if choice is True:
        return "required"
    return _tools.tool_choice(choice, names)


def openai_response_format(schema: dict[str, Any] | type, strict: bool | None) -> dict[str, Any]:
    """OpenAI's json_schema response_format for a pydantic class, TypedDict or JSON schema."""
    if isinstance(schema, dict) and "properties" in schema and "title" not in schema:
        # A bare JSON schema: convert_to_openai_function needs a title to name it.
        name, description, parameters = "response", schema.get("description"), schema
    else:
        function = convert_to_openai_function(schema, strict=strict)
        name, description = function["name"], function.get("description")
        parameters = function.get("parameters", {})
        if not isinstance(schema, dict):
            parameters = _tools.closed_schema(parameters)
    spec: dict[str, Any] = {"name": name, "schema": parameters}
    if description:
        spec["description"] = description
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}
