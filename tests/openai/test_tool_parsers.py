"""hermes, llama3_json, mistral and pythonic tool calls: parsing, streaming, rendering, prompts."""

from __future__ import annotations

import json
import random
import re

import pytest

from candle_agents.errors import ConfigError
from candle_agents.openai.tool_parsers import (
    TOOL_PARSERS,
    StreamStep,
    ToolCallStream,
    detect_tool_parser,
    get_tool_parser,
    make_call_id,
    merge_steps,
)
from tests.openai.tool_cases import (
    FUZZ_ROUNDS,
    PARSER_NAMES,
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

# -- corpora: what models write, well-formed and not ------------------------------------------

# Text that every stream must turn into exactly what parse() returns, whatever the splits.
AGREE = {
    "hermes": [
        "Just text, no calls.",
        "",
        "   \n  ",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "東京", "unit": "c"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        '<tool_call>{"name":"f","parameters":{"a":[1,2.50,-3e2],"b":{"c":null,"d":true}}}'
        "</tool_call> done",
        '<tool_call>\n{"arguments": {"q": "🎉 \\"q\\" \\u00e9\\ud83d\\ude00"}, "name": "s", '
        '"id": 7}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>',
        "a < b and <tool without a close",
        'text <tool_call>\n{"name": "f"}\n</tool_call> more text',
        # Broken before any call is announced: content, streamed or not.
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n{"name": 5, "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',
        '<tool_call>{"name": "f", "arguments": "not an object"}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "argu',
        '<tool_call>\n{"nam',
        "<tool_call>",
        "<tool_ca",
        '<tool_call>{}</tool_call> <tool_call>{"name": "ok", "arguments": {}}</tool_call>',
        '<tool_call>{"name": <tool_call>{"name": "g"}</tool_call> x',
    ],
    "mistral": [
        "Plain answer.",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        'Sure [TOOL_CALLS] [{"name": "a", "arguments": {"x": "中文"}}, {"name": "b", '
        '"arguments": {}}]',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}',
        '[TOOL_CALLS]f[CALL_ID]a1b2c3d4e[ARGS]{"n": 1}',
        "See [1] and [TOOL ideas]",
        '[TOOL_CALLS][{"name": "f", "arguments": "{\\"k\\": [true]}", "id": "abc123xyz"}]',
        "[TOOL_CALLS]",
        "[TOOL_CALLS][]",
        "[TOOL_CALLS] is a token",
        '[TOOL_CALLS][{"name": 1}]',
        "[TOOL_CALLS]f[ARG]{}",
        '[TOOL_CALLS]f[ARGS]"x"',
        "[TOOL_CA",
        '[TOOL_CALLS][{"name": "f", "argu',
        "[TOOL_CALLS]f[TOOL_CALLS]g[ARGS]{}",
    ],
    "llama3_json": [
        "Plain.",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '<|python_tag|>{"name": "f", "parameters": {"a": "é"}}; {"name": "g", "parameters": {}}',
        '  {"name": "f", "arguments": {"x": [1, 2]}}  ',
        '{"name": "f", "parameters": "{\\"a\\": 2}"}',
        '{"name": "Ada", "age": 36}',
        'The JSON is {"name": "f", "parameters": {}}',
        "{not json}",
        '{"name": "f", "parameters": {}} trailing',
        '{"name": "f", "parameters": {"a": 1}',
        '{"name": "f", "parameters": {}};',
        "<|python_tag|>",
    ],
    "pythonic": [
        "Plain.",
        '[get_weather(city="Paris")]',
        "[f(a=1, b='x'), g()]",
        '[f(a=[1, 2], b={"k": None}, c=True, d=-2.5)]',
        '<|python_start|>[f(x="日本 🌸")]<|python_end|>',
        '[f(flag=true, none=null, **{"my-key": 1})]',
        "[Click here](https://example.com)",
        "[1, 2, 3]",
        "[f(a=g())]",
        "[f(1)]",
        "[f(a=1)] trailing",
        "[f(a=1",
        "[]",
        "[f(a=x)]",
        "[f(a=1e999)]",
    ],
}

# Broken after the stream has announced a call: parse() says content; an incremental stream
# keeps the call it sent (see the tool_parsers.base docstring), a non-incremental one agrees
# with parse().
LATE_BREAKS = {
    "hermes": [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # unclosed tag
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # truncated
        '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {}, "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {}} junk\n</tool_call>',
        'before <tool_call>{"arguments": {"a": 1}, "name": "f"',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}}',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1,}}\n</tool_call> after',
    ],
    "mistral": [
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}',  # unclosed
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"ci',  # truncated
        '[TOOL_CALLS]f[ARGS]{"a": ',
        '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}} {"name": "g"}]',
    ],
    "llama3_json": [],
    "pythonic": [],
}

