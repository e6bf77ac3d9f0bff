"""The qwen3_coder format (Qwen3-Coder, Qwen3.5): XML-like calls with raw argument values.

``<tool_call>\\n<function=f>\\n<parameter=city>\\nParis\\n</parameter>\\n</function>\\n
</tool_call>``, repeatable; text may come before, between and after. A value is raw text
(one newline after its opening tag and one before its closing tag are not part of it),
converted to the JSON type the tool's schema gives that parameter: "string" stays the text,
other types are read as JSON where the text is that type's JSON, else stay the text. Without
a schema for it, a value is JSON where it parses as JSON. A parameter whose closing tag is
missing ends at the next parameter or at ``</function>``; a block may end the message
without ``</tool_call>``. Arguments stream one parameter at a time, as a JSON object like
every other format's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _dumps,
    _functions,
    _lark_json,
    _lark_string,
    _ordered_items,
    _parameters,
    _split_definitions,
    _text_without,
)
from candle_agents.openai.tool_parsers.json_reader import _COMPLETE, _FAIL, _MORE, _Call
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _Expect, _MarkupStream

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"
_FUNCTION = "<function="
_FUNCTION_END = "</function>"
_PARAMETER = "<parameter="
_PARAMETER_END = "</parameter>"
_VALUE_ENDS = (_PARAMETER_END, _PARAMETER, _FUNCTION_END)
_TAIL = max(len(end) for end in _VALUE_ENDS)
_Q_TAG, _Q_NAME, _Q_KEY, _Q_VALUE = range(4)
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


# -- argument values ----------------------------------------------------------------------


def _json_types(schema: Any) -> set[str]:
    """The JSON types ``schema`` allows; empty when it does not say (or allows anything)."""
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if "const" in schema:
        return {_type_name(schema["const"])}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return {_type_name(value) for value in schema["enum"]}
    found: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or []:
            kinds = _json_types(option)
            if not kinds:
                return set()
            found |= kinds
    return found


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return _TYPE_NAMES.get(type(value), "string")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: json.dumps would write Infinity, which is not JSON
        raise ValueError(f"{text} is out of range")
    return value


def _argument_value(text: str, schema: Any) -> Any:
    """A parameter's raw text as the JSON value its schema calls for."""
    kinds = _json_types(schema)
    if kinds == {"string"}:
        return text
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        if "boolean" in kinds and text.strip() in ("True", "False"):  # Python's spelling
            return text.strip() == "True"
        return text
    kind = _type_name(value)
    if not kinds or kind in kinds or (kind == "integer" and "number" in kinds):
        return value
    if kind == "number" and "integer" in kinds and math.isfinite(value) and value.is_integer():
        return int(value)
    return text


def _properties(tools: list[dict] | None) -> dict[str, dict]:
    """Each function's parameter schemas, by function name."""
    found = {}
    for spec in _functions(tools):
        props = _parameters(spec).get("properties")
        found[spec["name"]] = props if isinstance(props, dict) else {}
    return found


# -- streaming ----------------------------------------------------------------------------


class _Qwen3CoderStream(_MarkupStream):
    _open = _OPEN
    _skip_to = _CLOSE
    _skip_past = True

    def __init__(self, tools: list[dict] | None, *, incremental: bool = True) -> None:
        super().__init__(incremental=incremental)
        self._schemas = _properties(tools)

    def _begin(self) -> None:
        self._expect_tag(_FUNCTION)
        self._text = ""  # a name or key being read
        self._call: _Call | None = None
        self._props: dict[str, Any] = {}
        self._keys: set[str] = set()
        self._key = ""
        self._value: list[str] = []
        self._tail = ""  # the value's last characters, where a closing tag shows

    def _expect_tag(self, *options: str) -> None:
        self._phase = _Q_TAG
        self._expect = _Expect(*options)
        self._between = options == (_FUNCTION, _CLOSE)  # a function has just ended

    def _may_end(self) -> bool:
        # Generation may stop after </function> without </tool_call>.
        return self._phase == _Q_TAG and self._between and not self._expect.started

    def _push(self, ch: str) -> int:
        phase = self._phase
        if phase == _Q_VALUE:
            self._value.append(ch)
            self._tail = (self._tail + ch)[-_TAIL:]
            for end in _VALUE_ENDS:
                if self._tail.endswith(end):
                    return self._value_read(end)
            return _MORE
        if phase == _Q_TAG:
            got = self._expect.push(ch)
            if got is False:
                return _FAIL
            return _MORE if got is True else self._tag(got)
        # _Q_NAME or _Q_KEY: up to ">"
        if ch in "<\n":
            return _FAIL
        if ch != ">":
            self._text += ch
            return _MORE
        name, self._text = self._text.strip(), ""
        if not name:
            return _FAIL
        if phase == _Q_NAME:
            self._call = _Call(name)
            self._call.args = ["{"]
            self._calls.append(self._call)
            self._props = self._schemas.get(name, {})
            self._keys = set()
            self._expect_tag(_PARAMETER, _FUNCTION_END)
            return _MORE
        return self._start_value(name)

    def _tag(self, tag: str) -> int:
        if tag == _FUNCTION:
            self._phase = _Q_NAME
        elif tag == _PARAMETER:
            self._phase = _Q_KEY
        elif tag == _FUNCTION_END:
            self._function_done()
        else:  # _CLOSE
            return _COMPLETE
        return _MORE

    def _start_value(self, key: str) -> int:
        if key in self._keys:
            return _FAIL  # a repeated parameter: not one JSON object
        self._keys.add(key)
        self._key = key
        self._value = []
        self._tail = ""
        self._phase = _Q_VALUE
        return _MORE

    def _value_read(self, end: str) -> int:
        assert self._call is not None and self._call.args is not None
        text = "".join(self._value[: -len(end)])
        text = text.removeprefix("\n").removesuffix("\n")
        value = _argument_value(text, self._props.get(self._key))
        comma = ", " if len(self._keys) > 1 else ""
        self._call.args.append(f"{comma}{_dumps(self._key)}: {_dumps(value)}")
        if end == _PARAMETER:  # the closing tag was left out
            self._phase = _Q_KEY
        elif end == _FUNCTION_END:
            self._function_done()
        else:
            self._expect_tag(_PARAMETER, _FUNCTION_END)
        return _MORE

    def _function_done(self) -> None:
        assert self._call is not None and self._call.args is not None
        self._call.args.append("}")
        self._call.complete = True
        self._expect_tag(_FUNCTION, _CLOSE)


