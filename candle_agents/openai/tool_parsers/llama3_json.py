"""The llama3_json format.

The whole message is ``{"name": "f", "parameters": {...}}`` (optionally after
``<|python_tag|>``), several separated by ``;``.
"""

from __future__ import annotations

import json
from typing import Any

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.grammar import _call_arguments, _dumps, _json_call_rule
from candle_agents.openai.tool_parsers.json_reader import _ARGUMENT_KEYS, _WS
from candle_agents.openai.tool_parsers.streams import (
    ToolCallStream,
    _strip_prefix_token,
    _WholeMessageStream,
)

# llama3_json: a call is an object with a name and its arguments and nothing else, so that a
# JSON answer such as {"name": "Ada", "age": 36} is not taken for a call of "Ada".
_LLAMA_TAG = "<|python_tag|>"


def _llama_looks_like_calls(head: str) -> bool | None:
    rest = _strip_prefix_token(head, _LLAMA_TAG)
    if rest is None or not rest:
        return None
    if rest[0] != "{":
        return False
    rest = rest[1:].lstrip()
    return (rest[0] == '"') if rest else None


def _llama_call(value: Any) -> tuple[str, str] | None:
    if not isinstance(value, dict) or set(value) - {"name", *_ARGUMENT_KEYS}:
        return None
    name = value.get("name")
    present = [key for key in _ARGUMENT_KEYS if key in value]
    if not isinstance(name, str) or not name or len(present) != 1:
        return None
    arguments = value[present[0]]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    try:
        return name, json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity, which json.loads lets through
        return None


def _llama_read_calls(text: str) -> list[tuple[str, str]] | None:
    rest = _strip_prefix_token(text, _LLAMA_TAG)
    if not rest:
        return None
    decoder = json.JSONDecoder(strict=False)  # raw newlines in strings, as hermes allows
    calls: list[tuple[str, str]] = []
    pos = 0
    while True:
        try:
            value, pos = decoder.raw_decode(rest, pos)
        except (ValueError, RecursionError):
            return None
        call = _llama_call(value)
        if call is None:
            return None
        calls.append(call)
        while pos < len(rest) and rest[pos] in _WS:
            pos += 1
        if pos == len(rest):
            return calls
        if rest[pos] != ";":
            return None
        pos += 1
        while pos < len(rest) and rest[pos] in _WS:
            pos += 1


class Llama3JsonToolParser(ToolParser):
    """A message that is only ``{"name": ..., "parameters": {...}}`` objects, ``;``-separated."""

    name = "llama3_json"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return _LLAMA_TAG in chat_template or (
            "ipython" in chat_template and "parameters" in chat_template
        )

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _WholeMessageStream(
            _llama_looks_like_calls, _llama_read_calls, incremental=incremental
        )

    def render_calls(self, calls: list[dict]) -> str:
        parts = []
        for call in calls:
            name, arguments = _call_arguments(call)
            parts.append(_dumps({"name": name, "parameters": arguments}))
        return "; ".join(parts)

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call a function, reply with only a JSON object, exactly like this, and no other "
            'text: {"name": <function name>, "parameters": <arguments object>}\n'
            'For several calls, separate the objects with "; ".',
            "If no function is needed, answer normally (not starting with {).",
        )

    def _calls_rule(self, parallel: bool) -> str:
        return 'calls: call ("; " call)*' if parallel else "calls: call"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "parameters")]

    def _text_terminal(self) -> str:
        return r"/\s*([^\s{](?s:.*))?/"
