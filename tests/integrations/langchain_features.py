"""What ChatCandle declares to LangChain's standard suites, shared by the unit and
integration suites (they must agree), and the engine config every LangChain test uses."""

from __future__ import annotations

# A small context and KV cache keep the engine quick to build and memory-bounded; one
# config for every LangChain test file, so a run of them shares one engine.
ENGINE_CONFIG = {"max_model_len": 2048, "kv_cache_memory": 128 * 2**20}


class ChatCandleFeatures:
    """Mixed into the standard test classes: the features ChatCandle supports."""

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
