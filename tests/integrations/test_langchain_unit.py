"""LangChain's standard unit suite for ChatCandle (construction, binding, tracing params).

None of these tests loads the engine: ChatCandle builds cheaply and loads on first use.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests

from candle_agents.integrations.langchain import ChatCandle
from tests.integrations.langchain_features import ENGINE_CONFIG, ChatCandleFeatures


class TestChatCandleUnit(ChatCandleFeatures, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatCandle]:
        return ChatCandle

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m-instruct", "engine_config": ENGINE_CONFIG}
