"""OpenAIAdapter on the default model: chat, streaming, tools, structured output, errors."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from candle_agents import Engine
from candle_agents.openai import ChatCompletionRequest, OpenAIAdapter, OpenAIError
from candle_agents.openai.chat import build_messages, offered_tools
from candle_agents.openai.tool_parsers import get_tool_parser
from tests.support.checks import assert_all_blocks_free

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def engine():
    eng = Engine.from_pretrained(kv_cache_memory=48 * 2**20, max_model_len=1024)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def adapter(engine):
    return OpenAIAdapter(engine, served_model_name=["smol", "smollm2-135m-instruct"])


def chat(adapter, **kw):
    kw.setdefault("messages", ASK)
    kw.setdefault("max_tokens", 24)
    return asyncio.run(adapter.chat_completion(kw))


def stream(adapter, **kw):
    kw.setdefault("messages", ASK)
    kw.setdefault("max_tokens", 24)

    async def run():
        return [c async for c in adapter.chat_completion_stream(kw)]

    return asyncio.run(run())


def test_chat_completion_reports_text_usage_and_model(adapter, engine):
    resp = chat(adapter, temperature=0)
    choice = resp.choices[0]
    assert resp.model == "smol" and resp.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    prompt = engine.apply_chat_template(ASK, tokenize=True)
    assert resp.usage.prompt_tokens == len(prompt)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert_all_blocks_free(engine)


def test_streamed_text_equals_the_whole_response_at_temperature_0(adapter):
    whole = chat(adapter, temperature=0, max_tokens=40)
    chunks = stream(adapter, temperature=0, max_tokens=40, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_n_choices_with_a_seed_are_reproducible_and_count_the_prompt_once(adapter):
    a = chat(adapter, n=3, seed=7, temperature=1.0, max_tokens=12, logprobs=True)
    b = chat(adapter, n=3, seed=7, temperature=1.0, max_tokens=12, logprobs=True)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    # Each choice has its own seed, so they differ from each other.
    assert len({c.message.content for c in a.choices}) > 1
    single = chat(adapter, max_tokens=1)
    assert a.usage.prompt_tokens == single.usage.prompt_tokens
    assert a.usage.completion_tokens == sum(
        len(c.logprobs.content) + (c.finish_reason == "stop") for c in a.choices
    )


def test_logprobs_match_the_tokens(adapter):
    resp = chat(adapter, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    lps = resp.choices[0].logprobs.content
    ended = resp.choices[0].finish_reason == "stop"  # the end token is counted, not listed
    assert len(lps) == resp.usage.completion_tokens - ended
    assert "".join(lp.token for lp in lps) == resp.choices[0].message.content
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob, abs=1e-4)


def _check_call(call, tools):
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.function.name in schema
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema[call.function.name])
    assert call.id.startswith("call_")
    return args


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tool_choice_required_gives_a_valid_call(adapter, seed):
    tools = [WEATHER, TIME]
    resp = chat(
        adapter, tools=tools, tool_choice="required", temperature=0.8, seed=seed, max_tokens=80
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        _check_call(call, tools)


def test_named_tool_choice_calls_that_tool(adapter):
    tools = [WEATHER, TIME]
    resp = chat(
        adapter,
        messages=[{"role": "user", "content": "Tell me a joke."}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=80,
    )
    calls = resp.choices[0].message.tool_calls
    assert calls and len(calls) == 1 and calls[0].function.name == "get_time"
    assert "timezone" in _check_call(calls[0], tools)


MULTIPLY = {
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


@pytest.mark.parametrize(
    ("question", "tool_choice", "arguments"),
    [
        ("What is 6 times 7?", {"type": "function", "function": {"name": "multiply"}}, (6, 7)),
        ("What is 12 times 3?", "required", (12, 3)),
    ],
)
def test_forced_calls_take_their_arguments_from_the_request(
    adapter, question, tool_choice, arguments
):
    # The tools prompt's example call shows placeholders ({"a": <a>, "b": <b>}): with concrete
    # example values there, SmolLM2 copied them (multiply(1, 1)) instead of reading the question.
    resp = chat(
        adapter,
        messages=[{"role": "user", "content": question}],
        tools=[MULTIPLY],
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=40,
    )
    calls = resp.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["multiply"]
    assert json.loads(calls[0].function.arguments) == dict(zip("ab", arguments))


def test_tool_choice_none_keeps_the_prompt_and_answers_in_text(adapter, engine):
    req = ChatCompletionRequest(messages=ASK, tools=[WEATHER], tool_choice="none")
    parser = get_tool_parser("hermes")
    # The tools stay in the prompt, so "none" and "auto" turns share their prefix...
    auto = ChatCompletionRequest(messages=ASK, tools=[WEATHER], tool_choice="auto")
    rendered = build_messages(req, parser, False, offered_tools(req))
    assert rendered == build_messages(auto, parser, False, offered_tools(auto))
    # ...and decoding keeps the reply text, even when the model would rather call.
    for seed in range(3):
        resp = chat(adapter, tools=[WEATHER], tool_choice="none", temperature=1.0, seed=seed)
        message = resp.choices[0].message
        assert message.tool_calls is None and "<tool_call>" not in message.content
        assert resp.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_auto_gives_text_or_a_well_formed_call(adapter):
    for seed in range(3):
        resp = chat(
            adapter, tools=[WEATHER], tool_choice="auto", temperature=1.0, seed=seed, max_tokens=80
        )
        msg = resp.choices[0].message
        if msg.tool_calls:
            for call in msg.tool_calls:
                _check_call(call, [WEATHER])
            assert resp.choices[0].finish_reason == "tool_calls"
        else:
            assert "<tool_call>" not in (msg.content or "")


def test_streamed_tool_calls_assemble_into_the_whole_response(adapter):
    kw = dict(tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=80)
    whole = chat(adapter, **kw).choices[0].message.tool_calls
    chunks = stream(adapter, **kw)
    calls: dict[int, dict] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                assert entry["id"] is None, "id sent twice"
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] = d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
        if c.choices and c.choices[0].delta.content:
            assert "<tool_call>" not in c.choices[0].delta.content
    assert [calls[i]["name"] for i in sorted(calls)] == [w.function.name for w in whole]
    assert [json.loads(calls[i]["arguments"]) for i in sorted(calls)] == [
        json.loads(w.function.arguments) for w in whole
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema_response_format_validates(adapter):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "hobbies"],
        "additionalProperties": False,
    }
    for seed in range(2):
        resp = chat(
            adapter,
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
            temperature=0.7,
            seed=seed,
            max_tokens=120,
        )
        assert resp.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_json_object_response_format(adapter):
    resp = chat(
        adapter,
        messages=[{"role": "user", "content": "Give me a JSON object with a cat's name and age."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_a_conversation_with_tool_results_renders_them(adapter, engine):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    req = ChatCompletionRequest(messages=history, tools=[WEATHER])
    rendered = build_messages(req, get_tool_parser("hermes"), False, offered_tools(req))
    assert "get_weather" in rendered[0]["content"]  # described in the system prompt
    assert rendered[-1]["content"] == "<tool_response>\n18 degrees and sunny\n</tool_response>"
    assert rendered[-1]["role"] == "user"
    resp = chat(adapter, messages=history, tools=[WEATHER], temperature=0)
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert_all_blocks_free(engine)


@pytest.mark.parametrize(
    ("kw", "status", "param"),
    [
        ({"temperature": 5}, 400, "temperature"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content[0].type",
        ),
        ({"model": "gpt-5"}, 404, "model"),
        ({"tool_choice": "required"}, 400, None),
        ({"tools": [WEATHER], "tool_choice": {"function": {"name": "nope"}}}, 400, None),
        ({"top_logprobs": 3}, 400, None),
    ],
)
def test_bad_requests_raise_openai_errors_naming_the_field(adapter, engine, kw, status, param):
    with pytest.raises(OpenAIError) as info:
        chat(adapter, **kw)
    err = info.value
    assert err.status_code == status
    if param is not None:
        assert err.param is not None and err.param.startswith(param)
    body = err.to_dict()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert_all_blocks_free(engine)


def test_context_overflow_names_the_limit_and_the_count(adapter, engine):
    long = "word " * 1500
    with pytest.raises(OpenAIError) as info:
        chat(adapter, messages=[{"role": "user", "content": long}])
    err = info.value
    assert err.status_code == 400 and err.code == "context_length_exceeded"
    assert "1024" in err.message
    count = len(engine.apply_chat_template([{"role": "user", "content": long}], tokenize=True))
    assert str(count) in err.message


def test_closing_a_stream_early_frees_its_blocks(adapter, engine):
    async def run():
        it = adapter.chat_completion_stream({"messages": ASK, "max_tokens": 200, "n": 2})
        got = 0
        async for _ in it:
            got += 1
            if got == 4:
                break
        await it.aclose()

    asyncio.run(run())
    assert_all_blocks_free(engine)


def test_text_completions_with_echo_lists_and_token_prompts(adapter, engine):
    resp = asyncio.run(
        adapter.completion({"prompt": ["Once upon a time", "The cache"], "max_tokens": 5, "n": 2})
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    ids = engine.tokenize("Hello")
    echo = asyncio.run(
        adapter.completion({"prompt": ids, "max_tokens": 4, "echo": True, "temperature": 0})
    )
    assert echo.choices[0].text.startswith("Hello")
    assert echo.usage.prompt_tokens == len(ids)

    async def streamed():
        return [
            c
            async for c in adapter.completion_stream(
                {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
            )
        ]

    plain = asyncio.run(adapter.completion({"prompt": "Hello", "max_tokens": 4, "temperature": 0}))
    chunks = asyncio.run(streamed())
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_models_lists_the_served_names(adapter, engine):
    models = adapter.models()
    assert [m.id for m in models.data] == ["smol", "smollm2-135m-instruct"]
    assert models.data[0].max_model_len == engine.max_model_len


NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    '{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": '
    '"{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_tool_support_gets_tools_and_structured_calls(tiny_model_dir, tmp_path):
    import shutil

    path = tmp_path / "native"
    shutil.copytree(tiny_model_dir("qwen2"), path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = NATIVE_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with Engine.from_pretrained(str(path), kv_cache_memory=8 * 2**20) as eng:
        adapter = OpenAIAdapter(eng)
        assert adapter.native_tools
        history = [
            *ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        req = ChatCompletionRequest(messages=history, tools=[WEATHER])
        from candle_agents.openai.chat import render_prompt

        messages = build_messages(req, adapter.tool_parser, True, offered_tools(req))
        ids = render_prompt(eng, messages, offered_tools(req), None)
        text = eng.detokenize(ids, skip_special_tokens=False)
        assert '"name": "get_weather"' in text and "Tools: [" in text
        # Arguments reach the template as an object, not as a JSON string in a string.
        assert '"arguments": {"city": "Paris"}' in text
        assert "<|im_start|>tool\nsunny" in text
        # Even random weights produce a valid call when the call is required
        # (a bounded string, so that babble cannot run past max_tokens).
        short = json.loads(json.dumps(WEATHER))
        short["function"]["parameters"]["properties"]["city"]["maxLength"] = 6
        resp = asyncio.run(
            adapter.chat_completion(
                {
                    "messages": history,
                    "tools": [short],
                    "tool_choice": "required",
                    "temperature": 0,
                    "max_tokens": 80,
                }
            )
        )
        call = resp.choices[0].message.tool_calls[0]
        _check_call(call, [short])
