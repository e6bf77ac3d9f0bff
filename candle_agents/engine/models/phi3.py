"""Phi-3 and Phi-4-mini: Llama's blocks, with Q/K/V and gate/up fused in the checkpoint.

Phi-4-mini turns only part of each head (``partial_rotary_factor``; the shared
rotary handles it). LongRoPE (the 128k variants) is not supported yet: the rope
tables refuse it.
"""

from __future__ import annotations

from candle_agents.engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    def _num_parts(self, name: str) -> int:
        return 0  # qkv_proj and gate_up_proj come whole, in our fused order
