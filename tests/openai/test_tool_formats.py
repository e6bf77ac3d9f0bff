"""qwen3_coder, deepseek_v3, phi4_mini, granite, gemma tool calls: parsing, streaming, rendering."""

from __future__ import annotations

import json
import random

import pytest

from candle_agents.openai.tool_parsers import (
    TOOL_PARSERS,
    ToolParser,
    detect_tool_parser,
    get_tool_parser,
    merge_steps,
)
from tests.openai.tool_cases import (
    DS_CALL,
    DS_CLOSE,
    DS_END,
    DS_OPEN,
    DS_SEP,
    FENCE,
    FORMATS,
    GRANITE,
    PHI_CLOSE,
    PHI_OPEN,
    TOOLS,
    calls_of,
    chunks_of,
    mutate,
    openai_call,
    random_chunks,
    run_stream,
    splittings,
    summary,
)

# qwen3_coder
QC_WEATHER = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
    "</tool_call>"
)
QC_TIME = "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"


def ds_v3(name: str, arguments: str) -> str:
    return f"{DS_CALL}function{DS_SEP}{name}\n```json\n{arguments}\n```{DS_END}"


def ds_v31(name: str, arguments: str) -> str:
    return f"{DS_CALL}{name}{DS_SEP}{arguments}{DS_END}"


# Text that every stream must turn into exactly what parse() returns, whatever the splits.
AGREE = {
    "qwen3_coder": [
        "Just text, no calls.",
        "",
        QC_WEATHER,
        "Let me check.\n" + QC_WEATHER + "\n" + QC_TIME,
        "<tool_call><function=f><parameter=a>1</parameter><parameter=b>\nline 1\nline 2\n"
        "</parameter></function></tool_call> done",
        # closing tags left out: a value ends at the next parameter or at </function>
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\nx\n</function>\n</tool_call>",
        "<tool_call>\n<function=f>\n</function>\n<function=g>\n<parameter=x>\n[1, 2]\n"
        "</parameter>\n</function>\n</tool_call>",
        '<tool_call>\n<function=s>\n<parameter=q>\n東京 🎉 "quoted" \\n\n</parameter>\n'
        "</function>\n</tool_call>",
        "a < b and <tool without a close",
        "<tool_call>\nnot a function\n</tool_call>",
        "<tool_call>\n<function=>\n</function>\n</tool_call>",
        "<tool_call>",
        "<tool_ca",
        "<tool_call>\n<func",
        "<tool_call>\n<function=f",
        "<tool_call>\n</tool_call> <tool_call>\n<function=ok>\n</function>\n</tool_call>",
        QC_WEATHER[: -len("</tool_call>")],  # generation stopped before </tool_call>
    ],
    "deepseek_v3": [
        "Plain answer.",
        "",
        DS_OPEN + ds_v3("get_weather", '{"city": "Paris"}') + DS_CLOSE,
        "Let me check."
        + DS_OPEN
        + ds_v3("get_weather", '{"city": "東京", "days": 2}')
        + "\n"
        + ds_v3("get_time", "{}")
        + DS_CLOSE,
        # V3.1: the name before the separator, bare JSON
        DS_OPEN + ds_v31("get_weather", '{"city":"Paris"}') + ds_v31("get_time", "{}") + DS_CLOSE,
        DS_OPEN + ds_v31("function", '{"x": 1}') + DS_CLOSE,  # a function named "function"
        DS_OPEN + ds_v3("get_time", "{}"),  # generation stopped before the block's end
        DS_OPEN + "oops" + DS_CLOSE,
        DS_OPEN + ds_v3("f", "[1]") + DS_CLOSE,
        DS_OPEN + DS_CALL + "two words" + DS_SEP + "{}" + DS_END + DS_CLOSE,
        DS_OPEN,
        DS_OPEN + DS_CALL,
        "<｜tool",
        "a <｜ b",
    ],
    "phi4_mini": [
        "Plain.",
        "",
        PHI_OPEN + '[{"name": "get_weather", "arguments": {"city": "Paris"}}]' + PHI_CLOSE,
        "Sure."
        + PHI_OPEN
        + '[{"name": "a", "arguments": {"x": "中文"}}, {"name": "b", "arguments": {}}]'
        + PHI_CLOSE
        + " done",
        PHI_OPEN + '{"name": "f", "parameters": {"a": 1}}' + PHI_CLOSE,
        PHI_OPEN + '[{"type": "function", "name": "f", "arguments": {}}]' + PHI_CLOSE,
        PHI_OPEN + '[{"name": "f", "arguments": {"a": 1}}]',  # ended without the closing token
        PHI_OPEN + "[]" + PHI_CLOSE,
        PHI_OPEN + " is a token",
        PHI_OPEN + '[{"name": 1}]' + PHI_CLOSE,
        PHI_OPEN,
        "<|tool_ca",
        "a <| b",
    ],
    "granite": [
        "Plain.",
        "",
        GRANITE + '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        GRANITE + ' [{"name": "a", "arguments": {"x": "é"}}, {"name": "b", "arguments": {}}]',
        '<tool_call>[{"name": "f", "arguments": {}}]',
        '[{"name": "f", "arguments": {"q": [1, 2]}}]',
        '[{"name": "Ada", "age": 36}]',
        "[1] is a citation",
        "[Click here](https://example.com)",
        GRANITE + "[]",
        GRANITE + "text",
        GRANITE,
        "<|tool",
        GRANITE + '[{"name": "f", "arguments": {}}] trailing',
        "Sure: " + GRANITE + '[{"name": "f", "arguments": {}}]',
    ],
    "gemma": [
        "Plain.",
        "",
        FENCE + '\nget_weather(city="Paris")\n```',
        "Let me check.\n" + FENCE + '\nget_weather(city="東京", days=3)\nget_time()\n```\nDone.',
        FENCE + "\n[f(a=1), g(b=[1, 2], c=None)]\n```",
        FENCE + '\nnote(text="a ``` b")\n```',  # a fence inside a string
        FENCE + "\nf()\n``` and " + FENCE + "\ng(x=true)\n```",
        FENCE + "\nprint('hi')\n```",
        FENCE + "\nx = 1\n```",
        "```python\nprint(1)\n```",
        FENCE + "s\nf()\n```",
        FENCE + "\nf(a=1)",
        FENCE,
        "```tool",
    ],
}

