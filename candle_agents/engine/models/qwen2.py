"""Qwen2 / Qwen2.5: the Llama block with biases on the Q, K and V projections."""

from __future__ import annotations

from typing import Any

from candle_agents.engine.layers.decoder import DecoderSpec
from candle_agents.engine.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        spec = super().spec_from_config(c)
        spec.attention_bias = True
        return spec
