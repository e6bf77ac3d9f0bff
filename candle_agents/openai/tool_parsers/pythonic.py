"""The pythonic format (Llama 3.2/4): the whole message is a Python list of calls.

``[f(a=1, b="x"), g()]``, optionally between ``<|python_start|>`` and ``<|python_end|>``.
Its call reading (``_parse_python``, ``_read_call_nodes``), writing (``_py_call``) and call
rules (``_python_call_rules``) serve the gemma format too.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import warnings
from typing import Any

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _dumps,
    _lark_json,
    _lark_string,
    _ordered_items,
    _parameters,
    _split_definitions,
)
from candle_agents.openai.tool_parsers.streams import (
    ToolCallStream,
    _strip_prefix_token,
    _WholeMessageStream,
)

# pythonic: [f(a=1, b="x"), g()] read with ``ast``; values are literals only.
_PY_START = "<|python_start|>"
_PY_END = "<|python_end|>"
_JSON_NAMES = {"true": True, "false": False, "null": None}
# The pythonic format as Llama 3.2/4 pythonic templates describe it to the model.
_PYTHONIC_TEMPLATE_RE = re.compile(r"\[\s*func_name\d*\s*\(")


def _pythonic_looks_like_calls(head: str) -> bool | None:
    rest = _strip_prefix_token(head, _PY_START)
    if rest is None or not rest:
        return None
    match = re.match(r"\[\s*(?:([A-Za-z_][\w.]*)\s*(\(?))?", rest)
    if match is None:
        return False
    if match.group(2):
        return True
    if match.end() == len(rest):
        return None  # the text ends inside "[name ": wait for more
    return False


def _py_literal(node: ast.AST) -> Any:
    """The value of a literal expression; ValueError for anything else."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (str, int, float))
    ):
        value = node.value
        if isinstance(value, str) and re.search("[\ud800-\udfff]", value):
            # \ud83d\ude00 in a Python literal gives two surrogates: pair them as JSON would.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_py_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            name = _py_literal(key) if key is not None else None
            if not isinstance(name, str):
                raise ValueError("dict keys must be strings")
            result[name] = _py_literal(value)
        return result
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]  # models trained on JSON often write these
    raise ValueError("not a literal")


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _parse_python(source: str, mode: str) -> ast.AST | None:
    """``ast.parse`` of model-written source; None where it is not Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in model-written strings
            return ast.parse(source, mode=mode)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _read_call_nodes(nodes: list[ast.expr]) -> list[tuple[str, str]] | None:
    """Name and JSON arguments of each node; None unless all are calls with literal keywords."""
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        if name is None:
            return None
        arguments: dict[str, Any] = {}
        try:
            for kw in node.keywords:
                value = _py_literal(kw.value)
                given = {kw.arg: value} if kw.arg is not None else value
                # f(**{"not-an-identifier": 1}) is how such keys are written; a repeated key
                # is an error in Python (ast.parse leaves that check to the compiler).
                if not isinstance(given, dict) or given.keys() & arguments.keys():
                    return None
                arguments.update(given)
            calls.append((name, json.dumps(arguments, ensure_ascii=False, allow_nan=False)))
        except (ValueError, RecursionError):
            return None
    return calls


def _pythonic_read_calls(text: str) -> list[tuple[str, str]] | None:
    source = _strip_prefix_token(text, _PY_START)
    if not source:
        return None
    source = source.rstrip()
    if source.endswith(_PY_END):
        source = source[: -len(_PY_END)]
    tree = _parse_python(source.strip(), "eval")
    if tree is None or not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    return _read_call_nodes(tree.body.elts)


def _py_value(value: Any) -> str:
    """A JSON value as a Python literal, strings double-quoted as the call grammar writes them."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (str, int, float)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_py_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_dumps(str(k))}: {_py_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


class PythonicToolParser(ToolParser):
    """A message that is only a Python list of calls (Llama 3.2/4 pythonic)."""

    name = "pythonic"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _PYTHONIC_TEMPLATE_RE.search(chat_template) is not None

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _WholeMessageStream(
            _pythonic_looks_like_calls, _pythonic_read_calls, incremental=incremental
        )

    def render_calls(self, calls: list[dict]) -> str:
        items = [_py_call(*_call_arguments(call)) for call in calls]
        return f"[{', '.join(items)}]" if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call functions, reply with only a Python list of calls with keyword arguments "
            "and literal values, exactly like this, and no other text: "
            "[func_name1(param1=value1, param2=value2), func_name2(param=value)]",
            "If no function is needed, answer normally (not starting with [).",
        )

    def _calls_rule(self, parallel: bool) -> str:
        more = ' (", " call)*' if parallel else ""
        return f'calls: "[" call{more} "]"'

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return _python_call_rules(rule, spec)

    def _text_terminal(self) -> str:
        return r"/\s*([^\s\[](?s:.*))?/"


def _py_call(name: str, arguments: Any) -> str:
    """One call as Python source: keyword arguments, ``**{...}`` for keys that cannot be."""
    if not isinstance(arguments, dict):
        arguments = {"arguments": arguments}  # not an object: passed on as one value
    plain = []
    odd = {}
    for key, value in arguments.items():
        if key.isidentifier() and not keyword.iskeyword(key):
            plain.append(f"{key}={_py_value(value)}")
        else:
            odd[key] = value
    if odd:
        plain.append(f"**{_py_value(odd)}")
    return f"{name}({', '.join(plain)})"


def _python_call_rules(rule: str, spec: dict) -> list[str]:
    """Lark rules for one Python call of ``spec``: ``name(key=<JSON value>, ...)``."""
    params, defs = _split_definitions(_parameters(spec))
    props = params.get("properties")
    props = props if isinstance(props, dict) else {}
    required = set(params.get("required") or [])
    rules: list[str] = []
    items: list[tuple[str, bool]] = []
    for i, (key, schema) in enumerate(props.items()):
        value_rule = f"{rule}_arg{i}"
        schema = schema if isinstance(schema, dict) else {}
        rules.append(f"{value_rule}: {_lark_json({**schema, **defs})}")
        if key.isidentifier() and not keyword.iskeyword(key):
            item = f"{_lark_string(key + '=')} {value_rule}"
        else:
            item = f'{_lark_string("**{" + _dumps(key) + ": ")} {value_rule} "}}"'
        items.append((item, key in required))
    if not items:
        return [f"{rule}: {_lark_string(spec['name'] + '()')}"]
    head = f"{rule}: {_lark_string(spec['name'] + '(')} "
    return [head + _ordered_items(items, '", "') + ' ")"', *rules]