# -- ids and registry -------------------------------------------------------------------------


def test_call_ids_are_openai_style_and_unique():
    ids = {make_call_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


def test_get_tool_parser_by_name_and_spelling():
    for name in PARSER_NAMES:
        parser = get_tool_parser(name)
        assert parser.name == name
        assert isinstance(parser, TOOL_PARSERS[name])
    assert get_tool_parser("Llama3-JSON").name == "llama3_json"
    assert get_tool_parser("mistral").needs_special_tokens
    assert not get_tool_parser("hermes").needs_special_tokens


def test_unknown_tool_parser_is_a_config_error_listing_the_names():
    with pytest.raises(ConfigError) as info:
        get_tool_parser("qwen_xml")
    assert info.value.field == "tool_parser"
    for name in PARSER_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, "hermes"),
        ("", "hermes"),
        (  # SmolLM2: plain ChatML, no tools
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
            "hermes",
        ),
        (
            "{%- if tools %}<tools>{{ tools | tojson }}</tools> For each function call, return "
            "a json object within <tool_call></tool_call> XML tags{%- endif %}",
            "hermes",
        ),
        (
            "{%- if message.tool_calls %}[TOOL_CALLS][{%- for tc in message.tool_calls %}"
            "{{ tc.function | tojson }}{%- endfor %}]{%- endif %}",
            "mistral",
        ),
        (
            "{%- if builtin_tools %}<|python_tag|>{{ tool_call.name }}.call({%- endif %}",
            "llama3_json",
        ),
        (
            "<|start_header_id|>ipython<|end_header_id|> Respond in the format "
            '{"name": function name, "parameters": dictionary of argument name and its value}',
            "llama3_json",
        ),
        (
            "<|start_header_id|>ipython<|end_header_id|> If you decide to invoke any of the "
            "function(s), you MUST put it in the format of [func_name1(params_name1="
            "params_value1, params_name2=params_value2...), func_name2(params)]",
            "pythonic",
        ),
    ],
)
def test_detect_tool_parser(template, expected):
    assert detect_tool_parser(template) == expected


# -- whole-text parsing -----------------------------------------------------------------------


def test_hermes_zero_one_two_calls_and_text_before():
    hermes = get_tool_parser("hermes")
    assert summary(hermes.parse("  Hello there!\n")) == ("Hello there!", [])
    one = hermes.parse(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert one.content is None
    assert calls_of(one) == [("get_weather", {"city": "Paris"})]
    two = hermes.parse(
        "I'll look both up.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "parameters": {"tz": "CET"}}\n</tool_call>\n'
    )
    assert two.content == "I'll look both up."
    assert calls_of(two) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert two.tool_calls[0].id != two.tool_calls[1].id


def test_hermes_argument_forms_are_normalised():
    hermes = get_tool_parser("hermes")
    cases = {
        # arguments given as a JSON string holding an object
        '{"name": "f", "arguments": "{\\"a\\": 1}"}': '{"a": 1}',
        # no arguments at all
        '{"name": "f"}': "{}",
        # name after arguments, an extra key, compact JSON
        '{"arguments":{"a":[1,2.50,1E2,-0],"b":{"c":null}},"id":"x","name":"f"}': (
            '{"a": [1, 2.5, 100.0, 0], "b": {"c": null}}'
        ),
        # raw newline in a string (small models write code this way)
        '{"name": "f", "arguments": {"code": "a\nb"}}': '{"code": "a\\nb"}',
    }
    for body, arguments in cases.items():
        message = hermes.parse(f"<tool_call>\n{body}\n</tool_call>")
        assert [(c.name, c.arguments) for c in message.tool_calls] == [("f", arguments)], body
        assert arguments == json.dumps(json.loads(arguments), ensure_ascii=False)


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_unicode_arguments_stay_unescaped(name):
    parser = get_tool_parser(name)
    arguments = {"city": "東京", "mood": "🎉", "note": "naïve — ok"}
    text = parser.render_calls([openai_call("f", arguments)])
    message = parser.parse(text)
    assert message.tool_calls[0].arguments == json.dumps(arguments, ensure_ascii=False)
    assert "\\u" not in message.tool_calls[0].arguments


def test_escaped_unicode_is_decoded():
    hermes = get_tool_parser("hermes")
    message = hermes.parse(
        '<tool_call>{"name": "f", "arguments": {"s": "\\u6771\\u4eac \\ud83c\\udf89"}}</tool_call>'
    )
    assert message.tool_calls[0].arguments == '{"s": "東京 🎉"}'


def test_mistral_forms():
    mistral = get_tool_parser("mistral")
    listed = mistral.parse(
        'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]'
    )
    assert listed.content == "Checking."
    assert calls_of(listed) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    named = mistral.parse(
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}'
    )
    assert named.content is None
    assert calls_of(named) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert summary(mistral.parse("No tools needed.")) == ("No tools needed.", [])