# Broken after the stream has announced a call: parse() says content; an incremental stream
# keeps the call it sent (see the tool_parsers.base docstring), a non-incremental one agrees
# with parse(). Calls of gemma are announced whole, granite's at the end: they have none.
LATE_BREAKS = {
    "qwen3_coder": [
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</funct",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=a>\n2\n"
        "</parameter>\n</function>\n</tool_call>",
        "<tool_call>\n<function=f>\njunk\n</function>\n</tool_call> after",
    ],
    "deepseek_v3": [
        DS_OPEN + DS_CALL + "function" + DS_SEP + 'get_weather\n```json\n{"city": "Par',
        DS_OPEN + DS_CALL + "function" + DS_SEP + 'f\n```json\n{"a": 1}\n``` junk' + DS_CLOSE,
        DS_OPEN + ds_v31("get_weather", '{"city": "Paris"}')[: -len(DS_END)],
    ],
    "phi4_mini": [
        PHI_OPEN + '[{"name": "f", "arguments": {"a": 1',
        PHI_OPEN + '[{"name": "f", "arguments": {"a": 1}} junk]' + PHI_CLOSE,
        PHI_OPEN + '[{"name": "f", "arguments": {"a": 1}}]<|/tool',
    ],
    "granite": [],
    "gemma": [],
}

