"""The triton paged-attention kernels against plain-torch references.

On CPU the kernels run in triton's interpreter (``TRITON_INTERPRET=1``, set in
conftest), which pays per program instance, so shapes stay small. With the flag
off and a GPU present the same tests run on CUDA.

References are computed independently in float64 from the very values the
kernels read (inputs already rounded to the cache dtype). Every cache slot that
no sequence owns (unowned blocks, the tail of a partial last block, block 0
that padding table entries point at) is poisoned with NaN, so a kernel that lets
a masked load reach its result fails loudly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch

from candle_agents.engine.attention import triton_kernels as tk
from candle_agents.engine.attention.base import AttentionMetadata
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if not INTERPRET and torch.cuda.is_available() else "cpu"

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: 1e-5, F16: 2e-3, BF16: 2e-2}
SENTINEL = 7.0  # exactly representable in every dtype under test


def test_kernels_run_where_expected():
    assert tk.INTERPRET == INTERPRET
    assert DEVICE == "cuda" or INTERPRET


# --------------------------------------------------------------------------- helpers


def num_blocks_for(length: int, block_size: int) -> int:
    return -(-length // block_size)


def assert_close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(got.double().cpu(), expected, atol=tol, rtol=tol)


@dataclass
class PagedCache:
    """Caches on DEVICE, each sequence owning its own shuffled blocks."""

    k_cache: torch.Tensor  # [num_blocks, kv_heads, block_size, head_dim]
    v_cache: torch.Tensor
    tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with block 0
    seq_lens: torch.Tensor  # [num_seqs] int64
    lens: list[int]


def assign_blocks(lens, block_size, num_blocks, g) -> torch.Tensor:
    """Block tables with distinct blocks in random order; block 0 is never owned."""
    width = max(1, *(num_blocks_for(n, block_size) for n in lens)) + 1  # a spare column
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.zeros(len(lens), width, dtype=torch.long)
    for i, n in enumerate(lens):
        for j in range(num_blocks_for(n, block_size)):
            tables[i, j] = perm.pop()
    return tables


def owned_slots(tables, lens, num_blocks, block_size) -> torch.Tensor:
    """[num_blocks, block_size] bool: the slots holding some sequence's tokens."""
    owned = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    for i, n in enumerate(lens):
        for j in range(num_blocks_for(n, block_size)):
            owned[tables[i, j], : min(block_size, n - j * block_size)] = True
    return owned


def make_cache(lens, kv_heads, head_dim, block_size, dtype, seed=0, poison=True) -> PagedCache:
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(num_blocks_for(n, block_size) for n in lens) + 4
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k_cache = torch.randn(shape, generator=g)
    v_cache = torch.randn(shape, generator=g)
    tables = assign_blocks(lens, block_size, num_blocks, g)
    if poison:
        unowned = ~owned_slots(tables, lens, num_blocks, block_size)[:, None, :, None]
        k_cache.masked_fill_(unowned, float("nan"))
        v_cache.masked_fill_(unowned, float("nan"))
    return PagedCache(
        k_cache.to(dtype).to(DEVICE),
        v_cache.to(dtype).to(DEVICE),
        tables.to(DEVICE),
        torch.tensor(lens, dtype=torch.long, device=DEVICE),
        list(lens),
    )


