"""Mistral: the Llama block, with a sliding window on every layer where the config sets one."""

from __future__ import annotations

from candle_agents.engine.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    pass
