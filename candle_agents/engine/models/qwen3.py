"""Qwen3: per-head RMSNorm on queries and keys before the rotary embedding."""

from __future__ import annotations

from typing import Any

from candle_agents.engine.layers.decoder import DecoderSpec
from candle_agents.engine.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        spec = super().spec_from_config(c)
        spec.qk_norm = True
        spec.attention_bias = bool(c.get("attention_bias", False))
        return spec
