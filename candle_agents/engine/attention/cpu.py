"""The CPU backend: the torch reference, with decode attention in a C kernel.

Decoding is where the torch path loses on CPU: it gathers every sequence's
history into a dense copy (a read and a write of the whole context) before
two batched matmuls read it again. The kernel in ``cpu_kernels`` reads each
K/V row once, in place through the block table, for all query heads of its
KV head. Prefill keeps SDPA's flash kernel, which is already fused. Norms,
the gated activation and rotary go through fused C kernels too (``ops``).
"""

from __future__ import annotations

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention.base import AttentionMetadata
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend
from candle_agents.engine.layers.ops import CpuKernelOps


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    ops = CpuKernelOps()

    def _prepare_decode(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:
        pass  # the kernel walks the block tables itself

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        nd = meta.num_decodes
        out = cpu_kernels.paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], scale
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
