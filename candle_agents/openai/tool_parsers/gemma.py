"""The gemma format (Gemma 3, which has no tool tokens): Python calls in a fenced block.

A block opens with ```tool_code and a newline, holds calls such as ``f(a=1, b="x")``, one a
line (or a pythonic list of them), and closes with ```; text may come before, between and
after. The calls are read, written and constrained as the pythonic format's are.
"""

from __future__ import annotations

import ast
import textwrap

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _lark_string,
    _text_without,
)
from candle_agents.openai.tool_parsers.json_reader import _COMPLETE, _FAIL, _MORE, _WS, _Call
from candle_agents.openai.tool_parsers.pythonic import (
    _parse_python,
    _py_call,
    _python_call_rules,
    _read_call_nodes,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _MarkupStream

_FENCE = "```"
_GEMMA_OPEN = _FENCE + "tool_code"


def _gemma_read_calls(body: str) -> list[tuple[str, str]] | None:
    """The calls of a block's body: call statements, or lists of calls; None if it is not."""
    tree = _parse_python(textwrap.dedent(body).strip(), "exec")
    if tree is None:
        return None
    nodes: list[ast.expr] = []
    for statement in tree.body:
        if not isinstance(statement, ast.Expr):
            return None
        value = statement.value
        nodes.extend(value.elts if isinstance(value, ast.List) else [value])
    return _read_call_nodes(nodes) if nodes else None


class _GemmaStream(_MarkupStream):
    _open = _GEMMA_OPEN
    _skip_to = _FENCE  # never used: calls are only announced once their block is whole
    _skip_past = True

    def _begin(self) -> None:
        self._body: list[str] = []
        self._opened = False  # the fence line ended ("```tool_code" then whitespace)

    def _push(self, ch: str) -> int:
        if not self._opened:
            if ch not in _WS:
                return _FAIL  # another info string, such as ```tool_codes
            self._opened = True
            return _MORE
        self._body.append(ch)
        if ch != "`" or "".join(self._body[-3:]) != _FENCE:
            return _MORE
        # A closing fence, unless it is inside a string: then the body does not parse yet.
        calls = _gemma_read_calls("".join(self._body[:-3]))
        if calls is None:
            return _MORE
        for name, arguments in calls:
            call = _Call(name)
            call.args = [arguments]
            call.complete = True
            self._calls.append(call)
        return _COMPLETE


class GemmaToolParser(ToolParser):
    """Python calls in a ```tool_code block (Gemma 3, prompted: it has no tool tokens)."""

    name = "gemma"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        # Templates that teach the block, and Gemma's own turn template, which has no tools.
        return "tool_code" in chat_template or (
            "<start_of_turn>" in chat_template and "tool" not in chat_template
        )

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _GemmaStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        if not calls:
            return ""
        lines = [_py_call(*_call_arguments(call)) for call in calls]
        return "\n".join([_GEMMA_OPEN, *lines, _FENCE])

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call functions, write Python calls with keyword arguments and literal values "
            "in a tool_code block, one call a line, exactly like this:\n"
            f"{_GEMMA_OPEN}\nfunc_name1(param1=value1, param2=value2)\n{_FENCE}",
            "If no function is needed, answer normally without a tool_code block.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        more = ' ("\\n" call)*' if parallel else ""
        head, tail = _lark_string(_GEMMA_OPEN + "\n"), _lark_string("\n" + _FENCE)
        return f"calls: {head} call{more} {tail}"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return _python_call_rules(rule, spec)

    def _text_terminal(self) -> str:
        return _text_without(_GEMMA_OPEN)