def test_llama3_json_only_when_the_whole_message_is_calls():
    llama = get_tool_parser("llama3_json")
    assert calls_of(llama.parse('{"name": "f", "parameters": {"a": 1}}')) == [("f", {"a": 1})]
    two = llama.parse(
        '<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", "parameters": {}}'
    )
    assert calls_of(two) == [("f", {}), ("g", {})]
    for text in [
        'Sure: {"name": "f", "parameters": {}}',
        '{"name": "f", "parameters": {}} and more',
        '{"name": "Ada", "age": 36}',  # a JSON answer, not a call
        "Hello",
    ]:
        assert summary(llama.parse(text)) == (text, []), text


def test_pythonic_literals_only():
    pythonic = get_tool_parser("pythonic")
    message = pythonic.parse('[get_weather(city="Paris", days=3), get_time()]')
    assert message.content is None
    assert calls_of(message) == [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {})]
    rich = pythonic.parse("[f(a=[1, -2.5], b={'k': None}, c=True, d=false)]")
    assert calls_of(rich) == [("f", {"a": [1, -2.5], "b": {"k": None}, "c": True, "d": False})]
    for text in ["[f(a=x)]", "[f(a=g())]", "[f(1)]", "[f(a=(1, 2))]", "[f(a={1, 2})]", "[]"]:
        assert summary(pythonic.parse(text)) == (text, []), text
    assert summary(pythonic.parse("No calls today.")) == ("No calls today.", [])


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_unknown_tool_names_are_still_calls(name):
    parser = get_tool_parser(name)
    tools = [{"type": "function", "function": {"name": "known", "parameters": {}}}]
    text = parser.render_calls([openai_call("unknown_tool", {"a": 1})])
    assert calls_of(parser.parse(text, tools)) == [("unknown_tool", {"a": 1})]


