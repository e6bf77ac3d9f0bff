"""Shared helpers for prompts, rendering and call grammars.

Tool specs (``_functions``, ``_parameters``), the placeholder example call of the tools prompt
(``_placeholder_arguments``, ``_show_placeholders``), OpenAI call dicts as name and arguments
(``_call_arguments``, ``_dumps``), and the llguidance lark pieces every format's
``call_grammar`` is built from (``_lark_string``, ``_lark_json``, ``_rule_names``,
``_text_without``, ``_split_definitions``, ``_json_call_rule``, ``_ordered_items``).
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


# The example call in a tools prompt shows placeholders, not values: a small model copies
# concrete example values ({"a": 1}) into its calls instead of taking them from the request.
_HOLE = "\ue000{}\ue001"  # private-use marks: left alone by json.dumps and repr of strings
_HOLE_RE = re.compile('"?\ue000(\\d+)\ue001"?')


def _placeholder_arguments(schema: dict) -> tuple[dict, list[str]]:
    """Example arguments for ``schema`` (its required keys, else its first) and their names.

    Each value is a marker string; ``_show_placeholders`` turns the rendered markers, quoted
    or not, into ``<name>``.
    """
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return {}, []
    keys = [k for k in schema.get("required") or [] if k in props] or list(props)[:1]
    return {key: _HOLE.format(i) for i, key in enumerate(keys)}, keys


def _show_placeholders(text: str, names: list[str]) -> str:
    return _HOLE_RE.sub(lambda m: f"<{names[int(m.group(1))]}>", text)


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


def _ordered_items(items: list[tuple[str, bool]], separator: str = "") -> str:
    """Lark for named arguments in the given order, optional ones omissible.

    ``items`` are (lark expression, required) pairs; ``separator`` (a lark string, or "" for
    none) goes between two written items.
    """

    def after(item: str) -> str:
        return f"{separator} {item}" if separator else item

    def rest(k: int) -> str:
        return " ".join(
            after(item) if required else f"({after(item)})?" for item, required in items[k:]
        )

    alternatives = []
    for k, (item, required) in enumerate(items):
        alternatives.append(f"{item} {rest(k + 1)}".strip())
        if required:  # the first required argument is always written first or after optional ones
            return "(" + " | ".join(alternatives) + ")"
    return "(" + " | ".join(alternatives) + ")?"
