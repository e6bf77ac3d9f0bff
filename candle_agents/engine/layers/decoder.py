"""Shared decoder blocks for the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM3, Phi-3).

Q/K/V and gate/up projections are fused into one matrix each: one larger
matmul is cheaper than three small ones, on CPU especially. ``load_weight``
maps the HF checkpoint names onto the fused slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from candle_agents.engine.attention import AttentionBackend, AttentionMetadata
from candle_agents.engine.layers.norm import RMSNorm
from candle_agents.engine.layers.ops import TorchOps
from candle_agents.engine.layers.rotary import RotaryEmbedding


@dataclass
class ForwardContext:
    """What every layer needs for one step besides its input.

    Models with sliding-window layers keep those layers' KV in their own
    block pool: ``layer_metas[i]`` is then layer ``i``'s metadata (block
    tables and slots of its pool, and its window); otherwise every layer
    reads ``meta``. ``local_rotary`` is the rope table of local layers where
    it differs from the global one (Gemma).
    """

    meta: AttentionMetadata
    backend: AttentionBackend
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    positions: torch.Tensor
    rotary: RotaryEmbedding
    ops: TorchOps
    layer_metas: list[AttentionMetadata] | None = None
    local_rotary: RotaryEmbedding | None = None

    def meta_for(self, layer_idx: int) -> AttentionMetadata:
        return self.meta if self.layer_metas is None else self.layer_metas[layer_idx]


@dataclass
class DecoderSpec:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    attention_bias: bool = False
    qk_norm: bool = False
    # Per layer: whether it applies the rotary embedding (None: every layer does).
    rope_layers: tuple[bool, ...] | None = None
    # Per layer: its sliding window in tokens, None for global attention
    # (None for the whole tuple: no layer has a window).
    layer_windows: tuple[int | None, ...] | None = None


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
        )
        self.q_size = spec.num_heads * spec.head_dim
        self.kv_size = spec.num_kv_heads * spec.head_dim
        self.scale = spec.head_dim**-0.5
        self.qkv_proj = nn.Linear(
            spec.hidden_size, self.q_size + 2 * self.kv_size, bias=spec.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, spec.hidden_size, bias=False)
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.use_rope = spec.rope_layers is None or spec.rope_layers[layer_idx]
        self.softcap: float | None = None  # attention-score cap (Gemma 2)

    def rope_table(self, ctx: ForwardContext) -> RotaryEmbedding | None:
        """The rotary table this layer turns Q and K with (None: no rotary)."""
        return ctx.rotary if self.use_rope else None

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q, ctx.ops), self.k_norm(k, ctx.ops)
        rope = self.rope_table(ctx)
        if rope is not None:
            q, k = ctx.ops.rotary(q, k, rope.cos, rope.sin, ctx.positions)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        meta = ctx.meta_for(self.layer_idx)
        ctx.backend.store_kv(k, v, k_cache, v_cache, meta)
        out = ctx.backend.attend(q, k, v, k_cache, v_cache, meta, self.scale, self.softcap)
        return self.o_proj(out.reshape(-1, self.q_size))


class GatedMLP(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.down_proj(ctx.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, layer_idx)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = GatedMLP(spec)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on the residual stream: returns (this block's output, residual).

        The stream's additions are deferred into the next norm, so each
        add + norm pair is one fused op; the sum is the HF models' ``x + f(x)``.
        """
        ops, norm1, norm2 = ctx.ops, self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            residual, h = x, ops.rms_norm(x, norm1.weight, norm1.eps)
        else:
            h, residual = ops.add_rms_norm(x, residual, norm1.weight, norm1.eps)
        h = self.self_attn(h, ctx)
        h, residual = ops.add_rms_norm(h, residual, norm2.weight, norm2.eps)
        return self.mlp(h, ctx), residual
