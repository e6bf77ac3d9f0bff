"""The triton backend: paged attention kernels for CUDA (and the interpreter on CPU).

Decode tokens go through the split-K kernel, prefill chunks (with or without
cached history) through the causal prefill kernel, both reading the paged
cache in place and honouring a layer's sliding window and score soft-cap.
``prepare`` does the per-step host work once for all layers; for decode it
touches no device memory, so a captured CUDA graph replays the decode kernels
with whatever ``meta.extra["num_splits"]`` held at capture.
"""

from __future__ import annotations

import torch

from candle_agents.engine.attention.base import AttentionBackend, AttentionMetadata
from candle_agents.engine.platform import interpreting, triton_available

MAX_HEAD_DIM = 256


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def __init__(self, device: torch.device) -> None:
        # Imported here: the kernels are compiled (or interpreted) per the
        # environment at import, and CPU-only installs never need them.
        from candle_agents.engine.attention import triton_kernels
        from candle_agents.engine.layers.triton_ops import TritonOps

        self.kernels = triton_kernels
        self.ops = TritonOps()
        if device.type == "cuda":
            self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            self.num_sms = 2  # the interpreter: few programs, fast tests

    def kv_cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
        return (num_blocks, num_kv_heads, block_size, head_dim)

    def prepare(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:
        nd = meta.num_decodes
        if nd:
            # Split what a query reads: at most its window.
            attended = meta.max_decode_seq_len
            if meta.window is not None:
                attended = min(attended, meta.window)
            meta.extra["num_splits"] = self.decode_splits(nd, num_kv_heads, attended)
        if meta.num_prefills:
            dev = meta.seq_lens.device
            qlens = meta.query_lens_cpu[nd:]
            starts = meta.query_start_cpu[nd:-1]
            meta.extra["prefill"] = (
                torch.tensor(starts, dtype=torch.long).to(dev, non_blocking=True),
                torch.tensor(qlens, dtype=torch.long).to(dev, non_blocking=True),
                max(qlens),
            )

    def decode_splits(self, batch: int, num_kv_heads: int, max_seq_len: int) -> int:
        return self.kernels.decode_splits(batch, num_kv_heads, max_seq_len, self.num_sms)

    def store_kv(self, key, value, k_cache, v_cache, meta: AttentionMetadata) -> None:
        self.kernels.store_kv(key, value, k_cache, v_cache, meta.slot_mapping)

    def attend(
        self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale, softcap=None
    ):
        out = torch.empty_like(query)
        nd = meta.num_decode_tokens
        if nd:
            self.kernels.paged_decode(
                query[:nd],
                k_cache,
                v_cache,
                meta.block_tables[:nd],
                meta.seq_lens[:nd],
                scale,
                meta.extra["num_splits"],
                out=out[:nd],
                window=meta.window,
                softcap=softcap,
            )
        if meta.num_prefills:
            starts, qlens, max_qlen = meta.extra["prefill"]
            self.kernels.paged_prefill(
                query,
                k_cache,
                v_cache,
                meta.block_tables[meta.num_decodes :],
                starts,
                qlens,
                meta.seq_lens[meta.num_decodes :],
                max_qlen,
                scale,
                out,
                window=meta.window,
                softcap=softcap,
            )
        return out

    @staticmethod
    def supports(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
        return (
            (device.type == "cuda" or (device.type == "cpu" and interpreting()))
            and dtype in (torch.float16, torch.bfloat16, torch.float32)
            and head_dim <= MAX_HEAD_DIM
            and triton_available()
        )
