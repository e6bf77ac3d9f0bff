"""The granite format (IBM Granite 3.x): the whole message is a JSON list of calls.

``<|tool_call|>[{"name": "f", "arguments": {...}}, ...]``, with no closing token; Granite
3.1+ templates ask for exactly this ("respond with <|tool_call|> followed by a JSON list of
tools used"). ``<tool_call>`` in place of the token, or no token at all, is read too. As with
llama3_json, a call object holds a name and its arguments and nothing else, so that a JSON
list answer is not taken for calls.
"""

from __future__ import annotations

import json

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import (
    _call_arguments,
    _dumps,
    _json_call_rule,
    _lark_string,
)
from candle_agents.openai.tool_parsers.json_reader import _WS
from candle_agents.openai.tool_parsers.llama3_json import _llama_call
from candle_agents.openai.tool_parsers.streams import (
    ToolCallStream,
    _strip_prefix_token,
    _WholeMessageStream,
)

_GRANITE_TOKEN = "<|tool_call|>"
_GRANITE_TAG = "<tool_call>"  # what some Granite 3.1 outputs start with instead


def _strip_granite_prefix(text: str) -> str | None:
    """``text`` (stripped) after its leading token or tag; None while it may be one."""
    rest = _strip_prefix_token(text, _GRANITE_TOKEN)
    return None if rest is None else _strip_prefix_token(rest, _GRANITE_TAG)


def _granite_looks_like_calls(head: str) -> bool | None:
    rest = _strip_granite_prefix(head)
    if not rest:
        return None
    if rest[0] != "[":
        return False
    rest = rest[1:].lstrip()
    if not rest:
        return None
    if rest[0] != "{":
        return False
    rest = rest[1:].lstrip()
    return (rest[0] == '"') if rest else None


def _granite_read_calls(text: str) -> list[tuple[str, str]] | None:
    rest = _strip_granite_prefix(text)
    if not rest:
        return None
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(rest)
    except (ValueError, RecursionError):
        return None
    if rest[end:].strip(_WS) or not isinstance(value, list) or not value:
        return None
    calls = [_llama_call(item) for item in value]
    return None if None in calls else calls  # type: ignore[return-value]


class GraniteToolParser(ToolParser):
    """A message that is only ``<|tool_call|>`` and a JSON list of calls (Granite 3.x)."""

    name = "granite"
    needs_special_tokens = True

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _GRANITE_TOKEN in chat_template

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _WholeMessageStream(
            _granite_looks_like_calls, _granite_read_calls, incremental=incremental
        )

    def render_calls(self, calls: list[dict]) -> str:
        items = []
        for call in calls:
            name, arguments = _call_arguments(call)
            items.append({"name": name, "arguments": arguments})
        return _GRANITE_TOKEN + _dumps(items) if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            f"To call functions, reply with only {_GRANITE_TOKEN} followed by a JSON list of "
            f'calls, exactly like this, and no other text: {_GRANITE_TOKEN}[{{"name": '
            '<function name>, "arguments": <arguments object>}, ...]',
            f"If no function is needed, answer normally (not starting with {_GRANITE_TOKEN} or [).",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # The token is written as text: a grammar cannot name a special token that the
        # tokenizer (our default one, say) may not have.
        more = ' (", " call)*' if parallel else ""
        return f'calls: {_lark_string(_GRANITE_TOKEN + "[")} call{more} "]"'

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        # Not a list, and not the token or the tag: text that parse() keeps as content.
        return r"/\s*([^\s\[](?s:.*))?/ & ~/\s*(<\|tool_call\|>|<tool_call>)(?s:.*)/"
