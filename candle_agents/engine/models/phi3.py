"""Phi-3 and Phi-4-mini: Llama's blocks, with Q/K/V and gate/up fused in the checkpoint.

Phi-4-mini turns only part of each head (``partial_rotary_factor``; the shared
rotary handles it). LongRoPE (Phi-3's 128k variants, Phi-4-mini) is in the rope tables:
short factors for positions below ``original_max_position_embeddings``, long factors
from there on, chosen by position rather than by forward pass as transformers does (see
``layers.rotary.RotaryEmbedding`` for where the two agree).
"""

from __future__ import annotations

from candle_agents.engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    def _num_parts(self, name: str) -> int:
        return 0  # qkv_proj and gate_up_proj come whole, in our fused order
