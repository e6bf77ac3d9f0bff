"""The CPU backend: the torch reference, with decode attention in a C kernel.

Decoding is where the torch path loses on CPU: it gathers every sequence's
history into a dense copy (a read and a write of the whole context) before
two batched matmuls read it again. The kernel in ``cpu_kernels`` reads each
K/V row once, in place through the block table, for all query heads of its
KV head. Prefill keeps SDPA's flash kernel, which is already fused. Norms,
the gated activation and rotary go through fused C kernels too (``ops``), and
so do K/V stores (rounded to nearest even into 16-bit caches, as torch does).
Decode-only steps of Llama-family models skip all of this: the model runner
runs them in one C call (``engine.decode_stack``) on the same kernels.
"""

from __future__ import annotations

import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention.base import AttentionMetadata
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend
from candle_agents.engine.layers.ops import CpuKernelOps, rows_of_heads


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    ops = CpuKernelOps()

    def _prepare_decode(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:
        pass  # the kernel walks the block tables itself

    def store_kv(self, key, value, k_cache, v_cache, meta: AttentionMetadata) -> None:
        slots = meta.slot_mapping
        if (
            key.dtype == value.dtype == torch.float32
            and rows_of_heads(key)
            and rows_of_heads(value)
            and k_cache.dtype == v_cache.dtype
            and k_cache.dtype in cpu_kernels.CACHE_TYPES
            and k_cache.is_contiguous()
            and v_cache.is_contiguous()
            and slots.dtype == torch.int64
            and slots.is_contiguous()
        ):
            cpu_kernels.store_kv(key, value, k_cache, v_cache, slots)
        else:
            super().store_kv(key, value, k_cache, v_cache, meta)

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, softcap=None):
        nd = meta.num_decodes
        out = cpu_kernels.paged_decode_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables[:nd],
            meta.seq_lens[:nd],
            scale,
            window=meta.window,
            softcap=softcap,
        )
        return out.to(q.dtype)

    @staticmethod
    def supports(device, dtype, head_dim: int) -> bool:
        return (
            device.type == "cpu"
            and str(dtype) in ("torch.float32", "torch.bfloat16", "torch.float16")
            and head_dim <= cpu_kernels.MAX_HEAD_DIM
            and cpu_kernels.available()
        )
