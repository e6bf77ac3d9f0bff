"""Reasoning through the chat pipeline on the default model, steered so it thinks: a
grammar makes the engine open a ``<think>`` block and the thinking budget closes it.

Chat completions (whole and streamed), the Responses API, ChatCandle and CandleLLM
all return the reasoning apart from the answer."""

from __future__ import annotations

import json

import pytest

from candle_agents import Engine
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.chat import build_messages
from candle_agents.openai.protocol import ChatCompletionRequest
from candle_agents.openai.tool_parsers import get_tool_parser
from candle_agents.responses import ResponsesAPI
from tests.support.checks import assert_all_blocks_free

MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture(scope="module")
def engine():
    eng = Engine.from_pretrained(kv_cache_memory=64 * 2**20)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def adapter(engine):
    # SmolLM2's template shows no reasoning convention: ask for <think> blocks by name.
    return OpenAIAdapter(engine, reasoning_parser="think")


def json_request(engine, **extra) -> dict:
    return {
        "model": engine.model_name,
        "messages": [{"role": "user", "content": "Describe a cat as JSON."}],
        "temperature": 0,
        "max_tokens": 60,
        "response_format": {"type": "json_object"},
        "thinking_budget": 6,
        **extra,
    }


async def test_reasoning_comes_apart_from_the_answer(adapter, engine):
    response = await adapter.chat_completion(json_request(engine))
    message = response.choices[0].message
    assert message.reasoning_content and message.reasoning == message.reasoning_content
    assert "<think>" not in message.content and "</think>" not in message.content
    assert isinstance(json.loads(message.content), dict)  # the grammar held after the block
    assert response.usage.completion_tokens_details.reasoning_tokens > 6
    assert_all_blocks_free(engine)


async def test_streamed_reasoning_matches_the_whole_response(adapter, engine):
    whole = (await adapter.chat_completion(json_request(engine))).choices[0].message
    reasoning, content, usage = "", "", None
    stream = adapter.chat_completion_stream(
        json_request(engine, stream=True, stream_options={"include_usage": True})
    )
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta
            assert delta.reasoning == delta.reasoning_content
            assert "think>" not in (delta.content or "")
            reasoning += delta.reasoning_content or ""
            content += delta.content or ""
    assert (reasoning, content) == (whole.reasoning_content, whole.content)
    assert usage.completion_tokens_details.reasoning_tokens > 6


@pytest.mark.parametrize(
    "switch", [{"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}]
)
async def test_thinking_off_leaves_no_reasoning(adapter, engine, switch):
    on = await adapter.chat_completion(json_request(engine))
    off = await adapter.chat_completion(json_request(engine, **switch))
    message = off.choices[0].message
    assert message.reasoning_content is None and message.reasoning is None
    assert isinstance(json.loads(message.content), dict)
    assert off.usage.completion_tokens_details is None
    # the prompt ends with an empty block, so the model answers straight away
    assert off.usage.prompt_tokens > on.usage.prompt_tokens


async def test_tool_calls_after_a_think_block_parse(adapter, engine):
    request = {
        "model": engine.model_name,
        "messages": [{"role": "user", "content": "What is 6 times 7?"}],
        "temperature": 0,
        "max_tokens": 60,
        "tools": [MULTIPLY],
        "tool_choice": "required",
        "thinking_budget": 4,
    }
    response = await adapter.chat_completion(request)
    choice = response.choices[0]
    assert choice.message.reasoning_content
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "multiply"
    assert set(json.loads(call.function.arguments)) == {"a", "b"}
    streamed = adapter.chat_completion_stream({**request, "stream": True})
    names = [
        tc.function.name
        async for chunk in streamed
        for c in chunk.choices
        for tc in c.delta.tool_calls or ()
        if tc.function and tc.function.name
    ]
    assert names == ["multiply"]


def test_earlier_reasoning_reaches_the_template():
    request = ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
            {"role": "assistant", "content": "Again.", "reasoning": "Another."},
        ],
    )
    messages = build_messages(request, get_tool_parser("hermes"), True, None)
    assert [m.get("reasoning_content") for m in messages] == [None, "A greeting.", "Another."]


async def test_responses_api_returns_a_reasoning_item(adapter, engine):
    api = ResponsesAPI(adapter)
    request = {
        "input": "Describe a cat as JSON.",
        "temperature": 0,
        "max_output_tokens": 60,
        "thinking_budget": 6,
        "text": {"format": {"type": "json_object"}},
    }
    response = await api.create(request)
    kinds = [item["type"] for item in response.output]
    assert kinds == ["reasoning", "message"]
    thought = response.output[0]["content"][0]["text"]
    assert thought and isinstance(json.loads(response.output_text), dict)
    assert response.usage.output_tokens_details.reasoning_tokens > 6
    events = [e async for e in api.stream(request)]
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == thought
    done = [e for e in events if e.type == "response.reasoning_text.done"]
    assert len(done) == 1 and done[0].text == thought
    # the reasoning goes back to the model with the answer it belongs to
    follow = await api.create(
        {
            "input": [*response.output, {"role": "user", "content": "Shorter."}],
            "max_output_tokens": 4,
            "temperature": 0,
            "reasoning": {"effort": "none"},
        }
    )
    assert follow.status in ("completed", "incomplete") and follow.output
    assert not any(item["type"] == "reasoning" for item in follow.output)


def test_chatcandle_puts_reasoning_where_langchain_looks(engine):
    pytest.importorskip("langchain_core")
    from candle_agents.integrations.langchain import ChatCandle

    llm = ChatCandle(
        engine=engine,
        temperature=0,
        max_tokens=60,
        thinking_budget=6,
        model_kwargs={"reasoning_parser": "think", "response_format": {"type": "json_object"}},
    )
    message = llm.invoke("Describe a cat as JSON.")
    reasoning = message.additional_kwargs["reasoning_content"]
    assert reasoning and isinstance(json.loads(message.content), dict)
    assert {"type": "reasoning", "reasoning": reasoning} in message.content_blocks
    assert message.usage_metadata["output_token_details"]["reasoning"] > 6
    chunks = list(llm.stream("Describe a cat as JSON."))
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.additional_kwargs["reasoning_content"] == reasoning
    assert total.content == message.content


def test_candlellm_returns_a_thinking_block(engine):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock

    from candle_agents.integrations.llamaindex import CandleLLM

    llm = CandleLLM(
        engine=engine,
        temperature=0,
        max_tokens=60,
        additional_kwargs={
            "reasoning_parser": "think",
            "thinking_budget": 6,
            "response_format": {"type": "json_object"},
        },
    )
    response = llm.chat([ChatMessage(role="user", content="Describe a cat as JSON.")])
    thoughts = [b for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert len(thoughts) == 1 and thoughts[0].content
    assert isinstance(json.loads(response.message.content), dict)
    streamed = list(llm.stream_chat([ChatMessage(role="user", content="Describe a cat as JSON.")]))
    pieces = "".join(r.additional_kwargs.get("thinking_delta", "") for r in streamed)
    assert pieces == thoughts[0].content
