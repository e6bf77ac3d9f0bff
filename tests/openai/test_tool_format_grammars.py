"""Call grammars of the newer tool-call formats, and a forced call in each on the default model."""

from __future__ import annotations

import asyncio
import json

import pytest

from candle_agents.openai.tool_parsers import get_tool_parser
from tests.openai.tool_cases import (
    DS_OPEN,
    FENCE,
    FORMATS,
    PHI_OPEN,
    TOOLS,
    calls_of,
    openai_call,
    weather,
)

# -- call grammars (llguidance) ---------------------------------------------------------------


def as_text(name: str, calls: list[dict]) -> str:
    return get_tool_parser(name).render_calls(calls)


@pytest.mark.parametrize("name", FORMATS)
def test_required_grammar_accepts_valid_calls_only(guidance, name):
    parser = get_tool_parser(name)
    grammar = parser.call_grammar(TOOLS, "required")
    good = [
        [weather()],
        [weather("東京", days=2)],
        [weather('a "quoted"\nline')],
        [openai_call("get_time", {})],
        [weather(), openai_call("get_time", {})],
    ]
    for calls in good:
        text = parser.render_calls(calls)
        assert guidance(grammar, text), text
        # what the grammar lets through is what the parser reads
        assert calls_of(parser.parse(text, TOOLS)) == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls
        ]
    bad = [
        [weather(days="two")],  # wrong type
        [openai_call("get_weather", {"days": 2})],  # required argument missing
        [openai_call("get_stock", {"symbol": "X"})],  # not an offered tool
    ]
    for calls in bad:
        text = parser.render_calls(calls)
        assert not guidance(grammar, text), text
    assert not guidance(grammar, "I don't need a tool.")


@pytest.mark.parametrize("name", FORMATS)
def test_parallel_tool_calls_false_allows_one_call_only(guidance, name):
    parser = get_tool_parser(name)
    one, two = [weather()], [weather(), weather("Rome")]
    for mode in ("required", "auto"):
        single = parser.call_grammar(TOOLS, mode, parallel=False)
        assert guidance(single, as_text(name, one)), mode
        assert not guidance(single, as_text(name, two)), mode
        assert guidance(parser.call_grammar(TOOLS, mode, parallel=True), as_text(name, two))
    named = parser.call_grammar(TOOLS, "get_weather", parallel=True)  # always one call
    assert guidance(named, as_text(name, one))
    assert not guidance(named, as_text(name, two))
    assert not guidance(named, as_text(name, [openai_call("get_time", {})]))


@pytest.mark.parametrize("name", FORMATS)
def test_auto_grammar_allows_text_or_calls(guidance, name):
    parser = get_tool_parser(name)
    grammar = parser.call_grammar(TOOLS, "auto")
    assert guidance(grammar, "The weather is fine, no tool needed.")
    assert guidance(grammar, as_text(name, [weather(), openai_call("get_time", {})]))
    assert not guidance(grammar, as_text(name, [weather(days="two")]))
    starts = {
        "qwen3_coder": "<tool_call>\nnot a function",
        "deepseek_v3": DS_OPEN + "oops",
        "phi4_mini": PHI_OPEN + "oops",
        "granite": '[{"name": "oops"}]',
        "gemma": FENCE + "\noops(",
    }
    assert not guidance(grammar, starts[name])
    none = parser.call_grammar(TOOLS, "none")
    assert guidance(none, "Just text.")
    assert not guidance(none, as_text(name, [weather()]))


def test_qwen3_coder_grammar_values_parse_back(guidance):
    qwen = get_tool_parser("qwen3_coder")
    schema = {
        "type": "object",
        "properties": {
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": ["string", "null"]},
            "text": {"type": "string"},
        },
        "required": ["unit"],
    }
    tools = [{"type": "function", "function": {"name": "set", "parameters": schema}}]
    grammar = qwen.call_grammar(tools, "required")
    for arguments in [
        {"unit": "celsius"},
        {"unit": "fahrenheit", "tags": ["a", "b"], "note": None, "text": "x </param y"},
        {"unit": "celsius", "note": "seen", "text": "two\nlines\n"},
    ]:
        text = qwen.render_calls([openai_call("set", arguments)])
        assert guidance(grammar, text), text
        assert calls_of(qwen.parse(text, tools)) == [("set", arguments)]
    head = "<tool_call>\n<function=set>\n<parameter=unit>\n"
    assert not guidance(grammar, head + "kelvin\n</parameter>\n</function>\n</tool_call>")
    # a raw value cannot hold a tag that would end it early in the parser
    sneaky = "\n</parameter>\n<parameter=text>\na <parameter=b\n</parameter>\n"
    assert not guidance(grammar, head + "celsius" + sneaky + "</function>\n</tool_call>")


@pytest.mark.parametrize("name", FORMATS)
def test_grammar_keeps_schema_definitions(guidance, name):
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
    good = parser.render_calls([openai_call("route", {"start": {"city": "Oslo"}})])
    assert guidance(grammar, good)
    assert calls_of(parser.parse(good, tools)) == [("route", {"start": {"city": "Oslo"}})]
    assert not guidance(
        grammar, parser.render_calls([openai_call("route", {"start": {"city": 1}})])
    )


# -- on the default model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter():
    from candle_agents import Engine
    from candle_agents.errors import ModelLoadError
    from candle_agents.openai import OpenAIAdapter

    try:
        engine = Engine.from_pretrained(kv_cache_memory=48 * 2**20, max_model_len=1024)
    except ModelLoadError as exc:
        pytest.skip(f"default model not installed: {exc}")
    yield OpenAIAdapter(engine)
    engine.shutdown()


@pytest.mark.parametrize("name", FORMATS)
def test_a_forced_call_in_each_format_on_the_default_model(adapter, name):
    # SmolLM2 has no tool support: the tools prompt teaches it the format, the grammar holds
    # it to one call, and the format's parser reads the call back.
    multiply = {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
    request = {
        "messages": [{"role": "user", "content": "What is 6 times 7?"}],
        "tools": [multiply],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "tool_parser": name,
        "temperature": 0,
        "max_tokens": 120,  # deepseek_v3's markers take ~60 tokens spelt out in SmolLM2's
    }
    choice = asyncio.run(adapter.chat_completion(request)).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [call.function.name for call in choice.message.tool_calls] == ["multiply"]
    arguments = json.loads(choice.message.tool_calls[0].function.arguments)
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
