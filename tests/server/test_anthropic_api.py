"""Anthropic's Messages API: the official ``anthropic`` client and LangChain's ChatAnthropic
against a real server on loopback, and :class:`AnthropicAdapter` in-process.

The server shares the session's engine (the default 135M model). Replies are greedy
and short; forced tool choices make the model call a tool deterministically.
"""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import pytest
from langchain_anthropic import ChatAnthropic

from candle_agents.anthropic import AnthropicAdapter, AnthropicError, MessagesRequest
from candle_agents.anthropic.stream import message_events
from candle_agents.anthropic.translate import chat_request, message
from candle_agents.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    UsageInfo,
)
from candle_agents.server import create_app

HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Current time in a timezone.",
    "input_schema": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
}
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]
# Newer clients take no sampling keywords (newer Claude models refuse them): they go in
# the body, which this server reads.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server(engine, live_server, api_key):
    return live_server(create_app(engine, api_key=api_key))


@pytest.fixture(scope="module")
def client(server, api_key) -> anthropic.Anthropic:
    # max_retries=0: the client would otherwise retry 5xx (and 529) answers and hide them.
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0)


def create(client, engine, **kw):
    extra = {**GREEDY, **kw.pop("extra_body", {})}
    kw = {"model": engine.model_name, "max_tokens": 8, "messages": HI, **kw}
    return client.messages.create(**kw, extra_body=extra)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an SSE body; the name must equal the data's type."""
    out, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == name
            out.append((name, data))
    return out


# -- messages -------------------------------------------------------------------------


def test_create_message(client, engine, idle):
    msg = create(client, engine, system="You are terse.", metadata={"user_id": "u-1"})
    assert msg.id.startswith("msg_")
    assert (msg.type, msg.role, msg.model) == ("message", "assistant", engine.model_name)
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.stop_sequence is None
    assert 0 < msg.usage.output_tokens <= 8
    assert msg.usage.input_tokens > 0
    assert msg.usage.cache_read_input_tokens is not None


def test_stream_matches_the_whole_message(client, server, engine, api_key, idle):
    body = {"model": engine.model_name, "max_tokens": 10, "messages": HI}
    whole = client.messages.create(**body, extra_body=GREEDY)
    with client.messages.stream(**body, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    # The events themselves, in order.
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST",
        f"{server.url}/v1/messages",
        json={**body, **GREEDY, "stream": True},
        headers=headers,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == whole.usage.input_tokens + (
        whole.usage.cache_read_input_tokens or 0
    )
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == text
    end = events[-2][1]
    assert end["delta"]["stop_reason"] == whole.stop_reason
    assert end["usage"]["output_tokens"] == whole.usage.output_tokens


def test_system_blocks_and_count_tokens(client, engine, idle):
    sys_text = "You are terse."
    plain = client.messages.count_tokens(model=engine.model_name, messages=HI, system=sys_text)
    blocks = client.messages.count_tokens(
        model=engine.model_name,
        messages=HI,
        system=[{"type": "text", "text": sys_text, "cache_control": {"type": "ephemeral"}}],
    )
    assert plain.input_tokens == blocks.input_tokens > 0
    # The beta endpoints are the same ones with ?beta=true and an anthropic-beta header.
    beta = client.beta.messages.count_tokens(model=engine.model_name, messages=HI, system=sys_text)
    assert beta.input_tokens == plain.input_tokens
    # Exactly the prompt a message is given (fresh tokens plus prefix-cache reads).
    msg = create(client, engine, system=sys_text, max_tokens=2)
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == plain.input_tokens
    # Tools are part of the prompt.
    with_tools = client.messages.count_tokens(
        model=engine.model_name, messages=HI, system=sys_text, tools=[WEATHER]
    )
    assert with_tools.input_tokens > plain.input_tokens
    assert with_tools.input_tokens == engine_prompt_length(client, engine, sys_text)


def engine_prompt_length(client, engine, system: str) -> int:
    msg = create(client, engine, system=system, tools=[WEATHER], max_tokens=1)
    return msg.usage.input_tokens + msg.usage.cache_read_input_tokens


def test_stop_sequences(client, engine, idle):
    free = create(client, engine, max_tokens=12)
    words = free.content[0].text.split()
    assert len(words) >= 3, free.content[0].text
    stop = " " + words[2]
    cut = free.content[0].text.split(stop)[0]
    msg = create(client, engine, max_tokens=12, stop_sequences=["never-seen", stop])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", stop)
    assert msg.content[0].text == cut
    with client.messages.stream(
        model=engine.model_name,
        max_tokens=12,
        extra_body=GREEDY,
        messages=HI,
        stop_sequences=[stop],
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert final.content[0].text == cut


# -- tools --------------------------------------------------------------------------------


def test_tool_use_round_trip(client, engine, idle):
    call = create(
        client,
        engine,
        messages=PARIS,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=40,
    )
    assert call.stop_reason == "tool_use"
    uses = [b for b in call.content if b.type == "tool_use"]
    assert len(uses) == 1
    assert uses[0].name == "get_weather"
    assert isinstance(uses[0].input.get("city"), str)
    result = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": uses[0].id,
                "content": [{"type": "text", "text": "Sunny, 24 C"}],
            }
        ],
    }
    history = [*PARIS, {"role": "assistant", "content": call.content}, result]
    answer = create(client, engine, messages=history, tools=[WEATHER, TIME], max_tokens=16)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in answer.content] == ["text"]
    # The tool result is in the prompt: the count grows with it.
    shorter = [*PARIS, {"role": "assistant", "content": call.content}, {**result, "content": []}]
    counts = [
        client.messages.count_tokens(model=engine.model_name, messages=m, tools=[WEATHER])
        for m in (shorter, history)
    ]
    assert counts[1].input_tokens > counts[0].input_tokens


