"""Reference attention in plain torch: runs on any device, handles any batch mix.

The cache is laid out [num_blocks, kv_heads, block_size, head_dim], so that
one precomputed row index (shared by all layers of a step) gathers every
decoding sequence's history straight into [batch, kv_heads, length, head_dim]:
the score and value matmuls then read it without a transposing copy, and GQA
groups the query heads of each KV head into one batched matmul instead of
repeating K/V. On CPU this is 2-5x faster than SDPA (see ENGINE_NOTES.md).
Prefill chunks go one sequence at a time through SDPA, on the fresh K/V when
the sequence has no history, else on its gathered blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from candle_agents.engine.attention.base import AttentionBackend, AttentionMetadata


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def kv_cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
        return (num_blocks, num_kv_heads, block_size, head_dim)

    def prepare(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:
        bs = meta.block_size
        dev = meta.slot_mapping.device
        heads = torch.arange(num_kv_heads, device=dev)
        # Row of (block, head, offset) in the cache viewed as [rows, head_dim].
        slots = meta.slot_mapping
        meta.extra["store_rows"] = (
            ((slots // bs)[:, None] * num_kv_heads + heads[None, :]) * bs + (slots % bs)[:, None]
        ).reshape(-1)
        if meta.num_decodes:
            self._prepare_decode(meta, num_kv_heads, head_dim)

    def _prepare_decode(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:
        bs, nd = meta.block_size, meta.num_decodes
        dev = meta.slot_mapping.device
        heads = torch.arange(num_kv_heads, device=dev)
        lens = meta.seq_lens[:nd, None]
        if meta.window is None:
            length = -(-meta.max_decode_seq_len // bs) * bs
            pos = torch.arange(length, device=dev)[None, :].expand(nd, length)
            valid = pos < lens
        else:
            # Only the window: each sequence's last ``window`` positions, so the
            # gather costs O(window) however long the context.
            length = min(meta.window, meta.max_decode_seq_len)
            first = (lens - meta.window).clamp(min=0)
            j = torch.arange(length, device=dev)[None, :]
            valid = j < lens - first
            pos = torch.minimum(first + j, lens - 1)  # rows past the end only pad
        blocks = meta.block_tables[:nd].gather(1, pos // bs)  # [nd, L]
        rows = (blocks[:, None, :] * num_kv_heads + heads[None, :, None]) * bs + (pos % bs)[:, None]
        meta.extra["decode_rows"] = rows.reshape(-1)
        meta.extra["decode_shape"] = (nd, num_kv_heads, length, head_dim)
        meta.extra["decode_valid"] = valid[:, None, None]

    def store_kv(self, key, value, k_cache, v_cache, meta: AttentionMetadata) -> None:
        rows = meta.extra["store_rows"]
        d = k_cache.shape[-1]
        k_cache.view(-1, d).index_copy_(0, rows, key.reshape(-1, d).to(k_cache.dtype))
        v_cache.view(-1, d).index_copy_(0, rows, value.reshape(-1, d).to(v_cache.dtype))

    def attend(
        self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale, softcap=None
    ):
        out = torch.empty_like(query)
        nd = meta.num_decode_tokens
        if nd:
            out[:nd] = self._decode(query[:nd], k_cache, v_cache, meta, scale, softcap)
        for i in range(meta.num_decodes, len(meta.seq_lens_cpu)):
            start = meta.query_start_cpu[i]
            qlen = meta.query_lens_cpu[i]
            seq_len = meta.seq_lens_cpu[i]
            q = query[start : start + qlen]
            if seq_len == qlen:
                k, v = key[start : start + qlen], value[start : start + qlen]
                k, v = k.transpose(0, 1), v.transpose(0, 1)
                first = 0
            else:
                # Blocks wholly before the chunk's first window are never read.
                first = _first_key(seq_len, qlen, meta.window) // meta.block_size
                first *= meta.block_size
                k, v = _gather_one(k_cache, v_cache, meta.block_tables[i], seq_len, first)
            out[start : start + qlen] = _prefill(
                q, k, v, seq_len, scale, meta.window, softcap, first
            )
        return out

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, softcap):
        return _paged_decode(q, k_cache, v_cache, meta, scale, softcap)


def _first_key(seq_len: int, qlen: int, window: int | None) -> int:
    """The first key position any query of a chunk (the last ``qlen`` positions) sees."""
    return 0 if window is None else max(0, seq_len - qlen - window + 1)


def _gather_one(k_cache, v_cache, block_table, seq_len: int, start: int = 0):
    """Positions ``start`` (a block boundary) to ``seq_len`` of one sequence's history,
    as [kv_heads, seq_len - start, head_dim]."""
    bs = k_cache.shape[2]
    blocks = block_table[start // bs : -(-seq_len // bs)]
    k = k_cache[blocks].transpose(0, 1).flatten(1, 2)[:, : seq_len - start]
    v = v_cache[blocks].transpose(0, 1).flatten(1, 2)[:, : seq_len - start]
    return k, v


def _prefill(
    q,
    k,
    v,
    seq_len: int,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    start: int = 0,
) -> torch.Tensor:
    """SDPA for one sequence's chunk: queries are its last ``len(q)`` positions.

    ``k``/``v`` are [kv_heads, seq_len - start, head_dim], keys from position
    ``start``. The inputs get a batch axis because on CPU only 4-D inputs
    reach the flash kernel (3-D ones fall back to the unfused math path, 2-3x
    slower with GQA). Keys before the chunk's first window are cut off before
    SDPA sees them.
    """
    qlen = q.shape[0]
    first = _first_key(seq_len, qlen, window)
    if first > start:
        k, v = k[:, first - start :], v[:, first - start :]
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    qt, k, v = q.transpose(0, 1)[None], k[None], v[None]
    gqa = qt.shape[1] != k.shape[1]
    if softcap is not None:
        mask = _chunk_mask(seq_len, qlen, first, window, q.device)
        o = _softcapped(qt, k, v, mask, scale, softcap)
    elif seq_len == qlen and window is None:
        o = F.scaled_dot_product_attention(qt, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = _chunk_mask(seq_len, qlen, first, window, q.device)
        o = F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o[0].transpose(0, 1)


def _chunk_mask(seq_len: int, qlen: int, first: int, window: int | None, device) -> torch.Tensor:
    """[qlen, seq_len - first] bool: query i (position seq_len - qlen + i) sees key first + j."""
    qpos = torch.arange(seq_len - qlen, seq_len, device=device)[:, None]
    kpos = torch.arange(first, seq_len, device=device)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    return mask


def _softcapped(qt, k, v, mask, scale: float, softcap: float) -> torch.Tensor:
    """Attention with capped scores (SDPA cannot cap): [1, H, q, D] -> [1, H, q, D]."""
    heads, kv_heads = qt.shape[1], k.shape[1]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.matmul(qt, k.transpose(-1, -2)).float() * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores.masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def _paged_decode(
    q, k_cache, v_cache, meta: AttentionMetadata, scale: float, softcap: float | None = None
) -> torch.Tensor:
    """One query per sequence over its paged history: [B, H, D] -> [B, H, D]."""
    b, num_heads, head_dim = q.shape
    shape = meta.extra["decode_shape"]
    rows = meta.extra["decode_rows"]
    k = k_cache.view(-1, head_dim).index_select(0, rows).view(shape)  # [B, Hkv, L, D]
    v = v_cache.view(-1, head_dim).index_select(0, rows).view(shape)
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    qg = q.view(b, shape[1], num_heads // shape[1], head_dim)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, Hkv, G, L]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores.masked_fill_(~meta.extra["decode_valid"], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(b, num_heads, head_dim)
