"""Tools in OpenAI's form, for both framework adapters: closed argument schemas, the
``tool_choice`` values they share, and an assistant turn's tool call as history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from candle_agents.errors import ConfigError

__all__ = ["closed_schema", "history_call", "tool_choice"]


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on objects that don't say otherwise.

    For schemas the frameworks derive from pydantic models, functions and TypedDicts:
    those say ``additionalProperties`` only when extras are allowed, and otherwise drop
    them. Open objects let a small model pad the arguments with keys copied from the
    schema ("type", "description"), which the grammar would accept.
    """
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: closed_schema(v) for k, v in value.items()}
                if isinstance(value, dict)
                else value
            )
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not"):
            out[key] = closed_schema(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def tool_choice(choice: str | dict[str, Any], names: Sequence[str]) -> str | dict[str, Any]:
    """``choice`` in OpenAI's form; a named tool must be one of ``names``.

    Takes "auto", "none", "required" (or "any", LangChain's and Anthropic's spelling), a
    tool name, ``{"type": "function", "function": {"name": ...}}`` or ``{"name": ...}``.
    """
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    name = None
    if isinstance(choice, str):
        name = choice
    elif isinstance(choice, dict) and choice.get("type", "function") == "function":
        name = (choice.get("function") or {}).get("name") or choice.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            f"tool_choice={choice!r} is not understood: use 'auto', 'none', 'required' "
            "(or 'any'), a tool name or {'type': 'function', 'function': {'name': ...}}",
            field="tool_choice",
        )
    if name not in names:
        raise ConfigError(
            f"tool_choice names {name!r}, which is not among the bound tools "
            f"({', '.join(names) or 'none'})",
            field="tool_choice",
        )
    return {"type": "function", "function": {"name": name}}


def history_call(call_id: str, name: str, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """A tool call of an earlier assistant turn, as OpenAI chat messages carry it.

    ``arguments`` may be decoded already; missing arguments are sent as ``{}``.
    """
    if not arguments:
        arguments = "{}"
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