def test_streamed_tool_use(client, engine, idle):
    with client.messages.stream(
        model=engine.model_name,
        max_tokens=40,
        extra_body=GREEDY,
        messages=PARIS,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name in ("get_weather", "get_time")
    assert uses[0].input and all(isinstance(v, str) for v in uses[0].input.values())
    parts = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json.loads("".join(parts)) == uses[0].input


def test_tool_result_errors_and_string_content(client, engine, idle):
    history = [
        *PARIS,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "X"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city"},
                {"type": "text", "text": "Try again."},
            ],
        },
    ]
    ok = client.messages.count_tokens(model=engine.model_name, messages=history, tools=[WEATHER])
    history[2]["content"][0]["is_error"] = True
    failed = client.messages.count_tokens(
        model=engine.model_name, messages=history, tools=[WEATHER]
    )
    assert failed.input_tokens > ok.input_tokens  # the model is told it failed
    msg = create(client, engine, messages=history, tools=[WEATHER], tool_choice={"type": "none"})
    assert [b.type for b in msg.content] == ["text"]


# -- thinking -----------------------------------------------------------------------------


def test_thinking_maps_onto_the_chat_reasoning_fields():
    base = {"model": "m", "max_tokens": 64, "messages": HI}
    on = chat_request(MessagesRequest(**base, thinking={"type": "enabled", "budget_tokens": 32}))
    assert (on.chat_template_kwargs, on.thinking_budget) == ({"enable_thinking": True}, 32)
    off = chat_request(MessagesRequest(**base, thinking={"type": "disabled"}))
    assert off.chat_template_kwargs == {"enable_thinking": False}
    assert off.reasoning_effort == "none"
    plain = chat_request(MessagesRequest(**base))
    assert (plain.chat_template_kwargs, plain.reasoning_effort, plain.thinking_budget) == (
        None,
        None,
        None,
    )
    history = [
        *HI,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "They want a greeting.", "signature": "x"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Again."},
    ]
    turn = chat_request(MessagesRequest(**{**base, "messages": history})).messages[1]
    assert turn.reasoning_content == "They want a greeting."
    assert turn.content[0].text == "Hello!"


