"""Triton kernels over the paged KV cache: store, split-K decode, causal prefill.

The cache of one layer is [num_blocks, kv_heads, block_size, head_dim] (the
torch backend's layout), so one KV head's tokens of a block are contiguous.
Every kernel walks the block table itself; nothing is gathered into a dense
copy first. Softmax runs in base 2 (``exp2``, scale pre-multiplied by
log2(e)) with float32 accumulators whatever the cache dtype.

Decode ("flash decoding"): one program per (sequence, KV head, split). A
program serves every query head of its KV head at once (GQA), so each K/V
row is read once per group; the splits divide a sequence's context, so a
small batch with long contexts still fills the GPU. Each split writes its
normalised partial output and log-sum-exp, and a second kernel merges them.
Split boundaries are computed in the kernel from the sequence's length, so
one launch shape serves any lengths (what a captured CUDA graph needs).

Padding rows are harmless by construction: a slot of -1 stores nothing, a
sequence length of 0 attends to nothing and yields zeros.

Under ``TRITON_INTERPRET=1`` (CPU tests) ``tl.dot`` mishandles bfloat16, so
``UPCAST`` makes the dots run in float32 there.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from candle_agents.engine.platform import interpreting

LOG2E = 1.4426950408889634
# Read once, at import, as triton itself reads it when the kernels are defined.
INTERPRET = interpreting()


@triton.jit
def _store_kv_kernel(
    key,
    value,
    k_cache,
    v_cache,
    slots,
    num_tokens,
    stride_kt,
    stride_vt,
    stride_cb,
    stride_ch,
    stride_ct,
    HEAD_DIM: tl.constexpr,
    ROW: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    # A program stores BLOCK_T tokens, each a row of kv_heads * head_dim values.
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    slot = tl.load(slots + t, mask=t < num_tokens, other=-1)
    j = tl.arange(0, BLOCK_R)
    mask = (slot >= 0)[:, None] & (j < ROW)[None, :]
    blk = tl.where(slot >= 0, slot, 0) // BLOCK_SIZE
    off = tl.where(slot >= 0, slot, 0) % BLOCK_SIZE
    dst = (
        blk[:, None] * stride_cb
        + (j // HEAD_DIM)[None, :] * stride_ch
        + off[:, None] * stride_ct
        + (j % HEAD_DIM)[None, :]
    )
    k = tl.load(key + t[:, None] * stride_kt + j[None, :], mask=mask)
    tl.store(k_cache + dst, k.to(k_cache.dtype.element_ty), mask=mask)
    v = tl.load(value + t[:, None] * stride_vt + j[None, :], mask=mask)
    tl.store(v_cache + dst, v.to(v_cache.dtype.element_ty), mask=mask)


@triton.jit
def _kv_tile(
    k_cache,
    v_cache,
    table,
    pos,
    valid,
    head_base,
    d,
    d_mask,
    stride_cb,
    stride_ct,
    BLOCK_SIZE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """K and V of positions ``pos`` of one KV head, through the block table."""
    blk = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0)
    rows = blk[:, None] * stride_cb + head_base + (pos % BLOCK_SIZE)[:, None] * stride_ct
    mask = valid[:, None] & d_mask[None, :]
    k = tl.load(k_cache + rows + d[None, :], mask=mask, other=0.0)
    v = tl.load(v_cache + rows + d[None, :], mask=mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit
def _softmax_step(qv, k, v, visible, m_i, l_i, acc, scale_log2, PRECISION: tl.constexpr):
    """One K/V tile of an online softmax: new running max, sum and rescaled output."""
    s = tl.dot(qv, tl.trans(k), input_precision=PRECISION) * scale_log2
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _decode_split_kernel(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    out,
    o_part,
    lse_part,
    stride_qb,
    stride_qh,
    stride_cb,
    stride_ch,
    stride_ct,
    stride_bt,
    stride_ob,
    stride_oh,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + b).to(tl.int32)
    # Whole tiles per split, so that only a sequence's last tile is partial.
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    qv = tl.load(
        q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        qv = qv.to(tl.float32)
    table = block_tables + b * stride_bt
    head_base = kvh * stride_ch

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + n
        valid = pos < end
        k, v = _kv_tile(
            k_cache, v_cache, table, pos, valid, head_base, d, d_mask, stride_cb, stride_ct,
            BLOCK_SIZE=BLOCK_SIZE, UPCAST=UPCAST,
        )  # fmt: skip
        m_i, l_i, acc = _softmax_step(
            qv, k, v, valid[None, :], m_i, l_i, acc, scale_log2, PRECISION=PRECISION
        )

    has = l_i > 0.0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    o_mask = g_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        dst = out + b * stride_ob + heads[:, None] * stride_oh + d[None, :]
        tl.store(dst, o.to(out.dtype.element_ty), mask=o_mask)
    else:
        dst = o_part + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + d[None, :]
        tl.store(dst, o, mask=o_mask)
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(lse_part + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    o_part,
    lse_part,
    out,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < NUM_SPLITS
    lse = tl.load(lse_part + b * stride_lb + h * stride_lh + s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    # Empty splits (and empty sequences) carry -inf: weight 0, never NaN.
    w = tl.where(lse > float("-inf"), tl.exp2(lse - tl.where(m > float("-inf"), m, 0.0)), 0.0)
    parts = tl.load(
        o_part + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
        mask=s_mask[:, None] & (d < HEAD_DIM)[None, :],
        other=0.0,
    )
    total = tl.sum(w, 0)
    o = tl.sum(parts * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out + b * stride_ob + h * stride_oh + d, o.to(out.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def _prefill_kernel(
    q,
    k_cache,
    v_cache,
    block_tables,
    query_start,
    query_lens,
    seq_lens,
    out,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_ch,
    stride_ct,
    stride_bt,
    stride_ot,
    stride_oh,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    i = tl.program_id(2)
    qlen = tl.load(query_lens + i).to(tl.int32)
    if tile * BLOCK_M < qlen:
        qstart = tl.load(query_start + i)
        seq_len = tl.load(seq_lens + i).to(tl.int32)
        context = seq_len - qlen  # tokens already in the cache before this chunk
        m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        m_mask = m < qlen
        d_mask = d < HEAD_DIM
        q_rows = (qstart + m)[:, None]
        qv = tl.load(
            q + q_rows * stride_qt + h * stride_qh + d[None, :],
            mask=m_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        if UPCAST:
            qv = qv.to(tl.float32)
        q_pos = context + m
        table = block_tables + i * stride_bt
        head_base = (h // GROUP) * stride_ch
        # Causal: this tile's last query sees keys up to its own position.
        hi = tl.minimum(seq_len, context + (tile + 1) * BLOCK_M)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(0, hi, BLOCK_N):
            pos = n0 + n
            valid = pos < hi
            k, v = _kv_tile(
                k_cache, v_cache, table, pos, valid, head_base, d, d_mask, stride_cb, stride_ct,
                BLOCK_SIZE=BLOCK_SIZE, UPCAST=UPCAST,
            )  # fmt: skip
            # Key 0 is visible to every row, so after the first tile the max is finite.
            visible = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
            m_i, l_i, acc = _softmax_step(
                qv, k, v, visible, m_i, l_i, acc, scale_log2, PRECISION=PRECISION
            )
        o = acc / l_i[:, None]
        tl.store(
            out + q_rows * stride_ot + h * stride_oh + d[None, :],
            o.to(out.dtype.element_ty),
            mask=m_mask[:, None] & d_mask[None, :],
        )


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _flags(dtype: torch.dtype) -> dict[str, object]:
    upcast = INTERPRET and dtype == torch.bfloat16
    # Dots on float32 inputs in full precision: tf32 would drift from the reference.
    # Half-precision inputs keep the target's default (the field is moot for them).
    return {"UPCAST": upcast, "PRECISION": "ieee" if upcast or dtype == torch.float32 else None}


def store_constants(kv_heads: int, head_dim: int, block_size: int) -> dict[str, object]:
    row = kv_heads * head_dim
    block_r = triton.next_power_of_2(row)
    # About 4K values a program on a GPU; the interpreter pays per program, so more.
    block_t = 64 if INTERPRET else max(1, min(64, 4096 // block_r))
    return {
        "HEAD_DIM": head_dim,
        "ROW": row,
        "BLOCK_T": block_t,
        "BLOCK_R": block_r,
        "BLOCK_SIZE": block_size,
    }


def decode_constants(
    num_heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    num_splits: int,
    dtype: torch.dtype,
) -> dict[str, object]:
    group = num_heads // kv_heads
    return {
        "GROUP": group,
        "HEAD_DIM": head_dim,
        "BLOCK_G": _pow2(group),  # tl.dot needs 16 rows: small groups are padded
        "BLOCK_D": _pow2(head_dim),
        "BLOCK_N": max(16, min(64, block_size * 4)),
        "BLOCK_SIZE": block_size,
        "NUM_SPLITS": num_splits,
        **_flags(dtype),
    }


def merge_constants(head_dim: int, num_splits: int) -> dict[str, object]:
    return {
        "HEAD_DIM": head_dim,
        "BLOCK_D": _pow2(head_dim),
        "NUM_SPLITS": num_splits,
        "BLOCK_S": triton.next_power_of_2(num_splits),
    }


def prefill_constants(
    num_heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    max_query_len: int,
    dtype: torch.dtype,
) -> dict[str, object]:
    # Smaller tiles for wide heads keep the [M, D] accumulator in registers.
    block_m = min(64 if head_dim <= 64 else 32, _pow2(max_query_len))
    return {
        "GROUP": num_heads // kv_heads,
        "HEAD_DIM": head_dim,
        "BLOCK_D": _pow2(head_dim),
        "BLOCK_M": block_m,
        "BLOCK_N": max(16, min(64, block_size * 2)),
        "BLOCK_SIZE": block_size,
        **_flags(dtype),
    }


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``key``/``value`` [tokens, kv_heads, head_dim] to their slots; slot -1 skips."""
    tokens, kv_heads, head_dim = key.shape
    if tokens == 0:
        return
    for x in (key, value):
        # Each token's heads must be one contiguous row (a column slice of QKV is).
        assert x.stride(2) == 1 and x.stride(1) == head_dim, "key/value rows must be dense"
    assert k_cache.stride() == v_cache.stride()
    consts = store_constants(kv_heads, head_dim, k_cache.shape[2])
    _store_kv_kernel[(triton.cdiv(tokens, consts["BLOCK_T"]),)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        tokens,
        key.stride(0),
        value.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        **consts,
    )


