"""Call grammars (llguidance) of hermes, llama3_json, mistral and pythonic tool calls."""

from __future__ import annotations

import json

import pytest

from candle_agents.errors import ConfigError
from candle_agents.openai.tool_parsers import get_tool_parser
from tests.openai.tool_cases import PARSER_NAMES, TOOLS, calls_of, openai_call, weather


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_required_grammar_accepts_valid_calls_only(guidance, name):
    parser = get_tool_parser(name)
    grammar = parser.call_grammar(TOOLS, "required")
    good = [
        [weather()],
        [weather("東京", days=2)],
        [openai_call("get_time", {})],
        [weather(), openai_call("get_time", {})],
    ]
    for calls in good:
        text = parser.render_calls(calls)
        assert guidance(grammar, text), text
        assert len(parser.parse(text).tool_calls) == len(calls)
    bad = [
        [weather(3)],  # wrong type
        [openai_call("get_weather", {"days": 2})],  # required argument missing
        [openai_call("get_stock", {"symbol": "X"})],  # not an offered tool
    ]
    for calls in bad:
        text = parser.render_calls(calls)
        assert not guidance(grammar, text), text
    assert not guidance(grammar, "I don't need a tool.")
    single = parser.call_grammar(TOOLS, "required", parallel=False)
    assert guidance(single, parser.render_calls([weather()]))
    assert not guidance(single, parser.render_calls([weather(), weather("Rome")]))


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_named_grammar_allows_only_that_tool(guidance, name):
    parser = get_tool_parser(name)
    grammar = parser.call_grammar(TOOLS, "get_time")
    assert guidance(grammar, parser.render_calls([openai_call("get_time", {})]))
    assert not guidance(grammar, parser.render_calls([weather()]))
    assert not guidance(grammar, parser.render_calls([openai_call("get_time", {})] * 2))


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_auto_grammar_allows_text_or_calls(guidance, name):
    parser = get_tool_parser(name)
    grammar = parser.call_grammar(TOOLS, "auto")
    assert guidance(grammar, "The weather is fine, no tool needed.")
    assert guidance(grammar, parser.render_calls([weather(), openai_call("get_time", {})]))
    assert not guidance(grammar, parser.render_calls([weather(3)]))
    starts = {
        "hermes": "<tool_call>\nnot json",
        "mistral": "[TOOL_CALLS]oops",
        "llama3_json": '{"name": "oops"}',
        "pythonic": "[oops()]",
    }
    assert not guidance(grammar, starts[name])


def test_pythonic_grammar_values_parse_back(guidance):
    pythonic = get_tool_parser("pythonic")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "set",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "flag": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "my-key": {"type": "integer"},
                    },
                    "required": ["tags"],
                },
            },
        }
    ]
    grammar = pythonic.call_grammar(tools, "required")
    # %json writes JSON literals; the parser reads true/false/null as such.
    for text, arguments in [
        (
            '[set(flag=true, tags=["a"], **{"my-key": 1})]',
            {"flag": True, "tags": ["a"], "my-key": 1},
        ),
        ("[set(tags=[])]", {"tags": []}),
        ('[set(tags=["x"], **{"my-key": 2})]', {"tags": ["x"], "my-key": 2}),
    ]:
        assert guidance(grammar, text), text
        assert calls_of(pythonic.parse(text)) == [("set", arguments)]
    assert not guidance(grammar, "[set(flag=true)]")  # tags is required
    assert not guidance(grammar, '[set(tags="a")]')


def test_grammar_shapes():
    hermes = get_tool_parser("hermes")
    grammar = hermes.call_grammar(TOOLS, "required")
    assert 'call: "<tool_call>\\n" (call_get_weather | call_get_time) "\\n</tool_call>"' in grammar
    rule = next(line for line in grammar.splitlines() if line.startswith("call_get_time:"))
    schema = json.loads(rule.split("%json", 1)[1])
    assert schema == {
        "type": "object",
        "properties": {
            "name": {"const": "get_time"},
            "arguments": {"type": "object", "properties": {}},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    }


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_grammar_errors(name):
    parser = get_tool_parser(name)
    with pytest.raises(ConfigError) as info:
        parser.call_grammar(TOOLS, "get_stock")
    assert info.value.field == "tool_choice"
    with pytest.raises(ConfigError) as info:
        parser.call_grammar([], "required")
    assert info.value.field == "tools"


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_grammar_keeps_schema_definitions(guidance, name):
    # Pydantic-style schemas reference shared definitions from the schema root.
    parser = get_tool_parser(name)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "route",
                "parameters": {
                    "type": "object",
                    "properties": {"start": {"$ref": "#/$defs/Place"}},
                    "required": ["start"],
                    "$defs": {
                        "Place": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        }
                    },
                },
            },
        }
    ]
    grammar = parser.call_grammar(tools, "route")
    assert guidance(
        grammar, parser.render_calls([openai_call("route", {"start": {"city": "Oslo"}})])
    )
    assert not guidance(
        grammar, parser.render_calls([openai_call("route", {"start": {"city": 1}})])
    )


def test_grammar_json_is_written_as_json_dumps_writes_it(guidance):
    # Fixed separators: no room for a small model to ramble in whitespace.
    hermes = get_tool_parser("hermes")
    grammar = hermes.call_grammar(TOOLS, "required")
    canonical = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert guidance(grammar, canonical)
    assert not guidance(grammar, canonical.replace('": ', '":'))
    assert not guidance(grammar, canonical.replace("{", "{\n  ", 1))