# parse() returns each of these whole as content.
MALFORMED = {
    "qwen3_coder": [
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',  # hermes, not this format
        "Text then <tool_call>",
        "<tool_call>\n<function=get weather\n>\n</function>\n</tool_call>",
    ],
    "deepseek_v3": [
        DS_OPEN + "function" + DS_SEP + "f" + DS_CLOSE,
        "Text then " + DS_OPEN,
    ],
    "phi4_mini": [
        PHI_OPEN + "[{'name': 'f'}]" + PHI_CLOSE,
        "Text then " + PHI_OPEN,
    ],
    "granite": [
        GRANITE + '[{"name": "f", "arguments": {"a": NaN}}]',
        GRANITE + '[{"name": "f", "arguments": [1]}]',
        '[{"name": "f", "arguments": {}}',
    ],
    "gemma": [
        FENCE + "\nf(1)\n```",
        FENCE + "\nf(a=g())\n```",
        FENCE + "\n[]\n```",
    ],
}

# What parse() finds in AGREE's well-formed examples (content, calls).
EXPECTED = {
    "qwen3_coder": [
        (QC_WEATHER, None, [("get_weather", {"city": "Paris"})]),
        (
            AGREE["qwen3_coder"][4],
            "done",
            [("f", {"a": 1, "b": "line 1\nline 2"})],
        ),
        (AGREE["qwen3_coder"][5], None, [("f", {"a": 1, "b": "x"})]),
        (AGREE["qwen3_coder"][6], None, [("f", {}), ("g", {"x": [1, 2]})]),
        (AGREE["qwen3_coder"][7], None, [("s", {"q": '東京 🎉 "quoted" \\n'})]),
        (AGREE["qwen3_coder"][-2], "<tool_call>\n</tool_call>", [("ok", {})]),
        (AGREE["qwen3_coder"][-1], None, [("get_weather", {"city": "Paris"})]),
    ],
    "deepseek_v3": [
        (AGREE["deepseek_v3"][2], None, [("get_weather", {"city": "Paris"})]),
        (
            AGREE["deepseek_v3"][3],
            "Let me check.",
            [("get_weather", {"city": "東京", "days": 2}), ("get_time", {})],
        ),
        (AGREE["deepseek_v3"][4], None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
        (AGREE["deepseek_v3"][5], None, [("function", {"x": 1})]),
        (AGREE["deepseek_v3"][6], None, [("get_time", {})]),
    ],
    "phi4_mini": [
        (AGREE["phi4_mini"][2], None, [("get_weather", {"city": "Paris"})]),
        (AGREE["phi4_mini"][3], "Sure. done", [("a", {"x": "中文"}), ("b", {})]),
        (AGREE["phi4_mini"][4], None, [("f", {"a": 1})]),
        (AGREE["phi4_mini"][5], None, [("f", {})]),
        (AGREE["phi4_mini"][6], None, [("f", {"a": 1})]),
    ],
    "granite": [
        (AGREE["granite"][2], None, [("get_weather", {"city": "Paris"})]),
        (AGREE["granite"][3], None, [("a", {"x": "é"}), ("b", {})]),
        (AGREE["granite"][4], None, [("f", {})]),
        (AGREE["granite"][5], None, [("f", {"q": [1, 2]})]),
    ],
    "gemma": [
        (AGREE["gemma"][2], None, [("get_weather", {"city": "Paris"})]),
        (
            AGREE["gemma"][3],
            "Let me check.\n\nDone.",
            [("get_weather", {"city": "東京", "days": 3}), ("get_time", {})],
        ),
        (AGREE["gemma"][4], None, [("f", {"a": 1}), ("g", {"b": [1, 2], "c": None})]),
        (AGREE["gemma"][5], None, [("note", {"text": "a ``` b"})]),
        (AGREE["gemma"][6], "and", [("f", {}), ("g", {"x": True})]),
    ],
}


def every_split(text: str) -> list[list[str]]:
    """``text`` whole, a character at a time, cut in two at every offset, and more."""
    cuts = [[text[:i], text[i:]] for i in range(1, len(text))]
    return [[text], list(text), *cuts, *splittings(text)]


# -- registry and detection -------------------------------------------------------------------


def test_the_new_formats_are_registered_with_their_special_tokens():
    assert set(FORMATS) <= set(TOOL_PARSERS)
    for name in FORMATS:
        parser = get_tool_parser(name)
        assert isinstance(parser, ToolParser) and parser.name == name
    # The markers are special tokens in these models' tokenizers: the detokenizer keeps them.
    assert {n for n in FORMATS if get_tool_parser(n).needs_special_tokens} == {
        "deepseek_v3",
        "granite",
        "phi4_mini",
    }
    assert get_tool_parser("Qwen3-Coder").name == "qwen3_coder"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (  # Qwen3-Coder / Qwen3.5: how the template writes a call
            "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}"
            "{%- for args_name, args_value in tool_call.arguments|items %}"
            "{{- '<parameter=' + args_name + '>\\n' }}{{- args_value }}"
            "{{- '\\n</parameter>\\n' }}{%- endfor %}{{- '</function>\\n</tool_call>' }}",
            "qwen3_coder",
        ),
        (  # DeepSeek-R1 (and its distills)
            "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
            "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
            "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}",
            "deepseek_v3",
        ),
        (  # DeepSeek-V3.1
            "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'+ tool['function']['name'] + "
            "'<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}",
            "deepseek_v3",
        ),
        (  # Phi-4-mini-instruct: tools between <|tool|> and <|/tool|>
            "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in "
            "message and message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + "
            "message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
            "{% endif %}{% endfor %}",
            "phi4_mini",
        ),
        (  # Granite 3.0
            "{%- elif message['role'] == 'assistant_tool_call' %}"
            "{{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['content'] + "
            "'<|end_of_text|>\\n' }}",
            "granite",
        ),
        (  # Granite 3.1+
            '{%- set system_message = system_message + " You are a helpful AI assistant with '
            "access to the following tools. When a tool is required to answer the user's query, "
            'respond with <|tool_call|> followed by a JSON list of tools used." %}'
            "{{- '<|start_of_role|>available_tools<|end_of_role|>' }}",
            "granite",
        ),
        (  # Gemma 3: no tools in its template, so the prompted tool_code convention
            "{%- for message in loop_messages -%}{{ '<start_of_turn>' + role + '\\n' + "
            "(first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}"
            "{{ '<end_of_turn>\\n' }}{%- endfor -%}",
            "gemma",
        ),
        (
            "If you decide to invoke any of the function(s), it should be wrapped with "
            "```tool_code```.",
            "gemma",
        ),
        (  # Qwen2.5 / Qwen3: hermes, as before
            "{%- if tools %}<tools>{{ tools | tojson }}</tools> For each function call, return "
            "a json object within <tool_call></tool_call> XML tags{%- endif %}",
            "hermes",
        ),
    ],
)
def test_detect_the_new_formats_from_their_templates(template, expected):
    assert detect_tool_parser(template) == expected


