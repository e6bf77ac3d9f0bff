"""The deepseek_v3 format (DeepSeek V3, R1 and the R1 distills; V3.1's variant is read too).

A block of calls between ``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>`` (fullwidth
bars, "▁" for spaces: special tokens), each call ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>``
then the name, a newline and the arguments in a json code fence, then ``<｜tool▁call▁end｜>``;
V3.1 writes ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`` instead. Text
may come before the block.
"""

from __future__ import annotations

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _dumps,
    _lark_json,
    _lark_string,
    _parameters,
    _text_without,
)
from candle_agents.openai.tool_parsers.json_reader import (
    _COMPLETE,
    _FAIL,
    _MORE,
    _WS,
    _Call,
    _Json,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream, _Expect, _MarkupStream

_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
_CALLS_END = "<｜tool▁calls▁end｜>"
_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_CALL_END = "<｜tool▁call▁end｜>"
_SEP = "<｜tool▁sep｜>"
_TYPE = "function"  # V3 writes the call's type before the separator, V3.1 its name
_FENCE = "```"
(
    _D_MARKER,  # expecting one of the markers in self._expect
    _D_HEAD,  # the type (V3) or the name (V3.1), up to the separator
    _D_AFTER_SEP,  # V3: the name follows; V3.1: the arguments
    _D_NAME,  # V3: the name, up to the newline
    _D_FENCE_OPEN,  # V3: ``` and its language (json)
    _D_ARGS_START,  # V3.1: whitespace, then the arguments
    _D_ARGS,
) = range(7)


class _DeepSeekStream(_MarkupStream):
    _open = _CALLS_BEGIN
    _skip_to = _CALLS_END
    _skip_past = True

    def _begin(self) -> None:
        self._expect_marker(_CALL_BEGIN)
        self._text = ""
        self._fenced = False  # V3: the arguments are in a code fence
        self._json: _Json | None = None

    def _expect_marker(self, *options: str) -> None:
        self._phase = _D_MARKER
        self._expect = _Expect(*options)
        self._between = options == (_CALL_BEGIN, _CALLS_END)  # a call has just ended

    def _may_end(self) -> bool:
        # Generation may stop after a call without the block's closing marker.
        return self._phase == _D_MARKER and self._between and not self._expect.started

    def _push(self, ch: str) -> int:
        phase = self._phase
        if phase == _D_ARGS:
            return self._push_args(ch)
        if phase == _D_MARKER:
            got = self._expect.push(ch)
            if got is False:
                return _FAIL
            if got is True:
                return _MORE
            return self._marker(got)
        if phase in (_D_HEAD, _D_NAME):
            end = "<" if phase == _D_HEAD else "\n"
            if ch != end:
                self._text += ch
                return _MORE
            name = self._text.strip()
            if not name or any(c in _WS for c in name):
                return _FAIL
            self._text = ""
            self._calls.append(_Call(name))  # from _D_HEAD: the name, unless it is V3's type
            if phase == _D_NAME:
                self._phase = _D_FENCE_OPEN
                return _MORE
            self._expect_marker(_SEP)
            return self._push(ch)
        if phase == _D_AFTER_SEP:
            if self._calls[-1].name == _TYPE and ch != "{":  # V3: the type, then the name
                self._calls.pop()
                self._phase = _D_NAME
                return self._push(ch)
            self._phase = _D_ARGS_START
            return self._push(ch)
        if phase == _D_FENCE_OPEN:
            if not self._text.startswith(_FENCE):
                if not self._text and ch in _WS:
                    return _MORE
                self._text += ch
                return _MORE if _FENCE.startswith(self._text) else _FAIL
            if ch.isalnum():
                self._text += ch  # the fence's language
                return _MORE
            self._fenced = True
            self._text = ""
            self._phase = _D_ARGS_START
            return self._push(ch)
        # _D_ARGS_START
        if ch in _WS:
            return _MORE
        if ch != "{":
            return _FAIL
        self._json = _Json()
        self._json.push(ch)
        self._calls[-1].args = self._json.out  # streamed as it grows
        self._phase = _D_ARGS
        return _MORE

    def _push_args(self, ch: str) -> int:
        assert self._json is not None
        self._json.push(ch)
        if self._json.failed:
            return _FAIL
        if self._json.done:
            self._expect_marker(_FENCE if self._fenced else _CALL_END)
        return _MORE

    def _marker(self, marker: str) -> int:
        if marker == _CALL_BEGIN:
            self._phase = _D_HEAD
            self._fenced = False
        elif marker == _SEP:
            self._phase = _D_AFTER_SEP
        elif marker == _FENCE:
            self._expect_marker(_CALL_END)
        elif marker == _CALL_END:
            self._calls[-1].complete = True
            self._expect_marker(_CALL_BEGIN, _CALLS_END)
        else:  # _CALLS_END
            return _COMPLETE
        return _MORE


class DeepSeekV3ToolParser(ToolParser):
    """DeepSeek V3/R1's ``<｜tool▁calls▁begin｜>`` blocks (and V3.1's simpler calls)."""

    name = "deepseek_v3"
    needs_special_tokens = True

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return "tool▁calls▁begin" in chat_template

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _DeepSeekStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        if not calls:
            return ""
        written = []
        for call in calls:
            name, arguments = _call_arguments(call)
            written.append(_v3_call(name, _dumps(arguments)))
        return _CALLS_BEGIN + "\n".join(written) + _CALLS_END  # as the template joins them

    def _instructions(self) -> tuple[str, str]:
        call = _v3_call("<function name>", "<arguments object>")
        return (
            "To call functions, write them exactly like this, one line per call, all between "
            f"{_CALLS_BEGIN} and {_CALLS_END}:\n{_CALLS_BEGIN}{call}{_CALLS_END}",
            "If no function is needed, answer normally.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # The markers are written as text: a grammar cannot name a special token that the
        # tokenizer (our default one, say) may not have.
        more = ' ("\\n" call)*' if parallel else ""
        return f"calls: {_lark_string(_CALLS_BEGIN)} call{more} {_lark_string(_CALLS_END)}"

    def _call_expr(self, alternatives: str) -> str:
        head = _lark_string(_CALL_BEGIN + _TYPE + _SEP)
        return f"{head} ({alternatives}) {_lark_string(chr(10) + _FENCE + _CALL_END)}"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        head = _lark_string(f"{spec['name']}\n{_FENCE}json\n")
        return [f"{rule}: {head} {rule}_args", f"{rule}_args: {_lark_json(_parameters(spec))}"]

    def _text_terminal(self) -> str:
        return _text_without(_CALLS_BEGIN)


def _v3_call(name: str, arguments: str) -> str:
    """One call as V3 writes it, ``arguments`` being JSON text."""
    return f"{_CALL_BEGIN}{_TYPE}{_SEP}{name}\n{_FENCE}json\n{arguments}\n{_FENCE}{_CALL_END}"
