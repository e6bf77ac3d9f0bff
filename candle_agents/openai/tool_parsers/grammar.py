"""Shared helpers for prompts, rendering and call grammars.

Tool specs (``_functions``, ``_parameters``), example arguments for the tools prompt, OpenAI
call dicts as name and arguments (``_call_arguments``, ``_dumps``), and the llguidance lark
pieces every format's ``call_grammar`` is built from (``_lark_string``, ``_lark_json``,
``_rule_names``, ``_text_without``, ``_split_definitions``, ``_json_call_rule``).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

# -- tool specs ---------------------------------------------------------------------------


def _functions(tools: list[dict] | None) -> list[dict]:
    """The function specs of OpenAI tool dicts (bare function dicts accepted), first of a name."""
    found: dict[str, dict] = {}
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        spec = tool.get("function", tool)
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            found.setdefault(spec["name"], spec)
    return list(found.values())


def _parameters(spec: dict) -> dict:
    """The JSON schema of a function's arguments; an empty one means any object."""
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        return {"type": "object", "properties": {}}
    if "type" not in params:
        return {"type": "object", **params}
    return params


def _example_value(schema: Any, depth: int = 0) -> Any:
    """A plausible value for ``schema``, for the example call in a tools prompt."""
    if not isinstance(schema, dict):
        return "..."
    if "const" in schema:
        return schema["const"]
    for key in ("enum", "examples"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example_value(schema[key][0], depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return _example_arguments(schema, depth + 1) if depth < 3 else {}
    if kind == "array":
        return [_example_value(schema.get("items"), depth + 1)] if depth < 3 else []
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), "...")


def _example_arguments(schema: dict, depth: int = 0) -> dict:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return {}
    required = [k for k in schema.get("required") or [] if k in props] or list(props)[:1]
    return {k: _example_value(props[k], depth) for k in required}


def _call_arguments(call: dict) -> tuple[str, Any]:
    """Name and arguments (decoded when they are JSON) of an OpenAI-shaped call dict."""
    spec = call.get("function", call)
    arguments = spec.get("arguments")
    if isinstance(arguments, str):
        # Not JSON: passed on as the string it is, so the model still sees it.
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments) if arguments.strip() else {}
    elif arguments is None:
        arguments = {}
    return str(spec.get("name", "")), arguments


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# JSON in grammars is written the way json.dumps writes it (and our parsers normalise to):
# llguidance's default flexible whitespace lets small models ramble in blanks until max_tokens,
# and fixed separators let it force the tokens of a call's name and keys.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lark_json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def _rule_names(names: list[str]) -> list[str]:
    """Distinct lark rule names, one per function name."""
    taken: set[str] = set()
    rules = []
    for i, name in enumerate(names):
        rule = "call_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
        if rule in taken:
            rule = f"{rule}_{i}"
        taken.add(rule)
        rules.append(rule)
    return rules


def _text_without(marker: str) -> str:
    """A lark terminal for any text not containing ``marker``."""
    escaped = re.escape(marker).replace("/", "\\/")
    return f"/(?s:.*)/ & ~/(?s:.*){escaped}(?s:.*)/"


def _split_definitions(schema: dict) -> tuple[dict, dict]:
    """``schema`` without its definitions, and those definitions.

    Refs such as ``#/$defs/Item`` point from the document root, so when a schema is nested
    in another one its definitions must move to the new root.
    """
    defs = {key: schema[key] for key in ("$defs", "definitions") if key in schema}
    return {k: v for k, v in schema.items() if k not in defs}, defs


def _json_call_rule(rule: str, spec: dict, arguments_key: str) -> str:
    params, defs = _split_definitions(_parameters(spec))
    schema = {
        "type": "object",
        "properties": {"name": {"const": spec["name"]}, arguments_key: params},
        "required": ["name", arguments_key],
        "additionalProperties": False,
        **defs,
    }
    return f"{rule}: {_lark_json(schema)}"
