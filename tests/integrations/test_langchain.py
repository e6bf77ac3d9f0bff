"""ChatCandle's own behaviour on the real default model (SmolLM2-135M-Instruct, in-process).

LangChain's standard suites are in test_langchain_unit.py and test_langchain_standard.py;
these tests check what they don't: a shared engine, real token streaming and callbacks,
concurrent batches, stop sequences, enforced tool calls and structured output, usage
numbers against the engine, errors, and ChatCandle inside a LangChain agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.exceptions import ContextOverflowError, ModelInvalidRequestError
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from candle_agents.errors import ModelLoadError
from candle_agents.integrations.langchain import (
    CandleContextOverflowError,
    CandleInvalidRequestError,
    CandleTimeoutError,
    ChatCandle,
    convert_messages,
)
from candle_agents.openai import OpenAIError
from tests.integrations.langchain_features import ENGINE_CONFIG


def make_model(**kwargs: Any) -> ChatCandle:
    return ChatCandle(engine_config=ENGINE_CONFIG, **{"temperature": 0, **kwargs})


@pytest.fixture(scope="module")
def model() -> ChatCandle:
    chat = make_model(max_tokens=32)
    chat.get_engine()  # load once, outside any test's timing
    return chat


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokenCounter(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# -- construction and the shared engine ------------------------------------------------------


def test_models_on_one_model_share_one_engine(model):
    other = make_model(temperature=0.7)
    assert other.get_engine() is model.get_engine()
    assert ChatCandle(engine=model.get_engine()).get_engine() is model.get_engine()
    assert ChatCandle(engine=model.get_engine()).model == model.get_engine().model_name


def test_construction_loads_nothing():
    chat = ChatCandle(model="/nowhere/model.gguf")  # cheap: the model is read on first use
    with pytest.raises(ModelLoadError, match="not found"):
        chat.invoke("hi")


def test_construction_rejects_conflicting_or_unknown_settings(model):
    with pytest.raises(ValueError, match="engine or engine_config"):
        ChatCandle(engine=model.get_engine(), engine_config=ENGINE_CONFIG)
    with pytest.raises(ValueError, match="unknown EngineConfig"):
        ChatCandle(engine_config={"max_model_length": 10})
    with pytest.raises(ValueError, match="Extra inputs"):
        ChatCandle(temprature=0)


# -- messages ---------------------------------------------------------------------------------


def test_messages_are_converted_and_same_role_turns_merged():
    messages = [
        SystemMessage("a"),
        SystemMessage("b"),
        HumanMessage("hi", name="ada"),
        HumanMessage([{"type": "text", "text": "there"}], name="ada"),
        HumanMessage("I am bob", name="bob"),
        AIMessage(
            "",
            tool_calls=[{"name": "create", "args": {"name": "你好"}, "id": "c1"}],
        ),
        ToolMessage("boom", tool_call_id="c1", status="error"),
        ToolMessage("Error: already said", tool_call_id="c1", status="error"),
    ]
    assert convert_messages(messages) == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": "hi\n\nthere", "name": "ada"},
        {"role": "user", "content": "I am bob", "name": "bob"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "create", "arguments": '{"name": "你好"}'},
                }
            ],
        },
        {"role": "tool", "content": "Error: boom", "tool_call_id": "c1"},
        {"role": "tool", "content": "Error: already said", "tool_call_id": "c1"},
    ]


def test_non_text_content_is_refused_clearly():
    image = {"type": "image", "url": "https://example.com/cat.png"}
    with pytest.raises(ValueError, match=r"messages\[0\].content\[1\].*text only"):
        convert_messages([HumanMessage([{"type": "text", "text": "look"}, image])])


# -- generation and streaming -------------------------------------------------------------------


def test_stream_is_token_by_token_and_matches_invoke(model):
    prompt = "Count from one to twenty in words."
    counter = TokenCounter()
    chunks = list(model.stream(prompt, config={"callbacks": [counter]}))
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) >= 5  # one chunk per engine delta, not one blob
    assert len(counter.tokens) == len(chunks)  # on_llm_new_token fires per chunk
    full = aggregate(chunks)
    assert full.chunk_position == "last"
    invoked = model.invoke(prompt)
    assert full.content == invoked.content  # greedy: the same text either way
    # Metadata that LangChain concatenates arrives once, on the last chunk.
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    assert full.response_metadata["model_name"] == model.get_engine().model_name
    assert full.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]
    assert full.usage_metadata == invoked.usage_metadata | {
        "input_token_details": full.usage_metadata["input_token_details"]  # cache may differ
    }


async def test_astream_is_token_by_token_and_matches_ainvoke(model):
    prompt = "Name the days of the week."
    counter = AsyncTokenCounter()
    chunks = [c async for c in model.astream(prompt, config={"callbacks": [counter]})]
    assert len([c for c in chunks if c.content]) >= 5
    assert len(counter.tokens) == len(chunks)
    assert aggregate(chunks).content == (await model.ainvoke(prompt)).content


def test_streaming_flag_sends_invoke_tokens_to_callbacks():
    chat = make_model(max_tokens=12, streaming=True)
    counter = TokenCounter()
    result = chat.invoke("Say hello.", config={"callbacks": [counter]})
    assert len(counter.tokens) > 1
    assert "".join(counter.tokens) == result.content


async def test_sync_invoke_works_inside_a_running_event_loop(model):
    # As in Jupyter: the sync call runs on candle-agents' own loop, not this one.
    assert model.invoke("Hi").content


async def test_abatch_runs_prompts_together(model):
    engine = model.get_engine()
    prompts = [f"Write a short poem about the number {i}." for i in range(4)]
    batch = asyncio.create_task(model.abatch(prompts))
    peak = 0
    while not batch.done():
        peak = max(peak, engine.num_running)
        await asyncio.sleep(0.002)
    results = batch.result()
    assert all(r.content for r in results)
    assert peak > 1  # in the engine at the same time, not one after another


async def test_batch_from_threads_runs_prompts_together(model):
    engine = model.get_engine()
    prompts = [f"List {i} colours." for i in range(3, 7)]
    batch = asyncio.create_task(asyncio.to_thread(model.batch, prompts))
    peak = 0
    while not batch.done():
        peak = max(peak, engine.num_running)
        await asyncio.sleep(0.002)
    assert all(r.content for r in batch.result())
    assert peak > 1


def test_stop_sequence_of_several_tokens_cuts_the_answer(model):
    prompt = "Count from one to twenty in words."
    text = model.invoke(prompt).content
    stop = text[len(text) // 3 : len(text) // 3 + 8]
    engine = model.get_engine()
    assert len(engine.tokenize(stop, add_special_tokens=False)) > 1
    cut = model.invoke(prompt, stop=[stop])
    assert cut.content == text[: text.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    streamed = aggregate(list(make_model(max_tokens=32, stop=[stop]).stream(prompt)))
    assert streamed.content == cut.content


# -- tools --------------------------------------------------------------------------------------


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city name")
    days: int = Field(description="How many days of forecast", ge=1, le=7)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def tool_model(model) -> ChatCandle:
    return make_model(max_tokens=64)  # room for a whole call


def test_forced_tool_call_is_valid_for_the_schema(tool_model):
    bound = tool_model.bind_tools([GetWeather, add], tool_choice="any")
    message = bound.invoke("What is the weather in Paris for the next 3 days?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] in ("GetWeather", "add")
    assert call["id"].startswith("call_")
    schema = GetWeather if call["name"] == "GetWeather" else add.args_schema
    schema.model_validate(call["args"])  # the grammar kept the arguments on the schema
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_named_tool_choice_calls_that_tool(tool_model):
    bound = tool_model.bind_tools([GetWeather, add], tool_choice="add")
    message = bound.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["add"]
    add.args_schema.model_validate(message.tool_calls[0]["args"])
    # The same result from the OpenAI dict form of the choice.
    named = {"type": "function", "function": {"name": "add"}}
    again = tool_model.bind_tools([GetWeather, add], tool_choice=named).invoke(
        "What is the weather in Paris?"
    )
    assert [c["args"] for c in again.tool_calls] == [c["args"] for c in message.tool_calls]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (None, None),
        ("auto", "auto"),
        ("none", "none"),
        ("any", "required"),
        ("required", "required"),
        (True, "required"),
        ("add", {"type": "function", "function": {"name": "add"}}),
        (
            {"type": "function", "function": {"name": "add"}},
            {"type": "function", "function": {"name": "add"}},
        ),
    ],
)
def test_tool_choice_forms(model, choice, sent):
    assert model.bind_tools([add], tool_choice=choice).kwargs.get("tool_choice") == sent


def test_python_tools_get_closed_argument_schemas_and_dicts_are_kept(model):
    open_tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }
    tools = model.bind_tools([GetWeather, add, open_tool]).kwargs["tools"]
    params = [t["function"]["parameters"] for t in tools]
    assert params[0]["additionalProperties"] is False
    assert params[1]["additionalProperties"] is False
    assert params[2] == {"type": "object", "properties": {}}  # the caller's schema, as given


def test_unknown_tool_choice_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"'multiply'.*not among the bound tools \(add\)"):
        model.bind_tools([add], tool_choice="multiply")


def test_streamed_tool_call_chunks_aggregate_to_the_same_call(tool_model):
    bound = tool_model.bind_tools([GetWeather], tool_choice="GetWeather")
    prompt = "Weather in Oslo for 2 days?"
    chunks = list(bound.stream(prompt))
    assert sum(1 for c in chunks if c.tool_call_chunks) > 1  # arguments arrive in pieces
    full = aggregate(chunks)
    invoked = bound.invoke(prompt)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        (c["name"], c["args"]) for c in invoked.tool_calls
    ]
    assert full.tool_calls[0]["id"]
    assert full.response_metadata["finish_reason"] == "tool_calls"


def test_tool_results_and_unicode_arguments_reach_the_model(tool_model):
    bound = tool_model.bind_tools([add])
    history = [
        HumanMessage("What is 2 + 3? 用中文回答"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}]),
        ToolMessage("5", tool_call_id="call_1", name="add"),
    ]
    answer = bound.invoke(history)
    assert isinstance(answer, AIMessage)
    assert answer.content or answer.tool_calls


# -- structured output ----------------------------------------------------------------------------


class Person(BaseModel):
    """A person."""

    name: str
    age: int


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


PERSON_PROMPT = "Ada is 36 years old. Give her name and age."


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_gives_instances(model, method):
    prompt = PERSON_PROMPT
    if method == "json_mode":  # JSON of any shape: the prompt describes it
        prompt += ' Answer with JSON like {"name": "...", "age": 0}.'
    chat = make_model(max_tokens=48).with_structured_output(Person, method=method)
    person = chat.invoke(prompt)
    assert isinstance(person, Person)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_from_typeddict_and_json_schema_gives_dicts(model, method):
    for schema in (PersonDict, Person.model_json_schema()):
        result = make_model(max_tokens=48).with_structured_output(schema, method=method)
        person = result.invoke(PERSON_PROMPT)
        assert set(person) == {"name", "age"}
        assert isinstance(person["age"], int)


def test_json_mode_gives_a_json_object(model):
    result = make_model(max_tokens=48).with_structured_output(None, method="json_mode")
    assert isinstance(result.invoke(PERSON_PROMPT + " Answer in JSON."), dict)


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_include_raw(model, method):
    chat = make_model(max_tokens=48).with_structured_output(Person, method=method, include_raw=True)
    out = chat.invoke(PERSON_PROMPT + ' JSON like {"name": "...", "age": 0}.')
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert isinstance(out["raw"], AIMessage)
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], Person)


def test_structured_output_streams_partial_objects(model):
    chat = make_model(max_tokens=48).with_structured_output(PersonDict)
    parts = list(chat.stream(PERSON_PROMPT))
    assert parts and set(parts[-1]) == {"name", "age"}


# -- usage and errors ------------------------------------------------------------------------


def test_usage_matches_the_engine_and_prefix_cache_hits(model):
    engine = model.get_engine()
    prompt = "Summarise: " + "The cat sat on the mat and looked at the dog. " * 30
    prompt_ids = engine.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
    chat = make_model(max_tokens=5)
    first = chat.invoke(prompt).usage_metadata
    again = chat.invoke(prompt).usage_metadata
    assert first["input_tokens"] == again["input_tokens"] == len(prompt_ids)
    assert first["output_tokens"] == again["output_tokens"] == 5
    assert again["total_tokens"] == len(prompt_ids) + 5
    # The repeated prompt's full blocks come from the prefix cache.
    block = engine.config.block_size
    assert again["input_token_details"]["cache_read"] >= len(prompt_ids) // block * block - block
    assert again["input_token_details"]["cache_read"] > 0


def test_prompt_over_the_context_is_a_clear_error_and_the_engine_goes_on(model):
    too_long = "word " * (model.get_engine().max_model_len + 10)
    with pytest.raises(CandleContextOverflowError, match="maximum context length") as info:
        model.invoke(too_long)
    assert isinstance(info.value, ContextOverflowError)  # LangChain's standard type
    assert isinstance(info.value, OpenAIError)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(CandleContextOverflowError):
        list(model.stream(too_long))
    assert model.invoke("Hello").content


async def test_bad_parameter_is_an_invalid_request_error(model):
    with pytest.raises(CandleInvalidRequestError, match="temperature") as info:
        await model.ainvoke("Hello", temperature=5)
    assert isinstance(info.value, ModelInvalidRequestError)
    with pytest.raises(ValueError, match="unknown call argument"):
        model.invoke("Hello", temprature=0.5)


async def test_timeout_aborts_the_request(model):
    engine = model.get_engine()
    # Far less than one forward pass: the whole answer, or the first token, is late.
    hasty = make_model(max_tokens=200, timeout=0.001)
    with pytest.raises(CandleTimeoutError, match="timeout"):
        await hasty.ainvoke("Write a long story about a dragon.")
    with pytest.raises(TimeoutError):  # also a TimeoutError, on the streaming path too
        async for _ in hasty.astream("Write a long story about a dragon."):
            pass
    assert await asyncio.to_thread(engine.wait_idle, 10)  # aborted, not left running


# -- in a LangChain agent ---------------------------------------------------------------------


def test_agent_calls_the_tool_and_answers_with_its_result():
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call

    calls: list[str] = []

    @tool
    def get_password(user: str) -> str:
        """Return the password of a user."""
        calls.append(user)
        return "The password is tulip42."

    @wrap_model_call
    def call_a_tool_first(request, handler):
        # A 135M model rarely chooses a tool on its own: force the first turn only, so
        # the turn after the tool result is free to answer.
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            request = request.override(tool_choice="any")
        return handler(request)

    agent = create_agent(
        model=make_model(max_tokens=48),
        tools=[get_password],
        middleware=[call_a_tool_first],
    )
    state = agent.invoke({"messages": [HumanMessage("What is the password of user bob?")]})
    messages = state["messages"]
    assert calls  # the tool really ran
    assert any(isinstance(m, ToolMessage) and "tulip42" in m.content for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "tulip42" in final.content, final.content
