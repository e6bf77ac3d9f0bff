"""The phi4_mini format (Phi-4-mini, Phi-4-multimodal).

``<|tool_call|>[{"name": "f", "arguments": {...}}, ...]<|/tool_call|>`` (a single object is
read too); text may come before it. Its template only lists tools between ``<|tool|>`` and
``<|/tool|>``; Ollama's phi4-mini template writes calls this way. A block whose list is
whole may end the message without its closing token.
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
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _Expect, _MarkupStream

_PHI_OPEN = "<|tool_call|>"
_PHI_CLOSE = "<|/tool_call|>"
_P_START, _P_ITEM_START, _P_ITEM, _P_ITEM_AFTER, _P_CLOSE = range(5)


class _Phi4MiniStream(_MarkupStream):
    _open = _PHI_OPEN
    _skip_to = _PHI_CLOSE
    _skip_past = True

    def _begin(self) -> None:
        self._phase = _P_START
        self._listed = False  # the calls are in a list, not a single object
        self._reader: _CallReader | None = None
        self._close = _Expect(_PHI_CLOSE)

    def _push(self, ch: str) -> int:
        phase = self._phase
        if phase == _P_ITEM:
            assert self._reader is not None
            result = self._reader.push(ch)
            if result == _COMPLETE:
                self._phase = _P_ITEM_AFTER if self._listed else _P_CLOSE
                return _MORE
            return result
        if phase == _P_CLOSE:
            got = self._close.push(ch)
            if got is False:
                return _FAIL
            return _MORE if got is True else _COMPLETE
        if ch in _WS:
            return _MORE
        if phase == _P_START and ch == "[":
            self._listed = True
            self._phase = _P_ITEM_START
        elif phase in (_P_START, _P_ITEM_START) and ch == "{":
            self._reader = _CallReader()
            self._calls.append(self._reader)
            self._reader.push(ch)
            self._phase = _P_ITEM
        elif phase == _P_ITEM_AFTER and ch == ",":
            self._phase = _P_ITEM_START
        elif phase == _P_ITEM_AFTER and ch == "]":
            self._phase = _P_CLOSE
        else:
            return _FAIL  # also "[]": the token must bring at least one call
        return _MORE

    def _may_end(self) -> bool:
        return self._phase == _P_CLOSE and not self._close.started


class Phi4MiniToolParser(ToolParser):
    """``<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`` (Phi-4-mini)."""

    name = "phi4_mini"
    needs_special_tokens = True

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _PHI_CLOSE in chat_template or (
            "<|tool|>" in chat_template and "<|/tool|>" in chat_template
        )

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _Phi4MiniStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        items = []
        for call in calls:
            name, arguments = _call_arguments(call)
            items.append({"name": name, "arguments": arguments})
        return f"{_PHI_OPEN}{_dumps(items)}{_PHI_CLOSE}" if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            f"To call functions, write {_PHI_OPEN}, a JSON list of calls and {_PHI_CLOSE}, "
            f'exactly like this: {_PHI_OPEN}[{{"name": <function name>, "arguments": '
            f"<arguments object>}}, ...]{_PHI_CLOSE}",
            "If no function is needed, answer normally.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # The tokens are written as text: a grammar cannot name a special token that the
        # tokenizer (our default one, say) may not have.
        more = ' (", " call)*' if parallel else ""
        return f"calls: {_lark_string(_PHI_OPEN + '[')} call{more} {_lark_string(']' + _PHI_CLOSE)}"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        return _text_without(_PHI_OPEN)