def gather_history(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's first ``length`` cached tokens as float64 [kv_heads, length, head_dim]."""
    blocks = table_row[: num_blocks_for(length, cache.shape[2])].cpu()
    return cache.cpu()[blocks].transpose(0, 1).flatten(1, 2)[:, :length].double()


def reference_attention(q, k, v, q_pos, scale) -> torch.Tensor:
    """Masked softmax attention in float64: q [M, H, D], k/v [Hkv, L, D] -> [M, H, D].

    Query m sees keys at positions <= q_pos[m]; GQA by repeating K/V heads.
    """
    group = q.shape[1] // k.shape[0]
    k = k.repeat_interleave(group, dim=0)
    v = v.repeat_interleave(group, dim=0)
    scores = torch.einsum("mhd,hld->hml", q.double().cpu(), k) * scale
    visible = torch.arange(k.shape[1])[None, :] <= q_pos[:, None]
    probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return torch.einsum("hml,hld->mhd", probs, v)


def reference_decode(q, cache: PagedCache, scale) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, n in enumerate(cache.lens):
        if n:
            k = gather_history(cache.k_cache, cache.tables[i], n)
            v = gather_history(cache.v_cache, cache.tables[i], n)
            out[i] = reference_attention(q[i : i + 1], k, v, torch.tensor([n - 1]), scale)[0]
    return out


def random_tensor(shape, dtype, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


# --------------------------------------------------------------------------- store_kv


def random_slots(tokens, num_blocks, block_size, num_padding, g) -> torch.Tensor:
    """Distinct slots in random order, ``num_padding`` random tokens set to -1."""
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    slots[torch.randperm(tokens, generator=g)[:num_padding]] = -1
    return slots


def expected_store(cache: torch.Tensor, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The cache after storing ``x`` [tokens, kv_heads, head_dim], by torch indexing."""
    out = cache.clone().cpu()
    keep = slots >= 0
    bs = cache.shape[2]
    s = slots[keep]
    out[s // bs, :, s % bs, :] = x.cpu()[keep].to(cache.dtype)
    return out


def truncate_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16 rounding toward zero (dropping the low 16 bits)."""
    return (x.float().cpu().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


def assert_stored(cache: torch.Tensor, expected: torch.Tensor, truncated: torch.Tensor) -> None:
    """``cache`` equals ``expected`` exactly.

    Exception: triton's interpreter converts float32 to bfloat16 by truncation
    (``fp_downcast_rounding`` is ignored there) where torch and the GPU round to
    nearest even, so under the interpreter each value may instead equal
    ``truncated`` (``expected`` built from truncated inputs): one ulp at most.
    """
    got = cache.cpu()
    if INTERPRET and cache.dtype == BF16:
        assert ((got == expected) | (got == truncated)).all()
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "src_dtype,cache_dtype,kv_heads,head_dim,block_size,tokens,num_padding",
    [
        pytest.param(F32, F32, 2, 64, 16, 70, 5, id="f32-bs16-2x64"),
        pytest.param(F32, F16, 3, 64, 32, 90, 7, id="f32-into-f16-bs32-3x64"),
        pytest.param(F32, BF16, 1, 128, 16, 40, 3, id="f32-into-bf16-bs16-1x128"),
        pytest.param(F16, F16, 2, 128, 32, 33, 0, id="f16-bs32-2x128"),
        pytest.param(BF16, BF16, 4, 32, 16, 65, 1, id="bf16-bs16-4x32"),
        pytest.param(F32, F32, 2, 64, 16, 20, 20, id="all-padding"),
    ],
)
def test_store_kv_writes_exactly_the_addressed_slots(
    src_dtype, cache_dtype, kv_heads, head_dim, block_size, tokens, num_padding
):
    g = torch.Generator().manual_seed(1)
    num_blocks = num_blocks_for(tokens, block_size) + 3
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k_cache = torch.randn(shape, generator=g).to(cache_dtype).to(DEVICE)
    v_cache = torch.randn(shape, generator=g).to(cache_dtype).to(DEVICE)
    key = random_tensor((tokens, kv_heads, head_dim), src_dtype, seed=2)
    value = random_tensor((tokens, kv_heads, head_dim), src_dtype, seed=3)
    slots = random_slots(tokens, num_blocks, block_size, num_padding, g)
    want_k = expected_store(k_cache, key, slots)
    want_v = expected_store(v_cache, value, slots)
    trunc_k = expected_store(k_cache, truncate_to_bf16(key), slots)
    trunc_v = expected_store(v_cache, truncate_to_bf16(value), slots)

    tk.store_kv(key, value, k_cache, v_cache, slots.to(DEVICE))

    assert k_cache.dtype == cache_dtype
    assert_stored(k_cache, want_k, trunc_k)
    assert_stored(v_cache, want_v, trunc_v)


@pytest.mark.parametrize("block_size", [16, 32], ids=["bs16", "bs32"])
def test_store_kv_from_a_column_slice_of_fused_qkv(block_size):
    heads, kv_heads, head_dim, tokens = 6, 2, 64, 37
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(DEVICE)
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    key = qkv[:, q_width : q_width + kv_width].view(tokens, kv_heads, head_dim)
    value = qkv[:, q_width + kv_width :].view(tokens, kv_heads, head_dim)
    assert not key.is_contiguous() and not value.is_contiguous()
    num_blocks = num_blocks_for(tokens, block_size) + 2
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k_cache = torch.full(shape, SENTINEL, device=DEVICE)
    v_cache = torch.full(shape, SENTINEL, device=DEVICE)
    slots = random_slots(tokens, num_blocks, block_size, 4, g)
    want_k = expected_store(k_cache, key, slots)
    want_v = expected_store(v_cache, value, slots)

    tk.store_kv(key, value, k_cache, v_cache, slots.to(DEVICE))

    assert torch.equal(k_cache.cpu(), want_k)
    assert torch.equal(v_cache.cpu(), want_v)


# --------------------------------------------------------------------------- paged_decode


@pytest.mark.parametrize(
    "dtype,head_dim,block_size,heads,kv_heads,lens,num_splits",
    [
        pytest.param(F32, 64, 16, 2, 2, [1, 17, 32, 45], 1, id="f32-d64-bs16-mha-split1"),
        pytest.param(F32, 128, 32, 6, 2, [7, 64, 100], 3, id="f32-d128-bs32-gqa3-split3"),
        pytest.param(F32, 64, 16, 8, 1, [0, 33, 130, 1], 4, id="f32-d64-bs16-gqa8-split4-pad"),
        pytest.param(F16, 128, 16, 3, 1, [48, 5, 99], 4, id="f16-d128-bs16-gqa3-split4"),
        pytest.param(F16, 64, 32, 8, 1, [31, 96, 0], 1, id="f16-d64-bs32-gqa8-split1-pad"),
        pytest.param(BF16, 64, 16, 6, 2, [16, 77, 1], 3, id="bf16-d64-bs16-gqa3-split3"),
        pytest.param(BF16, 128, 32, 2, 2, [120, 9], 4, id="bf16-d128-bs32-mha-split4"),
        # BLOCK_N is 64 here: one tile per sequence, most splits empty.
        pytest.param(F32, 64, 16, 3, 1, [5, 20, 64], 16, id="f32-splits16-over-tiles"),
        pytest.param(F32, 64, 16, 2, 1, [150, 3], 7, id="f32-splits7-some-empty"),
    ],
)
def test_decode_matches_reference(dtype, head_dim, block_size, heads, kv_heads, lens, num_splits):
    cache = make_cache(lens, kv_heads, head_dim, block_size, dtype)
    q = random_tensor((len(lens), heads, head_dim), dtype, seed=5)
    scale = head_dim**-0.5

    got = tk.paged_decode(
        q, cache.k_cache, cache.v_cache, cache.tables, cache.seq_lens, scale, num_splits
    )

    assert got.shape == q.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    assert_close(got, reference_decode(q, cache, scale), dtype)
    for i, n in enumerate(lens):
        if n == 0:
            assert torch.equal(got[i].cpu(), torch.zeros(heads, head_dim, dtype=dtype))


@pytest.mark.parametrize("num_splits", [1, 3], ids=["split1", "split3"])
def test_decode_empty_sequences_give_exact_zeros(num_splits):
    lens = [0, 0]
    cache = make_cache(lens, 1, 64, 16, F32)
    q = random_tensor((2, 4, 64), F32, seed=6)
    out = torch.full_like(q, SENTINEL)

    tk.paged_decode(
        q, cache.k_cache, cache.v_cache, cache.tables, cache.seq_lens, 0.125, num_splits, out=out
    )

    assert torch.equal(out, torch.zeros_like(q))


@pytest.mark.parametrize(
    "dtype,lens",
    [
        pytest.param(F32, [140, 64, 1, 97], id="f32"),
        pytest.param(F16, [130, 33], id="f16"),
    ],
)
def test_decode_split_counts_agree(dtype, lens):
    cache = make_cache(lens, 2, 64, 16, dtype)
    q = random_tensor((len(lens), 4, 64), dtype, seed=7)
    args = (q, cache.k_cache, cache.v_cache, cache.tables, cache.seq_lens, 0.125)

    one = tk.paged_decode(*args, num_splits=1)
    four = tk.paged_decode(*args, num_splits=4)

    torch.testing.assert_close(four, one, atol=TOL[dtype], rtol=TOL[dtype])


def test_decode_writes_only_into_the_given_out_view():
    lens = [40, 9]
    cache = make_cache(lens, 2, 64, 32, F32)
    q = random_tensor((2, 4, 64), F32, seed=8)
    buffer = torch.full((5, 4, 64), SENTINEL, device=DEVICE)

    got = tk.paged_decode(
        q, cache.k_cache, cache.v_cache, cache.tables, cache.seq_lens, 0.125, 2, out=buffer[:2]
    )

    assert got.data_ptr() == buffer.data_ptr()
    assert_close(buffer[:2], reference_decode(q, cache, 0.125), F32)
    assert (buffer[2:] == SENTINEL).all()


# --------------------------------------------------------------------------- paged_prefill


def prefill_layout(query_lens, gap: int = 2) -> tuple[list[int], int]:
    """Row starts with ``gap`` unowned rows before, between and after the sequences."""
    starts, row = [], gap
    for n in query_lens:
        starts.append(row)
        row += n + gap
    return starts, row


def reference_prefill(q, cache: PagedCache, starts, query_lens, scale) -> torch.Tensor:
    out = torch.full(q.shape, SENTINEL, dtype=torch.float64)
    for i, (start, qlen, n) in enumerate(zip(starts, query_lens, cache.lens)):
        k = gather_history(cache.k_cache, cache.tables[i], n)
        v = gather_history(cache.v_cache, cache.tables[i], n)
        q_pos = torch.arange(n - qlen, n)
        out[start : start + qlen] = reference_attention(q[start : start + qlen], k, v, q_pos, scale)
    return out


def run_prefill(q, cache: PagedCache, starts, query_lens, scale, out) -> torch.Tensor:
    def as_tensor(x):
        return torch.tensor(x, dtype=torch.long, device=DEVICE)

    return tk.paged_prefill(
        q,
        cache.k_cache,
        cache.v_cache,
        cache.tables,
        as_tensor(starts),
        as_tensor(query_lens),
        cache.seq_lens,
        max(query_lens),
        scale,
        out,
    )


@pytest.mark.parametrize(
    "dtype,head_dim,block_size,heads,kv_heads,chunks",
    [
        # chunks: (query_len, seq_len) per sequence; query_len < seq_len means history.
        pytest.param(F32, 64, 16, 6, 2, [(37, 37), (20, 70), (1, 45)], id="f32-d64-bs16-gqa3"),
        pytest.param(F32, 128, 32, 2, 2, [(40, 96), (1, 1), (33, 33)], id="f32-d128-bs32-mha"),
        pytest.param(F32, 64, 32, 8, 1, [(70, 70), (16, 64)], id="f32-d64-bs32-gqa8-2tiles"),
        pytest.param(F16, 64, 32, 8, 1, [(29, 29), (1, 64), (12, 50)], id="f16-d64-bs32-gqa8"),
        pytest.param(F16, 128, 16, 3, 1, [(17, 81), (32, 32)], id="f16-d128-bs16-gqa3"),
        pytest.param(BF16, 64, 16, 8, 1, [(1, 17), (23, 23), (9, 40)], id="bf16-d64-bs16-gqa8"),
        pytest.param(BF16, 128, 32, 6, 2, [(35, 35), (4, 100)], id="bf16-d128-bs32-gqa3"),
    ],
)
def test_prefill_matches_reference(dtype, head_dim, block_size, heads, kv_heads, chunks):
    query_lens = [c[0] for c in chunks]
    cache = make_cache([c[1] for c in chunks], kv_heads, head_dim, block_size, dtype)
    starts, rows = prefill_layout(query_lens)
    q = random_tensor((rows, heads, head_dim), dtype, seed=9)
    owned = torch.zeros(rows, dtype=torch.bool)
    for start, n in zip(starts, query_lens):
        owned[start : start + n] = True
    q[~owned.to(DEVICE)] = float("nan")  # rows of no sequence must never be read
    out = torch.full_like(q, SENTINEL)
    scale = head_dim**-0.5

    got = run_prefill(q, cache, starts, query_lens, scale, out)

    assert got.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all()
    assert (out[~owned.to(DEVICE)] == SENTINEL).all()
    assert_close(out, reference_prefill(q, cache, starts, query_lens, scale), dtype)


def test_prefill_of_the_whole_context_matches_decode_at_the_last_position():
    lens = [45, 19]
    cache = make_cache(lens, 2, 64, 16, F32)
    q = random_tensor((sum(lens), 4, 64), F32, seed=10)
    starts = [0, lens[0]]
    out = run_prefill(q, cache, starts, lens, 0.125, torch.empty_like(q))

    last = torch.tensor([s + n - 1 for s, n in zip(starts, lens)], device=DEVICE)
    decoded = tk.paged_decode(
        q[last], cache.k_cache, cache.v_cache, cache.tables, cache.seq_lens, 0.125, 2
    )

    torch.testing.assert_close(decoded, out[last], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- vs the torch backend


def step_metadata(decode_lens, chunks, tables, block_size) -> AttentionMetadata:
    """Decodes then prefill chunks ((query_len, seq_len) each), laid out as the runner does."""
    query_lens = [1] * len(decode_lens) + [q for q, _ in chunks]
    seq_lens = decode_lens + [n for _, n in chunks]
    query_start = [0]
    for n in query_lens:
        query_start.append(query_start[-1] + n)
    slots = []
    for i, (qlen, n) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(n - qlen, n):
            slots.append(int(tables[i, pos // block_size]) * block_size + pos % block_size)
    return AttentionMetadata(
        num_decodes=len(decode_lens),
        num_decode_tokens=len(decode_lens),
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.long, device=DEVICE),
        block_tables=tables,
        seq_lens_cpu=seq_lens,
        query_lens_cpu=query_lens,
        query_start_cpu=query_start,
        max_decode_seq_len=max(decode_lens),
        block_size=block_size,
    )


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_store_and_attend_match_the_torch_backend(dtype):
    heads, kv_heads, head_dim, block_size = 6, 2, 64, 16
    decode_lens, chunks = [33, 1, 80], [(25, 25), (10, 58)]
    lens = decode_lens + [n for _, n in chunks]
    # No poison here: the torch backend reads whole blocks and masks afterwards.
    cache = make_cache(lens, kv_heads, head_dim, block_size, dtype, seed=11, poison=False)
    meta = step_metadata(decode_lens, chunks, cache.tables, block_size)
    tokens = meta.query_start_cpu[-1]
    query = random_tensor((tokens, heads, head_dim), dtype, seed=12)
    key = random_tensor((tokens, kv_heads, head_dim), dtype, seed=13)
    value = random_tensor((tokens, kv_heads, head_dim), dtype, seed=14)
    reference = TorchAttentionBackend()
    reference.prepare(meta, kv_heads, head_dim)
    ref_k, ref_v = cache.k_cache.clone(), cache.v_cache.clone()
    reference.store_kv(key, value, ref_k, ref_v, meta)
    expected = reference.attend(query, key, value, ref_k, ref_v, meta, head_dim**-0.5)

    tk.store_kv(key, value, cache.k_cache, cache.v_cache, meta.slot_mapping)
    nd, scale = meta.num_decodes, head_dim**-0.5
    got = torch.full_like(query, SENTINEL)
    tk.paged_decode(
        query[:nd],
        cache.k_cache,
        cache.v_cache,
        cache.tables[:nd],
        meta.seq_lens[:nd],
        scale,
        3,
        out=got[:nd],
    )
    prefill_starts = meta.query_start_cpu[nd:-1]
    prefill = PagedCache(
        cache.k_cache, cache.v_cache, cache.tables[nd:], meta.seq_lens[nd:], lens[nd:]
    )
    run_prefill(query, prefill, prefill_starts, meta.query_lens_cpu[nd:], scale, got)

    assert torch.equal(cache.k_cache, ref_k) and torch.equal(cache.v_cache, ref_v)
    torch.testing.assert_close(got, expected, atol=TOL[dtype], rtol=TOL[dtype])


# --------------------------------------------------------------------------- decode_splits


@pytest.mark.parametrize("num_sms", [2, 108, 132])
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("kv_heads", [1, 8])
@pytest.mark.parametrize("max_seq_len", [1, 255, 1000, 4096, 131072])
def test_decode_splits_is_a_power_of_two_in_range(num_sms, batch, kv_heads, max_seq_len):
    splits = tk.decode_splits(batch, kv_heads, max_seq_len, num_sms)
    assert 1 <= splits <= 64
    assert splits == 2 ** round(math.log2(splits))


@pytest.mark.parametrize("max_seq_len", [1, 100, 255])
def test_decode_splits_is_one_for_short_contexts(max_seq_len):
    assert tk.decode_splits(1, 1, max_seq_len, 132) == 1


def test_decode_splits_grow_for_a_small_batch_with_a_long_context():
    assert tk.decode_splits(1, 2, 8192, 132) >= 8
    assert tk.decode_splits(1, 1, 1 << 20, 132) == 64
    assert tk.decode_splits(512, 8, 8192, 132) == 1
