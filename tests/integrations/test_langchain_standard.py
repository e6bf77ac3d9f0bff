"""LangChain's standard integration suite for ChatCandle, on the real default model.

SmolLM2-135M-Instruct runs in-process on the CPU; forced tool calls and structured
output hold because the engine decodes them under a grammar.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from candle_agents.engine.loader import default_gguf_path
from candle_agents.integrations.langchain import ChatCandle
from tests.integrations.langchain_features import ENGINE_CONFIG, ChatCandleFeatures


class TestChatCandleStandard(ChatCandleFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatCandle]:
        return ChatCandle

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The integration suite passes no standard params: without these the model would
        # sample at temperature 1 until the context is full. Greedy decoding makes a 135M
        # model loop ("a cat is a cat, a cat is a cat..."); a presence penalty (on the
        # tokens it wrote, not on the prompt it may have to copy from) stops that.
        return {
            "model": "smollm2-135m-instruct",
            "engine_config": ENGINE_CONFIG,
            "temperature": 0,
            "max_tokens": 64,
            "presence_penalty": 1.0,
        }

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    @property
    def model_override_value(self) -> str:
        # The embedded model's own file: another model string, so another shared engine.
        return str(default_gguf_path())

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> Any:
        model = ChatCandle(engine_config=ENGINE_CONFIG, temperature=0, max_tokens=8)
        prompt = "Repeat after me: " + "the quick brown fox jumps over the lazy dog. " * 20
        model.invoke(prompt)  # fills the prefix cache
        if stream:
            full = None
            for chunk in model.stream(prompt):
                full = chunk if full is None else full + chunk
            return full
        return model.invoke(prompt)

    @pytest.mark.xfail(
        reason="SmolLM2-135M never chooses a tool call by itself (tool_choice='auto'): the "
        "call markup is not among its top-5 first tokens. Forced calls pass (test_tool_choice) "
        "and test_langchain.py runs an agent whose first call is forced."
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
