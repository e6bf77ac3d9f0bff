"""What ChatCandle and CandleLLM share (``candle_agents.integrations._engine`` and
``_tools``): one adapter per live engine, one argument check, one tool_choice mapping and
closed tool schemas."""

from __future__ import annotations

import gc
import weakref

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from candle_agents import ConfigError
from candle_agents.engine import Engine
from candle_agents.integrations import _engine
from candle_agents.integrations.langchain import ChatCandle
from candle_agents.integrations.llamaindex import CandleLLM
from tests.integrations.langchain_features import ENGINE_CONFIG


class Place(BaseModel):
    city: str


class Forecast(BaseModel):
    place: Place
    days: int


def forecast(place: Place, days: int) -> str:
    """The weather at a place for some days."""
    return "sunny"


def test_one_adapter_per_live_engine_dropped_once_it_is_shut_down():
    # Its own small engine: the shared ones stay up for the other tests.
    engine = Engine.from_pretrained(max_model_len=256, kv_cache_memory=16 * 2**20)
    try:
        chat, llm = ChatCandle(engine=engine), CandleLLM(engine=engine)
        adapter = llm.adapter
        assert chat._adapter(None) is adapter
        assert _engine.adapter_for(engine) is adapter
        with pytest.raises(ConfigError, match="agree"):
            CandleLLM(model="another-model", engine=engine)
    finally:
        engine.shutdown()
    # The next lookup drops the shut-down engine, and does not cache it again...
    assert _engine.adapter_for(engine) is not adapter
    assert id(engine) not in _engine._adapters
    # ...so the cache keeps nothing of it alive.
    ref = weakref.ref(engine)
    del engine, chat, llm, adapter
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("cls", [ChatCandle, CandleLLM])
def test_engine_arguments_are_checked_alike(cls):
    with pytest.raises(ConfigError, match="not both"):
        cls(engine=object(), engine_config=ENGINE_CONFIG)
    with pytest.raises(ConfigError, match="not inside engine_config"):
        cls(engine_config={"model": "x"})
    with pytest.raises(ConfigError, match="unknown EngineConfig"):
        cls(engine_config={"max_model_length": 10})
    with pytest.raises(ConfigError, match="must be a candle_agents Engine"):
        cls(engine=object())


def test_candle_llm_closes_tool_argument_schemas_as_chat_candle_does():
    llm = CandleLLM(engine_config=ENGINE_CONFIG)  # preparing a turn loads nothing
    tool = FunctionTool.from_defaults(fn=forecast, fn_schema=Forecast)
    spec = llm._prepare_chat_with_tools([tool])["tools"][0]
    params = spec["function"]["parameters"]
    assert params["additionalProperties"] is False
    assert params["$defs"]["Place"]["additionalProperties"] is False

    bound = ChatCandle(engine_config=ENGINE_CONFIG).bind_tools([Forecast])
    chat_params = bound.kwargs["tools"][0]["function"]["parameters"]
    assert chat_params["additionalProperties"] is False
    assert chat_params["properties"]["place"]["additionalProperties"] is False  # inlined


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("any", "required"),
        ("forecast", {"type": "function", "function": {"name": "forecast"}}),
        ({"name": "forecast"}, {"type": "function", "function": {"name": "forecast"}}),
        (
            {"type": "function", "function": {"name": "forecast"}},
            {"type": "function", "function": {"name": "forecast"}},
        ),
    ],
)
def test_tool_choice_is_mapped_alike(choice, sent):
    llm = CandleLLM(engine_config=ENGINE_CONFIG)
    tool = FunctionTool.from_defaults(fn=forecast, fn_schema=Forecast)
    assert llm._prepare_chat_with_tools([tool], tool_choice=choice)["tool_choice"] == sent
    chat = ChatCandle(engine_config=ENGINE_CONFIG)
    assert chat.bind_tools([forecast], tool_choice=choice).kwargs["tool_choice"] == sent


@pytest.mark.parametrize("choice", ["divide", {"type": "function", "function": {"name": "x"}}])
def test_a_tool_choice_naming_no_bound_tool_is_refused_alike(choice):
    llm = CandleLLM(engine_config=ENGINE_CONFIG)
    tool = FunctionTool.from_defaults(fn=forecast, fn_schema=Forecast)
    with pytest.raises(ConfigError, match=r"not among the bound tools \(forecast\)"):
        llm._prepare_chat_with_tools([tool], tool_choice=choice)
    with pytest.raises(ConfigError, match=r"not among the bound tools \(forecast\)"):
        ChatCandle(engine_config=ENGINE_CONFIG).bind_tools([forecast], tool_choice=choice)