def test_reasoning_becomes_thinking_blocks():
    usage = UsageInfo(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    chat = ChatCompletionResponse(
        id="chatcmpl-abc",
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=ResponseMessage(
                    content="Hi!", reasoning_content="Greet.", reasoning="Greet."
                ),
                finish_reason="stop",
            )
        ],
        usage=usage,
    )
    msg = message(chat, None, None)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Greet." and msg.content[0].signature
    assert (msg.id, msg.stop_reason) == ("msg_abc", "end_turn")

    def chunk(delta: DeltaMessage | None = None, finish=None, usage=None):
        choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
        return ChatCompletionChunk(id="chatcmpl-abc", model="m", choices=choices, usage=usage)

    async def chunks():
        yield chunk(DeltaMessage(role="assistant", content=""))
        yield chunk(DeltaMessage(reasoning_content="Gre", reasoning="Gre"))
        yield chunk(DeltaMessage(reasoning_content="et.", reasoning="et."))
        yield chunk(DeltaMessage(content="\n"))
        yield chunk(DeltaMessage(content="Hi!"))
        yield chunk(DeltaMessage(), finish="stop")
        yield chunk(usage=usage)

    async def collect():
        events = message_events(
            chunks(),
            message_id="msg_abc",
            model="m",
            input_tokens=5,
            stop_sequences=None,
            engine_stop=lambda: None,
        )
        return [e.model_dump() async for e in events]

    events = asyncio.run(collect())
    shape = [
        (e["type"], (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events
    ]
    assert shape == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", "thinking"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", "text"),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[5]["delta"]["signature"] == msg.content[0].signature
    assert events[8]["delta"]["text"] == "\nHi!"
    assert [e["index"] for e in events if "index" in e] == [0, 0, 0, 0, 0, 1, 1, 1]


def test_thinking_request_is_served(client, engine, idle):
    """A thinking request and a history with thinking blocks work on any model."""
    history = [
        *HI,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "A greeting.", "signature": "sig"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Once more."},
    ]
    for thinking in ({"type": "enabled", "budget_tokens": 16}, {"type": "disabled"}):
        msg = create(client, engine, messages=history, thinking=thinking, max_tokens=24)
        assert msg.stop_reason in ("end_turn", "max_tokens")
        assert msg.content and msg.content[-1].type == "text"


@pytest.fixture(scope="module")
def thinker(engine, live_server) -> anthropic.Anthropic:
    """The default model with the ``<think>`` convention forced on. It never thinks on its
    own, but under a grammar the engine opens the block itself and closes it at the
    budget, so its replies carry real reasoning."""
    server = live_server(create_app(engine, reasoning_parser="think"))
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_thinking_blocks(thinker, engine, idle):
    body = {
        "model": engine.model_name,
        "max_tokens": 24,
        "messages": HI,
        "thinking": {"type": "enabled", "budget_tokens": 8},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    msg = thinker.messages.create(**body, extra_body=GREEDY)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    thought = msg.content[0]
    assert thought.thinking.strip() and thought.signature
    assert msg.content[1].text.startswith("{")
    with thinker.messages.stream(**body, extra_body=GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].thinking == thought.thinking
    assert final.content[0].signature == thought.signature
    kinds = [
        e.delta.type if e.type == "content_block_delta" else e.type
        for e in events
        if e.type.startswith("content_block")
    ]
    # thinking deltas, the signature just before the block stops, then the text block
    end = kinds.index("signature_delta")
    assert kinds[0] == "content_block_start" and set(kinds[1:end]) == {"thinking_delta"}
    assert kinds[end + 1 : end + 3] == ["content_block_stop", "content_block_start"]
    assert set(kinds[end + 3 : -1]) == {"text_delta"} and kinds[-1] == "content_block_stop"
    # Sent back, the thinking is history; switched off, there is none.
    again = thinker.messages.create(
        model=engine.model_name,
        max_tokens=4,
        messages=[*HI, {"role": "assistant", "content": msg.content}, *HI],
        thinking={"type": "disabled"},
        extra_body=GREEDY,
    )
    assert [b.type for b in again.content] == ["text"]


# -- errors -------------------------------------------------------------------------------


def error_of(exc: anthropic.APIStatusError) -> dict:
    body = exc.body
    assert body["type"] == "error"
    return body["error"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"extra_body": {"top_k": -1}}, "top_k"),
        ({"messages": [{"role": "user", "content": [{}]}]}, "messages.0.content.0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({"tools": [{**WEATHER, "name": "bad name"}]}, "tools.0.name"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{**WEATHER, "input_schema": {"type": "string"}}]}, "tools.0.input_schema.type"),
        ({"stop_sequences": [""]}, "stop_sequences.0"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        ({"messages": [*HI, {"role": "assistant", "content": "Hello"}]}, "messages.1.role"),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, engine, change, field):
    with pytest.raises(anthropic.BadRequestError) as info:
        create(client, engine, **change)
    error = error_of(info.value)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{field}: "), error["message"]


def test_missing_fields_and_malformed_bodies(server, api_key):
    headers = {"x-api-key": api_key}
    url = f"{server.url}/v1/messages"
    r = httpx.post(url, json={"model": "m", "messages": HI}, headers=headers)
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    r = httpx.post(
        url, content=b'{"model": ', headers={**headers, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, headers=headers)
    assert r.status_code == 400 and "body is missing" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"\xf5{", headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400  # not UTF-8: FastAPI's own refusal, in Anthropic's shape
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_authentication(server, engine, api_key):
    for key in ("wrong-key", api_key + "x"):
        bad = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model=engine.model_name, max_tokens=2, messages=HI)
        assert error_of(info.value)["type"] == "authentication_error"
    r = httpx.post(f"{server.url}/v1/messages/count_tokens", json={"messages": HI})
    assert r.status_code == 401  # no key at all; checked before the body
    assert "x-api-key" in r.json()["error"]["message"]
    # The key as a bearer token (the client's auth_token) works too, as on the OpenAI routes.
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=api_key, max_retries=0)
    count = bearer.messages.count_tokens(model=engine.model_name, messages=HI)
    assert count.input_tokens > 0
    # The OpenAI routes still take only the bearer token.
    r = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": api_key})
    assert r.status_code == 401 and "error" in r.json() and "type" in r.json()["error"]


def test_unknown_model_is_404(client, engine):
    with pytest.raises(anthropic.NotFoundError) as info:
        create(client, engine, model="claude-sonnet-4-5")
    error = error_of(info.value)
    assert error["type"] == "not_found_error"
    assert "claude-sonnet-4-5" in error["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-sonnet-4-5", messages=HI)
    stream = client.messages.stream(model="nope", max_tokens=2, messages=HI)
    with pytest.raises(anthropic.NotFoundError):  # a stream fails before its first event
        stream.__enter__()


def test_too_long_a_prompt_is_400(client, engine):
    words = " ".join(["hello"] * engine.max_model_len)
    with pytest.raises(anthropic.BadRequestError) as info:
        create(client, engine, messages=[{"role": "user", "content": words}])
    assert "maximum context length" in error_of(info.value)["message"]


def test_overloaded_is_529(engine, live_server):
    full = live_server(create_app(engine, max_waiting=0))  # every request finds it full
    client = anthropic.Anthropic(base_url=full.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.OverloadedError) as info:
        create(client, engine)
    assert info.value.status_code == 529
    assert error_of(info.value)["type"] == "overloaded_error"


def test_disconnect_aborts_the_request(server, engine, api_key, idle):
    body = {
        "model": engine.model_name,
        "max_tokens": 200,
        "messages": HI,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json=body, headers={"x-api-key": api_key}
    ) as r:
        for line in r.iter_lines():
            if "text_delta" in line:
                break
    assert engine.wait_idle(15)  # the `idle` fixture also checks every block is free


# -- LangChain ------------------------------------------------------------------------------


def test_langchain_chat_anthropic(server, engine, api_key, idle):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"Sunny in {city}"

    llm = ChatAnthropic(
        model=engine.model_name,
        base_url=server.url,
        api_key=api_key,
        max_tokens=40,
        temperature=0,
        max_retries=0,
    )
    reply = llm.invoke("Say hello.")
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["output_tokens"] > 0
    called = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]
    assert isinstance(called.tool_calls[0]["args"]["city"], str)
    chunks = list(llm.stream("Say hello."))
    assert "".join(c.text for c in chunks) == reply.text


# -- in-process -----------------------------------------------------------------------------


def test_in_process_adapter(engine, idle):
    adapter = AnthropicAdapter(engine)
    body = {"model": engine.model_name, "max_tokens": 6, "temperature": 0, "messages": HI}

    async def run():
        msg = await adapter.messages(body)
        events = [e async for e in adapter.messages_stream(body)]
        count = await adapter.count_tokens({"model": engine.model_name, "messages": HI})
        # Leaving a stream early aborts its request.
        early = adapter.messages_stream({**body, "max_tokens": 100})
        async for event in early:
            if event.type == "content_block_delta":
                break
        await early.aclose()
        return msg, events, count

    msg, events, count = asyncio.run(run())
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == msg.content[0].text
    assert events[-2].delta.stop_reason == msg.stop_reason
    assert count.input_tokens == msg.usage.input_tokens + msg.usage.cache_read_input_tokens
    with pytest.raises(AnthropicError) as info:
        asyncio.run(adapter.messages({**body, "model": "nope"}))
    assert (info.value.status_code, info.value.type) == (404, "not_found_error")
    with pytest.raises(AnthropicError, match="max_tokens: Field required"):
        adapter.messages_stream({"model": engine.model_name, "messages": HI})