# -- the format ---------------------------------------------------------------------------


class Qwen3CoderToolParser(ToolParser):
    """``<tool_call><function=f><parameter=k>value</parameter></function></tool_call>``."""

    name = "qwen3_coder"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _FUNCTION in chat_template and _PARAMETER in chat_template

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _Qwen3CoderStream(tools, incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        blocks = []
        for call in calls:
            name, arguments = _call_arguments(call)
            if not isinstance(arguments, dict):
                arguments = {"arguments": arguments}  # not an object: passed on as one value
            lines = [_OPEN, f"{_FUNCTION}{name}>"]
            for key, value in arguments.items():
                text = value if isinstance(value, str) else _dumps(value)
                lines += [f"{_PARAMETER}{key}>", text, _PARAMETER_END]
            blocks.append("\n".join([*lines, _FUNCTION_END, _CLOSE]))
        return "".join(blocks)  # glued, as the call grammar writes them

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call a function, write its name and each argument's value inside tags, exactly "
            "like this, one block per call:\n"
            f"{_OPEN}\n{_FUNCTION}function_name>\n{_PARAMETER}argument_name>\n"
            f"<argument value>\n{_PARAMETER_END}\n{_FUNCTION_END}\n{_CLOSE}",
            "If no function is needed, answer normally without these tags.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        return "calls: call+" if parallel else "calls: call"

    def _call_expr(self, alternatives: str) -> str:
        return f"{_lark_string(_OPEN + chr(10))} ({alternatives}) {_lark_string(chr(10) + _CLOSE)}"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        params, defs = _split_definitions(_parameters(spec))
        props = params.get("properties")
        props = props if isinstance(props, dict) else {}
        required = set(params.get("required") or [])
        rules: list[str] = []
        items: list[tuple[str, bool]] = []
        for i, (key, schema) in enumerate(props.items()):
            schema = schema if isinstance(schema, dict) else {}
            opening = _lark_string(f"{_PARAMETER}{key}>\n")
            closing = _lark_string(f"\n{_PARAMETER_END}\n")
            choices = _string_choices(schema)
            if choices is not None:  # raw text, one of these
                value = "(" + " | ".join(_lark_string(c) for c in choices) + ")"
                items.append((f"{opening} {value} {closing}", key in required))
            elif "string" in _json_types(schema):
                # Raw text up to the first closing tag, which ends it after a newline (any
                # text is a string, so other types the schema allows need nothing more).
                value = f"{rule}_ARG{i}".upper()
                rules.append(f"{value}: {_raw_value()}")
                items.append((f'{opening} {value} "\\n"', key in required))
            else:  # JSON, which the parser reads back as such
                value = f"{rule}_arg{i}"
                rules.append(f"{value}: {_lark_json({**schema, **defs})}")
                items.append((f"{opening} {value} {closing}", key in required))
        head = _lark_string(f"{_FUNCTION}{spec['name']}>\n")
        body = f" {_ordered_items(items)}" if items else ""
        return [f"{rule}: {head}{body} {_lark_string(_FUNCTION_END)}", *rules]

    def _text_terminal(self) -> str:
        return _text_without(_OPEN)


def _string_choices(schema: dict) -> list[str] | None:
    """The strings a string parameter must be one of (``const``, ``enum``), if it must."""
    if _json_types(schema) != {"string"}:
        return None
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return list(enum) if isinstance(enum, list) and enum else None


def _raw_value() -> str:
    """A lark terminal: text ending with its first ``\\n</parameter>``, holding no other tag
    that ends a value (the parser would end it there)."""
    ends = "|".join(end.replace("/", "\\/") for end in _VALUE_ENDS)
    return f"/(?s:.*)\\n<\\/parameter>/ & ~/(?s:.*)({ends})(?s:.+)/"
