"""Sliding windows and score soft-capping in the C decode kernel and the triton kernels.

Every kernel is checked against a dense masked softmax written here, in
float64, on the very values it reads. The caches a kernel gets are poisoned:
every position before the first one any query may see holds NaN, and the
table entries of whole blocks before it point at block 0 (NaN too) or at
their own NaN block, so a kernel that reads anything outside its windows
fails loudly. The torch reference gathers whole padded rows, so it gets the
same caches with finite values there instead.

Triton runs in its interpreter on CPU (conftest sets ``TRITON_INTERPRET``):
shapes stay tiny and cases few.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention import CpuAttentionBackend, TorchAttentionBackend
from candle_agents.engine.attention.base import AttentionMetadata

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cuda" if not INTERPRET and torch.cuda.is_available() else "cpu"
C_TOL = 1e-5  # the C kernel accumulates in float32 on the cache's own values
TRITON_TOL = {F32: 1e-5, F16: 2e-3, BF16: 2e-2}
SOFTCAP = 3.0  # small enough that the cap bends the scores the tests draw

needs_c = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")


def blocks_for(n: int, block_size: int) -> int:
    return -(-n // block_size)


@dataclass
class WindowedCache:
    """Paged caches [blocks, kv_heads, block_size, head_dim] in two versions.

    ``clean_*``: finite everywhere, real table entries. ``poisoned_*``: NaN at
    every position before ``firsts[i]`` of sequence i (and in block 0 and
    unowned slots), whole blocks before it remapped to block 0 or left on
    their NaN block.
    """

    clean_k: torch.Tensor
    clean_v: torch.Tensor
    clean_tables: torch.Tensor
    poisoned_k: torch.Tensor
    poisoned_v: torch.Tensor
    poisoned_tables: torch.Tensor
    seq_lens: torch.Tensor
    lens: list[int]

    def to(self, device) -> WindowedCache:
        return WindowedCache(
            *(getattr(self, f).to(device) for f in self.__dataclass_fields__ if f != "lens"),
            self.lens,
        )


def windowed_cache(lens, firsts, kv_heads, head_dim, block_size, dtype, seed=0) -> WindowedCache:
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(blocks_for(n, block_size) for n in lens) + 2
    shape = (num_blocks, kv_heads, block_size, head_dim)
    clean_k = torch.randn(shape, generator=g).to(dtype)
    clean_v = torch.randn(shape, generator=g).to(dtype)
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()  # block 0 never owned
    width = max(blocks_for(n, block_size) for n in lens) + 1
    tables = torch.zeros(len(lens), width, dtype=torch.long)
    readable = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    poisoned_tables = tables.clone()
    for i, (n, first) in enumerate(zip(lens, firsts)):
        for j in range(blocks_for(n, block_size)):
            tables[i, j] = blk = perm.pop()
            lo, hi = j * block_size, min(n, (j + 1) * block_size)
            readable[blk, max(0, first - lo) : hi - lo] = True
            before_window = hi <= first and hi - lo == block_size
            # Half the skipped blocks become placeholders, as a freed block would.
            poisoned_tables[i, j] = 0 if before_window and j % 2 == 0 else blk
    unreadable = ~readable[:, None, :, None]
    return WindowedCache(
        clean_k,
        clean_v,
        tables,
        clean_k.masked_fill(unreadable, float("nan")),
        clean_v.masked_fill(unreadable, float("nan")),
        poisoned_tables,
        torch.tensor(lens, dtype=torch.long),
        list(lens),
    )


def history(cache: torch.Tensor, table_row: torch.Tensor, n: int) -> torch.Tensor:
    """The first n positions of one sequence, float64 [kv_heads, n, head_dim]."""
    blocks = table_row[: blocks_for(n, cache.shape[2])].cpu()
    return cache.cpu()[blocks].transpose(0, 1).flatten(1, 2)[:, :n].double()


def dense_attention(q, k, v, q_pos, scale, window, softcap) -> torch.Tensor:
    """q [M, H, D], k/v [Hkv, L, D] float64 -> [M, H, D]: the masked softmax, spelled out."""
    group = q.shape[1] // k.shape[0]
    k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
    s = torch.einsum("mhd,hld->hml", q.double().cpu(), k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    kpos = torch.arange(k.shape[1])[None, :]
    visible = kpos <= q_pos[:, None]
    if window is not None:
        visible &= kpos > q_pos[:, None] - window
    return torch.einsum("hml,hld->mhd", s.masked_fill(~visible, float("-inf")).softmax(-1), v)


def dense_decode(q, wc: WindowedCache, scale, window, softcap) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, n in enumerate(wc.lens):
        if n:
            k = history(wc.clean_k, wc.clean_tables[i], n)
            v = history(wc.clean_v, wc.clean_tables[i], n)
            pos = torch.tensor([n - 1])
            out[i] = dense_attention(q[i : i + 1], k, v, pos, scale, window, softcap)[0]
    return out


def decode_firsts(lens, window) -> list[int]:
    return [0 if window is None else max(0, n - window) for n in lens]


def decode_meta(wc: WindowedCache, block_size: int, window) -> AttentionMetadata:
    n = len(wc.lens)
    return AttentionMetadata(
        num_decodes=n,
        num_decode_tokens=n,
        slot_mapping=torch.zeros(n, dtype=torch.long),
        seq_lens=wc.seq_lens,
        block_tables=wc.clean_tables,
        seq_lens_cpu=list(wc.lens),
        query_lens_cpu=[1] * n,
        query_start_cpu=list(range(n + 1)),
        max_decode_seq_len=max(wc.lens),
        block_size=block_size,
        window=window,
    )


def close(got, expected, tol) -> None:
    torch.testing.assert_close(got.double().cpu(), expected, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- the C kernel

LENS = [1, 4, 16, 17, 40, 150]  # shorter than every window but 37 ... far longer


@needs_c
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("softcap", [None, SOFTCAP], ids=["nocap", "cap"])
@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("window", [None, 1, 5, 16, 37])
def test_c_decode_matches_dense_and_torch(window, block_size, head_dim, softcap, dtype):
    heads, kv_heads = 4, 2
    wc = windowed_cache(LENS, decode_firsts(LENS, window), kv_heads, head_dim, block_size, dtype)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(len(LENS), heads, head_dim, generator=g) * 2  # scores of a few units
    scale = head_dim**-0.5
    expected = dense_decode(q, wc, scale, window, softcap)

    got = cpu_kernels.paged_decode_attention(
        q, wc.poisoned_k, wc.poisoned_v, wc.poisoned_tables, wc.seq_lens, scale, window, softcap
    )
    assert torch.isfinite(got).all()
    close(got, expected, C_TOL)

    reference = TorchAttentionBackend()
    meta = decode_meta(wc, block_size, window)
    reference.prepare(meta, kv_heads, head_dim)
    ref = reference._decode(q, wc.clean_k, wc.clean_v, meta, scale, softcap)
    close(ref, expected, C_TOL)
    torch.testing.assert_close(got, ref, atol=C_TOL, rtol=C_TOL)


@needs_c
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("window,softcap", [(5, SOFTCAP), (37, None), (None, SOFTCAP)])
def test_c_decode_portable_path(window, softcap, dtype):
    # head_dim 72 is no multiple of 16: the two-pass C path, which every CPU
    # without AVX-512 runs for all head sizes.
    heads, kv_heads, head_dim, block_size = 4, 2, 72, 8
    wc = windowed_cache(LENS, decode_firsts(LENS, window), kv_heads, head_dim, block_size, dtype)
    q = torch.randn(len(LENS), heads, head_dim, generator=torch.Generator().manual_seed(9)) * 2
    got = cpu_kernels.paged_decode_attention(
        q, wc.poisoned_k, wc.poisoned_v, wc.poisoned_tables, wc.seq_lens, 0.1, window, softcap
    )
    close(got, dense_decode(q, wc, 0.1, window, softcap), C_TOL)


@needs_c
def test_c_decode_window_wider_than_the_history_changes_nothing():
    lens = [3, 30]
    wc = windowed_cache(lens, [0, 0], 2, 64, 16, F32)
    q = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(2))
    args = (q, wc.clean_k, wc.clean_v, wc.clean_tables, wc.seq_lens, 0.125)
    plain = cpu_kernels.paged_decode_attention(*args)
    assert torch.equal(cpu_kernels.paged_decode_attention(*args, window=30), plain)
    assert torch.equal(cpu_kernels.paged_decode_attention(*args, window=1000), plain)
    # One key less is a different answer: the window is really applied.
    assert not torch.allclose(cpu_kernels.paged_decode_attention(*args, window=29)[1], plain[1])


@needs_c
def test_c_decode_rejects_empty_windows_and_caps():
    wc = windowed_cache([5], [0], 1, 64, 16, F32)
    q = torch.randn(1, 2, 64)
    args = (q, wc.clean_k, wc.clean_v, wc.clean_tables, wc.seq_lens, 0.125)
    with pytest.raises(ValueError, match="window=0"):
        cpu_kernels.paged_decode_attention(*args, window=0)
    with pytest.raises(ValueError, match="softcap=-1"):
        cpu_kernels.paged_decode_attention(*args, softcap=-1.0)


@needs_c
@pytest.mark.parametrize("head_dim", [64, 256])
def test_cpu_backend_decodes_windows_in_the_kernel(head_dim, monkeypatch):
    lens, window, heads, kv_heads = [3, 25, 70], 9, 4, 2
    wc = windowed_cache(lens, decode_firsts(lens, window), kv_heads, head_dim, 8, F32)
    q = torch.randn(3, heads, head_dim, generator=torch.Generator().manual_seed(3))
    backend = CpuAttentionBackend()
    assert backend.supports(torch.device("cpu"), F32, head_dim)
    meta = decode_meta(wc, 8, window)
    meta.block_tables = wc.poisoned_tables
    backend.prepare(meta, kv_heads, head_dim)

    # The torch path would read the NaN blocks: reaching it fails the test.
    def no_fallback(*args, **kwargs):
        raise AssertionError("the CPU backend fell back to torch for a windowed decode")

    monkeypatch.setattr(TorchAttentionBackend, "_decode", no_fallback)
    got = backend.attend(q, q, q, wc.poisoned_k, wc.poisoned_v, meta, 0.2, softcap=SOFTCAP)
    close(got, dense_decode(q, wc, 0.2, window, SOFTCAP), C_TOL)


# --------------------------------------------------------------------------- triton


def triton_kernels():
    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    from candle_agents.engine.attention import triton_kernels as tk

    return tk


@pytest.mark.parametrize(
    "dtype,block_size,window,softcap,num_splits,lens",
    [
        pytest.param(F32, 8, 5, SOFTCAP, 3, [1, 9, 40], id="f32-bs8-w5-cap-split3"),
        pytest.param(BF16, 16, 16, None, 2, [16, 17, 70], id="bf16-bs16-w16-split2"),
        pytest.param(F32, 16, 37, SOFTCAP, 1, [20, 100], id="f32-bs16-w37-cap-split1"),
        pytest.param(F16, 8, None, SOFTCAP, 2, [1, 45], id="f16-bs8-cap-only-split2"),
    ],
)
def test_triton_decode_matches_dense(dtype, block_size, window, softcap, num_splits, lens):
    tk = triton_kernels()
    heads, kv_heads, head_dim = 4, 2, 32
    wc = windowed_cache(lens, decode_firsts(lens, window), kv_heads, head_dim, block_size, dtype)
    q = (
        torch.randn(len(lens), heads, head_dim, generator=torch.Generator().manual_seed(4)) * 2
    ).to(dtype)
    scale = head_dim**-0.5
    expected = dense_decode(q, wc, scale, window, softcap)
    dev = wc.to(TRITON_DEVICE)

    got = tk.paged_decode(
        q.to(TRITON_DEVICE),
        dev.poisoned_k,
        dev.poisoned_v,
        dev.poisoned_tables,
        dev.seq_lens,
        scale,
        num_splits,
        window=window,
        softcap=softcap,
    )

    assert torch.isfinite(got).all()
    close(got, expected, TRITON_TOL[dtype])


def dense_prefill(q, wc: WindowedCache, starts, chunks, scale, window, softcap) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, (start, (qlen, n)) in enumerate(zip(starts, chunks)):
        k = history(wc.clean_k, wc.clean_tables[i], n)
        v = history(wc.clean_v, wc.clean_tables[i], n)
        pos = torch.arange(n - qlen, n)
        rows = slice(start, start + qlen)
        out[rows] = dense_attention(q[rows], k, v, pos, scale, window, softcap)
    return out


@pytest.mark.parametrize(
    "dtype,block_size,window,softcap,chunks",
    [
        # chunks: (query_len, seq_len); query_len < seq_len is a chunk with history.
        pytest.param(F32, 8, 6, SOFTCAP, [(20, 20), (7, 45), (1, 30)], id="f32-bs8-w6-cap"),
        pytest.param(BF16, 16, 16, None, [(40, 40), (12, 60)], id="bf16-bs16-w16-2tiles"),
        pytest.param(F32, 16, 37, None, [(3, 90), (25, 25)], id="f32-bs16-w37"),
        # Long chunks, short window: late rows see nothing in the tile's first key tiles.
        pytest.param(F32, 8, 5, None, [(60, 60), (40, 70)], id="f32-bs8-w5-rows-start-empty"),
        pytest.param(F16, 8, 1, SOFTCAP, [(9, 9), (5, 21)], id="f16-bs8-w1-cap"),
    ],
)
def test_triton_prefill_matches_dense(dtype, block_size, window, softcap, chunks):
    tk = triton_kernels()
    heads, kv_heads, head_dim = 4, 2, 32
    lens = [n for _, n in chunks]
    firsts = [max(0, n - qlen - window + 1) for qlen, n in chunks]
    wc = windowed_cache(lens, firsts, kv_heads, head_dim, block_size, dtype, seed=5)
    qlens = [qlen for qlen, _ in chunks]
    starts = [sum(qlens[:i]) for i in range(len(qlens))]
    g = torch.Generator().manual_seed(6)
    q = (torch.randn(sum(qlens), heads, head_dim, generator=g) * 2).to(dtype)
    scale = head_dim**-0.5
    expected = dense_prefill(q, wc, starts, chunks, scale, window, softcap)
    dev = wc.to(TRITON_DEVICE)

    def as_tensor(x):
        return torch.tensor(x, dtype=torch.long, device=TRITON_DEVICE)

    out = tk.paged_prefill(
        q.to(TRITON_DEVICE),
        dev.poisoned_k,
        dev.poisoned_v,
        dev.poisoned_tables,
        as_tensor(starts),
        as_tensor(qlens),
        dev.seq_lens,
        max(qlens),
        scale,
        torch.empty(q.shape, dtype=dtype, device=TRITON_DEVICE),
        window=window,
        softcap=softcap,
    )

    assert torch.isfinite(out).all()
    close(out, expected, TRITON_TOL[dtype])


def new_rows(cache, tables, lens, qlens) -> torch.Tensor:
    """Each sequence's last qlen positions, [tokens, kv_heads, head_dim]: a step's new K or V."""
    rows = [history(cache, tables[i], n)[:, n - ql :] for i, (n, ql) in enumerate(zip(lens, qlens))]
    return torch.cat([r.transpose(0, 1) for r in rows]).float()


def test_triton_backend_mixed_step_matches_the_torch_backend():
    triton_kernels()
    from candle_agents.engine.attention.triton_backend import TritonAttentionBackend

    # Two decodes, then a chunk with history and a fresh prompt; all share one window.
    decode_lens, chunks, window, block_size = [3, 50], [(6, 30), (11, 11)], 7, 8
    lens = decode_lens + [n for _, n in chunks]
    qlens = [1, 1] + [q for q, _ in chunks]
    wc = windowed_cache(lens, [0] * len(lens), 2, 32, block_size, F32, seed=7)
    starts = [sum(qlens[:i]) for i in range(len(qlens) + 1)]
    g = torch.Generator().manual_seed(8)
    q = torch.randn(starts[-1], 4, 32, generator=g)
    meta_args = {
        "num_decodes": 2,
        "num_decode_tokens": 2,
        "slot_mapping": torch.zeros(starts[-1], dtype=torch.long),
        "seq_lens": wc.seq_lens,
        "block_tables": wc.clean_tables,
        "seq_lens_cpu": lens,
        "query_lens_cpu": qlens,
        "query_start_cpu": starts,
        "max_decode_seq_len": max(decode_lens),
        "block_size": block_size,
        "window": window,
    }
    # The new tokens' K/V, as the torch backend reads them for a fresh prompt.
    fresh = new_rows(wc.clean_k, wc.clean_tables, lens, qlens)
    fresh_v = new_rows(wc.clean_v, wc.clean_tables, lens, qlens)
    torch_backend = TorchAttentionBackend()
    ref_meta = AttentionMetadata(**meta_args)
    torch_backend.prepare(ref_meta, 2, 32)
    expected = torch_backend.attend(
        q, fresh, fresh_v, wc.clean_k, wc.clean_v, ref_meta, 0.15, softcap=SOFTCAP
    )

    backend = TritonAttentionBackend(torch.device(TRITON_DEVICE))
    dev = wc.to(TRITON_DEVICE)
    meta = AttentionMetadata(
        **{
            **meta_args,
            "slot_mapping": meta_args["slot_mapping"].to(TRITON_DEVICE),
            "seq_lens": dev.seq_lens,
            "block_tables": dev.clean_tables,
        }
    )
    backend.prepare(meta, 2, 32)
    got = backend.attend(
        q.to(TRITON_DEVICE), None, None, dev.clean_k, dev.clean_v, meta, 0.15, softcap=SOFTCAP
    )

    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_triton_decode_splits_size_by_the_window():
    triton_kernels()
    from candle_agents.engine.attention.triton_backend import TritonAttentionBackend

    backend = TritonAttentionBackend(torch.device("cpu"))
    backend.num_sms = 132  # as on an H100: a batch of one wants many splits
    meta = AttentionMetadata(
        num_decodes=1,
        num_decode_tokens=1,
        slot_mapping=torch.zeros(1, dtype=torch.long),
        seq_lens=torch.tensor([32768]),
        block_tables=torch.zeros(1, 2048, dtype=torch.long),
        seq_lens_cpu=[32768],
        query_lens_cpu=[1],
        query_start_cpu=[0, 1],
        max_decode_seq_len=32768,
        block_size=16,
    )
    backend.prepare(meta, 1, 64)
    assert meta.extra["num_splits"] == 64  # the whole context: as many as allowed
    windowed = AttentionMetadata(**{**meta.__dict__, "extra": {}, "window": 512})
    backend.prepare(windowed, 1, 64)
    assert windowed.extra["num_splits"] == 2  # 512 tokens: splits of 256
