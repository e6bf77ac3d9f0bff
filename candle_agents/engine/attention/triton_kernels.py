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

Sliding windows (``HAS_WINDOW``): a query at position p sees keys
``p - window < j <= p``. Decode splits divide only the window's positions and
prefill tiles start their key loop at the first key any of their queries
sees, so blocks before a window are never read (their table entries may be
placeholders) and a long context costs what its window does. Soft-capping
(``HAS_SOFTCAP``, Gemma 2) maps each scaled score s to c * tanh(s / c); in
base 2 that is the same map with c * log2(e), which the launchers pass.
Both are constexpr flags, so the plain kernels compile exactly as before.

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

# The attention kernels live beside this module; their launchers are here.
from candle_agents.engine.attention.triton_paged import (
    _decode_merge_kernel,
    _decode_split_kernel,
    _prefill_kernel,
)
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


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _flags(dtype: torch.dtype) -> dict[str, object]:
    upcast = INTERPRET and dtype == torch.bfloat16
    # Dots on float32 inputs in full precision: tf32 would drift from the reference.
    # Half-precision inputs keep the target's default (the field is moot for them).
    return {"UPCAST": upcast, "PRECISION": "ieee" if upcast or dtype == torch.float32 else None}


def _variant(window: int | None, softcap: float | None) -> dict[str, object]:
    return {"HAS_WINDOW": window is not None, "HAS_SOFTCAP": softcap is not None}


def _window_args(window: int | None, softcap: float | None) -> tuple[int, float]:
    """The kernels' run-time ``window`` and ``softcap_log2`` (unused where the flags are off)."""
    if window is not None and window < 1:
        raise ValueError(f"window={window} must be at least 1")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap={softcap} must be positive")
    return (window or 0), (softcap * LOG2E if softcap is not None else 0.0)


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
    window: int | None = None,
    softcap: float | None = None,
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
        **_variant(window, softcap),
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
    window: int | None = None,
    softcap: float | None = None,
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
        **_variant(window, softcap),
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
    ``max_seq_len`` is the most tokens a query attends to (at most the window).
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
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query per sequence over its paged history: [B, H, D] -> [B, H, D].

    With ``window`` a query sees its sequence's last ``window`` positions; the
    splits divide those. ``softcap`` caps the scaled scores (see the module doc).
    """
    batch, num_heads, head_dim = q.shape
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    assert q.stride(2) == 1 and k_cache.stride() == v_cache.stride()
    window_arg, softcap_arg = _window_args(window, softcap)
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
        window_arg,
        softcap_arg,
        **decode_constants(
            num_heads, kv_heads, head_dim, block_size, num_splits, k_cache.dtype, window, softcap
        ),
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
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of prefill chunks over the cache (their own K/V already stored).

    ``q``/``out`` are [tokens, heads, head_dim]; sequence ``i``'s queries are
    rows ``query_start[i]:+query_lens[i]``, the last of its ``seq_lens[i]``
    positions, so chunked prefill and prefix-cache hits need nothing special.
    ``window`` and ``softcap`` as in ``paged_decode``.
    """
    num_seqs = query_lens.shape[0]
    if num_seqs == 0:
        return out
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(2) == 1 and out.stride(2) == 1 and k_cache.stride() == v_cache.stride()
    window_arg, softcap_arg = _window_args(window, softcap)
    consts = prefill_constants(
        num_heads, kv_heads, head_dim, block_size, max_query_len, q.dtype, window, softcap
    )
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
        window_arg,
        softcap_arg,
        **consts,
    )
    return out
