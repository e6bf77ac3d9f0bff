"""Phi-3: Llama's blocks, with Q/K/V and gate/up already fused in the checkpoint.

Rotary over part of each head (``partial_rotary_factor`` < 1, Phi-4-mini) and
LongRoPE (the 128k variants) are not supported yet: such configs are refused.
"""

from __future__ import annotations

from typing import Any

from candle_agents.engine.layers.decoder import DecoderSpec
from candle_agents.engine.models.llama import LlamaForCausalLM
from candle_agents.errors import ModelLoadError


class Phi3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        params = c.get("rope_parameters") or {}
        partial = c.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
        if float(partial) != 1.0:
            raise ModelLoadError(
                f"partial_rotary_factor={partial} (Phi-4-mini) is not supported yet: "
                "rotary over the whole head only"
            )
        return super().spec_from_config(c)

    def _num_parts(self, name: str) -> int:
        return 0  # qkv_proj and gate_up_proj come whole, in our fused order
