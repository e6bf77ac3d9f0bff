"""Reference attention in plain torch: runs on any device, handles any batch mix.

Decodes are batched: the sequences' blocks are gathered into one padded tensor
and queries are grouped by KV head, so GQA costs one batched matmul instead of
repeating K/V (measured 2-5x faster than SDPA on CPU, see ENGINE_NOTES.md).
Prefill chunks go one sequence at a time through SDPA, on the fresh K/V when
the sequence has no history, else on its gathered blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from candle_agents.engine.attention.base import AttentionBackend, AttentionMetadata


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def store_kv(self, key, value, k_cache, v_cache, meta: AttentionMetadata) -> None:
        flat_k = k_cache.view(-1, k_cache.shape[-2], k_cache.shape[-1])
        flat_v = v_cache.view(-1, v_cache.shape[-2], v_cache.shape[-1])
        flat_k.index_copy_(0, meta.slot_mapping, key.to(k_cache.dtype))
        flat_v.index_copy_(0, meta.slot_mapping, value.to(v_cache.dtype))

    def attend(self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        out = torch.empty_like(query)
        nd = meta.num_decode_tokens
        if nd:
            out[:nd] = _paged_decode(query[:nd], k_cache, v_cache, meta, scale)
        for i in range(meta.num_decodes, len(meta.seq_lens_cpu)):
            start = meta.query_start_cpu[i]
            qlen = meta.query_lens_cpu[i]
            seq_len = meta.seq_lens_cpu[i]
            q = query[start : start + qlen]
            if seq_len == qlen:
                k, v = key[start : start + qlen], value[start : start + qlen]
            else:
                k, v = _gather_one(k_cache, v_cache, meta.block_tables[i], seq_len)
            out[start : start + qlen] = _prefill(q, k, v, seq_len, scale)
        return out


def _gather_one(k_cache, v_cache, block_table, seq_len: int):
    nblocks = -(-seq_len // k_cache.shape[1])
    blocks = block_table[:nblocks]
    k = k_cache[blocks].flatten(0, 1)[:seq_len]
    v = v_cache[blocks].flatten(0, 1)[:seq_len]
    return k, v


def _prefill(q, k, v, seq_len: int, scale: float) -> torch.Tensor:
    """SDPA for one sequence's chunk: queries are its last ``len(q)`` positions."""
    qlen = q.shape[0]
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    qt, kt, vt = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    gqa = qt.shape[0] != kt.shape[0]
    if seq_len == qlen:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        # Query i sits at position seq_len - qlen + i and sees keys up to it.
        qpos = torch.arange(seq_len - qlen, seq_len, device=q.device)[:, None]
        mask = torch.arange(seq_len, device=q.device)[None, :] <= qpos
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(0, 1)


def _paged_decode(q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One query per sequence over its paged history: [B, H, D] -> [B, H, D]."""
    b, num_heads, head_dim = q.shape
    block_size, num_kv = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv
    nblocks = -(-meta.max_decode_seq_len // block_size)
    tables = meta.block_tables[:b, :nblocks]
    # [B, nblocks, bs, Hkv, D] -> [B, Hkv, L, D]
    k = k_cache[tables].flatten(1, 2).transpose(1, 2)
    v = v_cache[tables].flatten(1, 2).transpose(1, 2)
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    qg = q.view(b, num_kv, group, head_dim)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, Hkv, G, L]
    length = k.shape[2]
    valid = torch.arange(length, device=q.device)[None, :] < meta.seq_lens[:b, None]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(b, num_heads, head_dim)
