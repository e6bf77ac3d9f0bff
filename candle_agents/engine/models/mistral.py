"""Mistral: the Llama block; its sliding window is handled by capping max_model_len."""

from __future__ import annotations

from candle_agents.engine.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    pass