MALFORMED = {
    "hermes": [
        "<tool_call>\n{'name': 'get_weather'}\n</tool_call>",
        '<tool_call>\n["get_weather", {}]\n</tool_call>',
        '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
        "Text then <tool_call>",
    ],
    "mistral": [
        '[TOOL_CALLS]{"name": "get_weather", "arguments": {}}',
        "[TOOL_CALLS][{'name': 'f'}]",
        "[TOOL_CALLS]get weather[ARGS]{}",
    ],
    "llama3_json": [
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
        '{"name": "get_weather", "parameters": {"city": Paris}}',
        '{"name": "f", "parameters": {"x": NaN}}',
        '{"name": "f", "parameters": [1]}',
        '{"name": "f", "parameters": {}, "arguments": {}}',
        '{"name": "f"}',
    ],
    "pythonic": [
        '[get_weather(city="Paris"',
        '[get_weather(city="Paris")',
        '[get_weather(city="Paris", city="Rome")]',
        "[get_weather(city=open('/etc/passwd'))]",
        '[get_weather(*["Paris"])]',
        "[f(a=b'x')]",
        "[f(a=1j)]",
        "[lambda: 1]",
    ],
}


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_malformed_output_is_content_never_an_exception(name):
    parser = get_tool_parser(name)
    for text in MALFORMED[name] + LATE_BREAKS[name]:
        message = parser.parse(text)
        assert message.tool_calls == [], text
        assert message.content == text.strip(), text


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("name", PARSER_NAMES)
def test_stream_adds_up_to_parse_for_every_split(name, incremental):
    parser = get_tool_parser(name)
    texts = AGREE[name] + MALFORMED[name]
    if not incremental:
        texts += LATE_BREAKS[name]
    for text in texts:
        expected = summary(parser.parse(text))
        for pieces in splittings(text):
            steps = run_stream(parser, pieces, incremental)
            assert summary(merge_steps(steps)) == expected, (text, pieces)
            # content deltas add up exactly, not just modulo whitespace
            assert "".join(s.content for s in steps) == (expected[0] or ""), (text, pieces)


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_fuzzed_outputs_never_raise_and_streams_agree(name):
    parser = get_tool_parser(name)
    rng = random.Random(name)
    seeds = [t for t in AGREE[name] + LATE_BREAKS[name] if t]
    for _ in range(FUZZ_ROUNDS):
        text = mutate(rng.choice(seeds), rng)
        expected = parser.parse(text)
        if not expected.tool_calls:  # nothing is lost
            assert expected.content == (text.strip() or None), text
        for call in expected.tool_calls:
            assert json.loads(call.arguments) is not None
        pieces = random_chunks(text, rng) if len(text) > 1 else [text]
        exact = merge_steps(run_stream(parser, pieces, incremental=False))
        assert summary(exact) == summary(expected), (text, pieces)
        incremental = merge_steps(run_stream(parser, pieces))
        alone = merge_steps(run_stream(parser, [text]))
        assert summary(incremental) == summary(alone), (text, pieces)


@pytest.mark.parametrize("name", ["hermes", "mistral"])
def test_incremental_stream_keeps_announced_calls_when_the_markup_breaks(name):
    parser = get_tool_parser(name)
    for text in LATE_BREAKS[name]:
        results = {
            json.dumps(summary(merge_steps(run_stream(parser, pieces))))
            for pieces in [[text], *splittings(text)]
        }
        assert len(results) == 1, text  # the same whatever the splits
        content, calls = json.loads(results.pop())
        assert len(calls) == 1 and calls[0][0] in ("f", "get_weather"), text
        assert "<tool_call>" not in (content or "") and "[TOOL_CALLS]" not in (content or "")


def test_truncated_call_in_incremental_stream_keeps_partial_arguments():
    hermes = get_tool_parser("hermes")
    text = '<tool_call>\n{"name": "write", "arguments": {"path": "a.txt", "body": "hel'
    streamed = merge_steps(run_stream(hermes, chunks_of(text, 3)))
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        ("write", '{"path": "a.txt", "body": "hel')
    ]
    assert streamed.content is None
    assert summary(merge_steps(run_stream(hermes, chunks_of(text, 3), False))) == (text, [])


@pytest.mark.parametrize("name", PARSER_NAMES)
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
                        assert delta.name
                        assert delta.arguments is not None
                        seen[delta.index] = delta.id
                    else:
                        assert delta.id is None and delta.name is None
                        assert delta.arguments
            assert len(set(seen.values())) == len(seen), "ids are unique"


def test_hermes_streams_arguments_as_they_are_written():
    hermes = get_tool_parser("hermes")
    text = (
        'Sure.\n<tool_call>\n{"name": "write", "arguments": {"path": "n.md", "text": "'
        + "word " * 30
        + '"}}\n</tool_call>'
    )
    stream = hermes.stream()
    fragments_before_close = []
    fed = ""
    for piece in chunks_of(text, 4):
        fed += piece
        step = stream.feed(piece)
        if "</tool_call>" not in fed:
            fragments_before_close += [d.arguments for d in step.tool_calls if d.arguments]
        assert "<" not in step.content
    stream.finish()
    assert len(fragments_before_close) > 20
    # arguments end with the inner object: the outer object's brace is never sent
    assert "".join(fragments_before_close).endswith('"}')


