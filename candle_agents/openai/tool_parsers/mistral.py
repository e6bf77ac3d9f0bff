"""The mistral format.

``[TOOL_CALLS]`` then a JSON list of calls, or ``[TOOL_CALLS]f[ARGS]{...}`` (repeatable); text
before it is content.
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
    _Call,
    _CallReader,
    _Json,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _MarkupStream

_MISTRAL_OPEN = "[TOOL_CALLS]"
_MISTRAL_ARGS = "[ARGS]"
_MISTRAL_CALL_ID = "[CALL_ID]"
(
    _M_START,
    _M_ITEM_START,
    _M_ITEM,
    _M_ITEM_AFTER,
    _M_NAME,
    _M_TAG,
    _M_CALL_ID,
    _M_ARGS_START,
    _M_ARGS,
) = range(9)


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_-."


class _MistralStream(_MarkupStream):
    _open = _MISTRAL_OPEN
    _skip_to = _MISTRAL_OPEN
    _skip_past = False

    def _begin(self) -> None:
        self._phase = _M_START
        self._reader: _CallReader | None = None
        self._name = ""
        self._tag = ""
        self._had_id = False
        self._args: _Json | None = None

    def _push(self, ch: str) -> int:
        phase = self._phase
        if phase == _M_ITEM:  # a call object in the list form
            assert self._reader is not None
            result = self._reader.push(ch)
            if result == _COMPLETE:
                self._phase = _M_ITEM_AFTER
                return _MORE
            return result
        if phase == _M_ARGS:  # the arguments object of the name form
            assert self._args is not None
            self._args.push(ch)
            if self._args.failed:
                return _FAIL
            if self._args.done:
                self._calls[-1].complete = True
                return _COMPLETE
            return _MORE
        if phase == _M_START:
            if ch in _WS:
                return _MORE
            if ch == "[":
                self._phase = _M_ITEM_START
            elif _is_name_char(ch):
                self._name = ch
                self._phase = _M_NAME
            else:
                return _FAIL
        elif phase == _M_ITEM_START:
            if ch in _WS:
                return _MORE
            if ch != "{":
                return _FAIL  # also "[]": the marker must bring at least one call
            self._reader = _CallReader()
            self._calls.append(self._reader)
            self._reader.push(ch)
            self._phase = _M_ITEM
        elif phase == _M_ITEM_AFTER:
            if ch in _WS:
                return _MORE
            if ch == "]":
                return _COMPLETE
            if ch != ",":
                return _FAIL
            self._phase = _M_ITEM_START
        elif phase in (_M_NAME, _M_CALL_ID):
            if ch == "[":
                self._tag = ch
                self._phase = _M_TAG
            elif not _is_name_char(ch):
                return _FAIL
            elif phase == _M_NAME:
                self._name += ch
        elif phase == _M_TAG:
            self._tag += ch
            if self._tag == _MISTRAL_ARGS:
                self._phase = _M_ARGS_START
            elif self._tag == _MISTRAL_CALL_ID and not self._had_id:
                # Some versions write the call's id before its arguments; ours replace it.
                self._had_id = True
                self._phase = _M_CALL_ID
            elif not (
                _MISTRAL_ARGS.startswith(self._tag)
                or (not self._had_id and _MISTRAL_CALL_ID.startswith(self._tag))
            ):
                return _FAIL
        elif phase == _M_ARGS_START:
            if ch in _WS:
                return _MORE
            if ch != "{":
                return _FAIL
            self._args = _Json()
            self._args.push(ch)
            call = _Call(self._name)
            call.args = self._args.out
            self._calls.append(call)
            self._phase = _M_ARGS
        return _MORE


class MistralToolParser(ToolParser):
    """``[TOOL_CALLS]`` and a JSON list of calls, or ``[TOOL_CALLS]name[ARGS]{...}``."""

    name = "mistral"
    needs_special_tokens = True

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _MISTRAL_OPEN in chat_template

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _MistralStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        items = []
        for call in calls:
            name, arguments = _call_arguments(call)
            items.append({"name": name, "arguments": arguments})
        return _MISTRAL_OPEN + _dumps(items) if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            f"To call functions, write {_MISTRAL_OPEN} followed by a JSON list of calls, exactly "
            f'like this: {_MISTRAL_OPEN}[{{"name": <function name>, "arguments": <arguments '
            "object>}, ...]",
            "If no function is needed, answer normally.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # [TOOL_CALLS] is written as text: llguidance cannot name a special token spelt with
        # brackets, and a tokenizer without it (our default) has to spell it anyway.
        more = ' (", " call)*' if parallel else ""
        return f'calls: {_lark_string(_MISTRAL_OPEN + "[")} call{more} "]"'

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        return _text_without(_MISTRAL_OPEN)
