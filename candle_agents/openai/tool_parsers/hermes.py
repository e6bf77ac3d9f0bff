"""The hermes format (Qwen2.5/3, Hermes, most ChatML models).

``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``, repeatable; text may come
before, between and after. It is also the default when a chat template shows no convention.
"""

from __future__ import annotations

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _dumps,
    _json_call_rule,
    _lark_string,
    _text_without,
)
from candle_agents.openai.tool_parsers.json_reader import (
    _COMPLETE,
    _FAIL,
    _MORE,
    _WS,
    _CallReader,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _MarkupStream

_HERMES_OPEN = "<tool_call>"
_HERMES_CLOSE = "</tool_call>"


class _HermesStream(_MarkupStream):
    _open = _HERMES_OPEN
    _skip_to = _HERMES_CLOSE
    _skip_past = True

    def _begin(self) -> None:
        self._reader = _CallReader()
        self._calls = [self._reader]
        self._closed = -1  # characters of the closing tag matched; -1 while in the object

    def _push(self, ch: str) -> int:
        if self._closed < 0:
            result = self._reader.push(ch)
            if result == _COMPLETE:
                self._closed = 0
                return _MORE
            return result
        if self._closed == 0 and ch in _WS:
            return _MORE
        if ch != _HERMES_CLOSE[self._closed]:
            return _FAIL
        self._closed += 1
        return _COMPLETE if self._closed == len(_HERMES_CLOSE) else _MORE


class HermesToolParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (ChatML models)."""

    name = "hermes"

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _HermesStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        blocks = []
        for call in calls:
            name, arguments = _call_arguments(call)
            body = _dumps({"name": name, "arguments": arguments})
            blocks.append(f"{_HERMES_OPEN}\n{body}\n{_HERMES_CLOSE}")
        return "".join(blocks)  # glued, as the call grammar writes them

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call a function, write its name and arguments as JSON inside tags, exactly "
            "like this, one block per call:\n"
            f'{_HERMES_OPEN}\n{{"name": <function name>, "arguments": <arguments object>}}\n'
            f"{_HERMES_CLOSE}",
            "If no function is needed, answer normally without these tags.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # No newline between calls: a small model offered "\n" after a call
        # takes it and then must start another call, looping to max_tokens;
        # with the next "<tool_call>" glued on, it chooses between that and EOS.
        return "calls: call+" if parallel else "calls: call"

    def _call_expr(self, alternatives: str) -> str:
        return f"{_lark_string(_HERMES_OPEN + chr(10))} ({alternatives}) " + _lark_string(
            "\n" + _HERMES_CLOSE
        )

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        return _text_without(_HERMES_OPEN)