def test_mistral_streams_arguments_as_they_are_written():
    mistral = get_tool_parser("mistral")
    stream = mistral.stream()
    first = stream.feed('[TOOL_CALLS][{"name": "search", "arguments": {"q": "cat')
    assert [(d.index, d.name, d.arguments) for d in first.tool_calls] == [
        (0, "search", '{"q": "cat')
    ]
    second = stream.feed('s"}}, {"name": "open", "arguments": {"id": 4')
    assert [(d.index, d.name, d.arguments) for d in second.tool_calls] == [
        (0, None, 's"}'),
        (1, "open", '{"id": '),
    ]
    third = stream.feed("2}}]")
    assert [(d.index, d.arguments) for d in third.tool_calls] == [(1, "42}")]
    assert stream.finish() == StreamStep()


def test_markup_prefix_is_held_back_until_it_is_not_markup():
    hermes = get_tool_parser("hermes").stream()
    step = hermes.feed("Hello <tool")
    assert step.content == "Hello" and not step.tool_calls
    step = hermes.feed("box> is a tag")
    assert step.content == " <toolbox> is a tag"
    assert hermes.finish() == StreamStep()

    mistral = get_tool_parser("mistral").stream()
    assert mistral.feed("See [TOOL").content == "See"
    assert mistral.feed("S] list").content == " [TOOLS] list"

    pythonic = get_tool_parser("pythonic").stream()
    assert pythonic.feed("[get_wea").content == ""
    assert pythonic.feed("ther(city=").content == ""
    assert pythonic.finish().content == "[get_weather(city="  # truncated: content
    link = get_tool_parser("pythonic").stream()
    assert link.feed("[Click").content == ""
    assert link.feed(" here](x) now").content == "[Click here](x) now"

    llama = get_tool_parser("llama3_json").stream()
    assert llama.feed("{").content == ""
    assert llama.feed("curly}").content == "{curly}"


def test_finish_flushes_held_text_and_partial_calls():
    hermes = get_tool_parser("hermes").stream()
    assert hermes.feed("Done. <tool_").content == "Done."
    assert hermes.finish().content == " <tool_"
    partial = get_tool_parser("hermes").stream()
    partial.feed('<tool_call>\n{"name": "f", ')
    assert partial.finish().content == '<tool_call>\n{"name": "f",'
    stream = get_tool_parser("llama3_json").stream()
    assert stream.feed('{"name": "f", "parameters": {}}').tool_calls == []
    step = stream.finish()
    assert [(d.index, d.name, d.arguments) for d in step.tool_calls] == [(0, "f", "{}")]


def test_feed_after_finish_is_an_error():
    stream: ToolCallStream = get_tool_parser("hermes").stream()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed("x")


# -- rendering and prompts --------------------------------------------------------------------


@pytest.mark.parametrize("name", PARSER_NAMES)
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
        assert summary(merge_steps(run_stream(parser, chunks_of(text, 2)))) == summary(message)


def test_pythonic_renders_keys_that_are_not_identifiers():
    pythonic = get_tool_parser("pythonic")
    text = pythonic.render_calls([openai_call("f", {"my-key": 1, "class": True, "ok": None})])
    assert calls_of(pythonic.parse(text)) == [("f", {"ok": None, "my-key": 1, "class": True})]


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_render_tools_prompt_names_tools_and_format(name):
    parser = get_tool_parser(name)
    prompt = parser.render_tools_prompt(TOOLS)
    assert "get_weather" in prompt and "get_time" in prompt
    assert "Current weather for a city." in prompt
    marker = {
        "hermes": "<tool_call>",
        "mistral": "[TOOL_CALLS]",
        "llama3_json": '"parameters"',
        "pythonic": "[func_name1(",
    }[name]
    assert marker in prompt
    # the example call shows a placeholder, not a value a small model would copy; with a
    # value in its place it is a call this parser reads
    example = prompt.split("For example:\n", 1)[1].rsplit("\n", 1)[0]
    assert "<city>" in example and "..." not in example
    filled = example.replace("<city>", '"Paris"')
    assert calls_of(parser.parse(filled)) == [("get_weather", {"city": "Paris"})]
