"""LangChain's standard unit suite for ChatCandle (construction, binding, tracing params).

None of these tests loads the engine: ChatCandle builds cheaply and loads on first use.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests

from candle_agents.integrations.langchain import ChatCandle

# The same engine config as the integration tests, so that a run of both shares one engine.
ENGINE_CONFIG = {"max_model_len": 2048, "kv_cache_memory": 128 * 2**20}


class TestChatCandleUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatCandle]:
        return ChatCandle

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m-instruct", "engine_config": ENGINE_CONFIG}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True