# -- whole-text parsing -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_parse_finds_the_calls_and_the_text_around_them(name):
    parser = get_tool_parser(name)
    for text, content, calls in EXPECTED[name]:
        message = parser.parse(text)
        assert message.content == content, text
        assert calls_of(message) == calls, text
        for call in message.tool_calls:
            assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False)
    assert summary(parser.parse("No tools needed.")) == ("No tools needed.", [])


@pytest.mark.parametrize("name", FORMATS)
def test_malformed_output_is_content_never_an_exception(name):
    parser = get_tool_parser(name)
    for text in MALFORMED[name] + LATE_BREAKS[name]:
        message = parser.parse(text)
        assert message.tool_calls == [], text
        assert message.content == text.strip(), text


def test_qwen3_coder_values_take_the_types_of_the_schema():
    qwen = get_tool_parser("qwen3_coder")
    schema = {
        "s": {"type": "string"},
        "digits": {"type": "string"},
        "i": {"type": "integer"},
        "n": {"type": "number"},
        "b": {"type": "boolean"},
        "py_bool": {"type": "boolean"},
        "o": {"type": "object"},
        "a": {"type": "array"},
        "maybe": {"type": ["integer", "null"]},
        "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "color": {"enum": ["red", "green"]},
        "bad_int": {"type": "integer"},
        "whole": {"type": "integer"},
        "huge": {"type": "number"},
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": schema}}}]
    values = {
        "s": "  spaced  ",
        "digits": "1234",
        "i": "42",
        "n": "2.5",
        "b": "true",
        "py_bool": "False",  # Jinja's `| string` of a Python bool
        "o": '{"k": [1, null]}',
        "a": '["x", 2]',
        "maybe": "null",
        "either": "hello",
        "color": "red",
        "bad_int": "many",
        "whole": "7.0",
        "huge": "1e999",  # not a finite number: the text
        "extra": "[1, 2]",  # not in the schema: JSON where it parses
        "extra_text": "plain words",
    }
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in values.items())
    text = f"<tool_call>\n<function=f>\n{params}</function>\n</tool_call>"
    expected = {
        "s": "  spaced  ",
        "digits": "1234",
        "i": 42,
        "n": 2.5,
        "b": True,
        "py_bool": False,
        "o": {"k": [1, None]},
        "a": ["x", 2],
        "maybe": None,
        "either": "hello",
        "color": "red",
        "bad_int": "many",
        "whole": 7,
        "huge": "1e999",
        "extra": [1, 2],
        "extra_text": "plain words",
    }
    assert calls_of(qwen.parse(text, tools)) == [("f", expected)]
    # Without the tools, every value is JSON where it parses.
    untyped = calls_of(qwen.parse(text))[0][1]
    assert (untyped["digits"], untyped["s"], untyped["py_bool"]) == (1234, "  spaced  ", "False")
    # Streamed with the tools, split anywhere: the same arguments.
    for pieces in [chunks_of(text, 1), chunks_of(text, 7)]:
        stream = qwen.stream(tools)
        steps = [stream.feed(p) for p in pieces] + [stream.finish()]
        assert calls_of(merge_steps(steps)) == [("f", expected)]


