"""The attention JIT kernels over the paged KV cache: split-K decode, its merge, prefill.

``triton_kernels`` launches them and documents what they compute (block
tables, splits, windows, soft-capping); this module only holds the kernels
and the tile helpers they share, so that each module stays readable.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _tanh(x):
    # 1 - 2 / (e^2x + 1): exact limits of +-1 where e^2x overflows or vanishes.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def _softmax_step(
    qv,
    k,
    v,
    visible,
    m_i,
    l_i,
    acc,
    scale_log2,
    softcap_log2,
    HAS_SOFTCAP: tl.constexpr,
    MAY_BE_EMPTY: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One K/V tile of an online softmax: new running max, sum and rescaled output.

    ``MAY_BE_EMPTY``: a row may see no key of this tile while its running max
    is still -inf (windows); the max is then taken as 0 so that no -inf - -inf
    makes a NaN.
    """
    s = tl.dot(qv, tl.trans(k), input_precision=PRECISION) * scale_log2
    if HAS_SOFTCAP:
        s = softcap_log2 * _tanh(s / softcap_log2)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MAY_BE_EMPTY:
        m_new = tl.where(m_new > float("-inf"), m_new, 0.0)
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
    window,
    softcap_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + b).to(tl.int32)
    # The query (position seq_len - 1) sees positions [lo, seq_len).
    lo = tl.maximum(seq_len - window, 0) if HAS_WINDOW else 0
    # Whole tiles per split, so that only a sequence's last tile is partial.
    split_len = tl.cdiv(tl.cdiv(seq_len - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * split_len
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
        # Every tile holds a visible key (n0 < end): no empty rows.
        m_i, l_i, acc = _softmax_step(
            qv, k, v, valid[None, :], m_i, l_i, acc, scale_log2, softcap_log2,
            HAS_SOFTCAP=HAS_SOFTCAP, MAY_BE_EMPTY=False, PRECISION=PRECISION,
        )  # fmt: skip

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
    window,
    softcap_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
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
        # Causal: this tile's last query sees keys up to its own position;
        # with a window, its first query sees none before context + tile * BLOCK_M - window.
        hi = tl.minimum(seq_len, context + (tile + 1) * BLOCK_M)
        lo = tl.maximum(context + tile * BLOCK_M - window + 1, 0) if HAS_WINDOW else 0

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            pos = n0 + n
            valid = pos < hi
            k, v = _kv_tile(
                k_cache, v_cache, table, pos, valid, head_base, d, d_mask, stride_cb, stride_ct,
                BLOCK_SIZE=BLOCK_SIZE, UPCAST=UPCAST,
            )  # fmt: skip
            visible = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
            if HAS_WINDOW:
                visible = visible & (pos[None, :] > q_pos[:, None] - window)
            # Without a window key 0 is visible to every row, so after the first
            # tile the max is finite; with one, a row's first tiles may show it nothing.
            m_i, l_i, acc = _softmax_step(
                qv, k, v, visible, m_i, l_i, acc, scale_log2, softcap_log2,
                HAS_SOFTCAP=HAS_SOFTCAP, MAY_BE_EMPTY=HAS_WINDOW, PRECISION=PRECISION,
            )  # fmt: skip
        if HAS_WINDOW:  # padding rows (past qlen) may have seen nothing: no 0 / 0
            l_i = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_i[:, None]
        tl.store(
            out + q_rows * stride_ot + h * stride_oh + d[None, :],
            o.to(out.dtype.element_ty),
            mask=m_mask[:, None] & d_mask[None, :],
        )