def decode_splits(batch: int, kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """How many splits fill ``num_sms`` with about two programs each; a power of two.

    Splits shorter than 256 tokens cost more in the merge than they win.
    """
    want = -(-2 * num_sms // max(1, batch * kv_heads))
    most = max(1, max_seq_len // 256)
    return min(64, triton.next_power_of_2(max(1, min(want, most))))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per sequence over its paged history: [B, H, D] -> [B, H, D]."""
    batch, num_heads, head_dim = q.shape
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    assert q.stride(2) == 1 and k_cache.stride() == v_cache.stride()
    block_d = _pow2(head_dim)
    if num_splits > 1:
        o_part = torch.empty(
            (batch, num_heads, num_splits, block_d), dtype=torch.float32, device=q.device
        )
        lse_part = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        o_part = lse_part = out  # unused: the kernel writes ``out`` directly
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        out,
        o_part,
        lse_part,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        o_part.stride(0),
        o_part.stride(1),
        o_part.stride(2),
        lse_part.stride(0),
        lse_part.stride(1),
        scale * LOG2E,
        **decode_constants(num_heads, kv_heads, head_dim, block_size, num_splits, k_cache.dtype),
    )
    if num_splits > 1:
        _decode_merge_kernel[(batch, num_heads)](
            o_part,
            lse_part,
            out,
            o_part.stride(0),
            o_part.stride(1),
            o_part.stride(2),
            lse_part.stride(0),
            lse_part.stride(1),
            out.stride(0),
            out.stride(1),
            **merge_constants(head_dim, num_splits),
        )
    return out


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start: torch.Tensor,
    query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """Causal attention of prefill chunks over the cache (their own K/V already stored).

    ``q``/``out`` are [tokens, heads, head_dim]; sequence ``i``'s queries are
    rows ``query_start[i]:+query_lens[i]``, the last of its ``seq_lens[i]``
    positions, so chunked prefill and prefix-cache hits need nothing special.
    """
    num_seqs = query_lens.shape[0]
    if num_seqs == 0:
        return out
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(2) == 1 and out.stride(2) == 1 and k_cache.stride() == v_cache.stride()
    consts = prefill_constants(num_heads, kv_heads, head_dim, block_size, max_query_len, q.dtype)
    grid = (math.ceil(max_query_len / consts["BLOCK_M"]), num_heads, num_seqs)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start,
        query_lens,
        seq_lens,
        out,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        scale * LOG2E,
        **consts,
    )
    return out