def test_qwen3_coder_streams_one_parameter_at_a_time():
    stream = get_tool_parser("qwen3_coder").stream(TOOLS)
    first = stream.feed("Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPa")
    assert first.content == "Sure."
    assert [(d.index, d.name, d.arguments) for d in first.tool_calls] == [(0, "get_weather", "{")]
    second = stream.feed("ris\n</parameter>\n<parameter=days>\n3\n</param")
    assert [(d.index, d.arguments) for d in second.tool_calls] == [(0, '"city": "Paris"')]
    third = stream.feed("eter>\n</function>\n</tool_call>")
    assert [(d.index, d.arguments) for d in third.tool_calls] == [(0, ', "days": 3}')]
    assert stream.finish().tool_calls == []


def test_deepseek_streams_arguments_as_they_are_written():
    stream = get_tool_parser("deepseek_v3").stream()
    first = stream.feed(DS_OPEN + DS_CALL + "function" + DS_SEP + 'search\n```json\n{"q": "ca')
    assert [(d.index, d.name, d.arguments) for d in first.tool_calls] == [
        (0, "search", '{"q": "ca')
    ]
    second = stream.feed('ts"}\n```' + DS_END + "\n" + DS_CALL + "function")
    assert [(d.index, d.arguments) for d in second.tool_calls] == [(0, 'ts"}')]
    third = stream.feed(DS_SEP + "open\n```json\n{}\n```" + DS_END + DS_CLOSE)
    assert [(d.index, d.name, d.arguments) for d in third.tool_calls] == [(1, "open", "{}")]


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("name", FORMATS)
def test_stream_split_at_every_offset_adds_up_to_parse(name, incremental):
    parser = get_tool_parser(name)
    texts = AGREE[name] + MALFORMED[name]
    if not incremental:
        texts += LATE_BREAKS[name]
    for text in texts:
        expected = summary(parser.parse(text))
        for pieces in every_split(text):
            steps = run_stream(parser, pieces, incremental)
            assert summary(merge_steps(steps)) == expected, (text, pieces)
            # content deltas add up exactly: no marker fragment is ever sent as content
            assert "".join(s.content for s in steps) == (expected[0] or ""), (text, pieces)


@pytest.mark.parametrize("name", ["deepseek_v3", "phi4_mini", "qwen3_coder"])
def test_incremental_stream_keeps_announced_calls_when_the_markup_breaks(name):
    parser = get_tool_parser(name)
    markers = ("<tool_call>", "<function=", DS_OPEN, DS_CALL, PHI_OPEN)
    for text in LATE_BREAKS[name]:
        results = {
            json.dumps(summary(merge_steps(run_stream(parser, pieces))))
            for pieces in every_split(text)
        }
        assert len(results) == 1, text  # the same whatever the splits
        content, calls = json.loads(results.pop())
        assert len(calls) == 1 and calls[0][0] in ("f", "get_weather"), text
        assert not any(marker in (content or "") for marker in markers), text


@pytest.mark.parametrize("name", FORMATS)
def test_stream_delta_shapes(name):
    parser = get_tool_parser(name)
    for text in AGREE[name]:
        for pieces in splittings(text):
            seen: dict[int, str] = {}
            for step in run_stream(parser, pieces):
                for delta in step.tool_calls:
                    if delta.index not in seen:
                        assert delta.index == len(seen), "indexes go 0, 1, ..."
                        assert delta.id is not None and delta.id.startswith("call_")
                        assert delta.name and delta.arguments is not None
                        seen[delta.index] = delta.id
                    else:
                        assert delta.id is None and delta.name is None and delta.arguments
            assert len(set(seen.values())) == len(seen), "ids are unique"


@pytest.mark.parametrize("name", FORMATS)
def test_fuzzed_outputs_never_raise_and_streams_agree(name):
    parser = get_tool_parser(name)
    rng = random.Random(name)
    seeds = [t for t in AGREE[name] + LATE_BREAKS[name] if t]
    for _ in range(300):
        text = mutate(rng.choice(seeds), rng)
        expected = parser.parse(text, TOOLS)
        if not expected.tool_calls:  # nothing is lost
            assert expected.content == (text.strip() or None), text
        for call in expected.tool_calls:
            assert isinstance(json.loads(call.arguments), dict)
        pieces = random_chunks(text, rng) if len(text) > 1 else [text]
        stream = parser.stream(TOOLS, incremental=False)
        exact = merge_steps([stream.feed(p) for p in pieces] + [stream.finish()])
        assert summary(exact) == summary(expected), (text, pieces)
        incremental = merge_steps(run_stream(parser, pieces))
        alone = merge_steps(run_stream(parser, [text]))
        assert summary(incremental) == summary(alone), (text, pieces)


# -- rendering and prompts --------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_render_calls_round_trips_through_parse(name):
    parser = get_tool_parser(name)
    calls = [
        openai_call("get_weather", {"city": "São Paulo", "days": 3}),
        openai_call("get_time", {}),
        openai_call("note", {"text": 'say "hi"\n', "tags": ["a", "🎉"], "meta": {"x": None}}),
    ]
    for subset in (calls[:1], calls):
        text = parser.render_calls(subset)
        message = parser.parse(text)
        assert message.content is None, text
        assert calls_of(message) == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in subset
        ]
        for pieces in [chunks_of(text, 1), chunks_of(text, 5)]:
            assert summary(merge_steps(run_stream(parser, pieces))) == summary(message)


@pytest.mark.parametrize("name", FORMATS)
def test_tools_prompt_shows_placeholders_in_the_format(name):
    parser = get_tool_parser(name)
    multiply = {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
    prompt = parser.render_tools_prompt([multiply, *TOOLS])
    assert "multiply" in prompt and "get_weather" in prompt and "Multiply two integers." in prompt
    example = prompt.split("For example:\n", 1)[1].rsplit("\n", 1)[0]
    # No value a small model could copy: the arguments are placeholders named after them.
    assert "<a>" in example and "<b>" in example and not any(c.isdigit() for c in example)
    filled = example.replace("<a>", "6").replace("<b>", "7")
    assert calls_of(parser.parse(filled, [multiply])) == [("multiply", {"a": 6, "b": 7})]
