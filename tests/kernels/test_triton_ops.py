"""The fused triton elementwise ops (layers/triton_ops.py) against TorchOps, and in the engine.

On CPU the kernels run in triton's interpreter (conftest sets TRITON_INTERPRET);
with TRITON_INTERPRET=0 on a CUDA machine the same tests run on the GPU.
Tolerances: float32 within 1e-6 (relative and absolute: summation order, exp);
float16/bfloat16 within 2 ulps of the reference (a one-ulp difference in a
float32 intermediate can move a rounded product by up to two); rotary and
the new residual are exact in every dtype (no reduction, no transcendental).
"""

from __future__ import annotations

import pytest
import torch

from candle_agents import Engine, GenerationParams
from candle_agents.engine.layers.ops import TorchOps
from candle_agents.engine.layers.rotary import RotaryEmbedding
from candle_agents.engine.layers.triton_ops import MAX_HIDDEN, TritonOps
from candle_agents.engine.platform import interpreting

DEVICE = "cuda" if not interpreting() and torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-6
REF, OPS = TorchOps(), TritonOps()


def rand(*shape, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference in units in the last place of ``want`` (its dtype)."""
    mantissa = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}[want.dtype]
    w, g = want.float(), got.float()
    exponent = torch.floor(torch.log2(w.abs().clamp_min(torch.finfo(want.dtype).tiny)))
    return ((g - w).abs() / torch.exp2(exponent - mantissa)).max().item()


def assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert ulps(got, want) <= 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    for seed, (rows, hidden) in enumerate([(1, 96), (5, 200), (33, 64)]):
        x = rand(rows, hidden, dtype=dtype, scale=3.0, seed=seed)
        w = rand(hidden, dtype=dtype, seed=seed + 100)
        assert_matches(OPS.rms_norm(x, w, EPS), REF.rms_norm(x, w, EPS))
    # QK-norm: per-head rows of a [T, H, D] view into a fused QKV row.
    qkv = rand(6, 8 * 32, dtype=dtype, seed=7)
    q = qkv[:, : 4 * 32].view(6, 4, 32)
    w = rand(32, dtype=dtype, seed=8)
    got = OPS.rms_norm(q, w, EPS)
    assert got.shape == (6, 4, 32)
    assert_matches(got, REF.rms_norm(q, w, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(dtype):
    for seed, (rows, hidden) in enumerate([(1, 200), (9, 96)]):
        x = rand(rows, hidden, dtype=dtype, seed=seed)
        residual = rand(rows, hidden, dtype=dtype, scale=4.0, seed=seed + 50)
        w = rand(hidden, dtype=dtype, seed=seed + 100)
        want, want_res = REF.add_rms_norm(x, residual, w, EPS)
        got, got_res = OPS.add_rms_norm(x, residual.clone(), w, EPS)
        assert torch.equal(got_res, want_res)  # one add, rounded as torch rounds it
        assert_matches(got, want)
    # The new residual is written over the old one (the decoder never rereads it).
    residual = rand(3, 64, dtype=dtype, seed=9)
    _, new = OPS.add_rms_norm(rand(3, 64, dtype=dtype), residual, w[:64].contiguous(), EPS)
    assert new.data_ptr() == residual.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    # 1500 columns: two column tiles, the second partly masked.
    for seed, (rows, inter) in enumerate([(1, 96), (7, 200), (3, 1500)]):
        gate_up = rand(rows, 2 * inter, dtype=dtype, scale=4.0, seed=seed)
        assert_matches(OPS.silu_and_mul(gate_up), REF.silu_and_mul(gate_up))
    # Rows that are slices of wider rows.
    wide = rand(4, 2 * 96 + 32, dtype=dtype, scale=4.0, seed=5)
    gate_up = wide[:, : 2 * 96]
    assert_matches(OPS.silu_and_mul(gate_up), REF.silu_and_mul(gate_up))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_in_place_on_qkv_views(dtype):
    for tokens, head_dim in ((1, 32), (7, 96)):  # 96: the half (48) is a masked block
        rot = RotaryEmbedding(head_dim, 64, 10000.0).to(DEVICE)
        qkv = rand(tokens, 8 * head_dim, dtype=dtype, scale=2.0, seed=tokens)
        q_size, kv_size = 4 * head_dim, 2 * head_dim  # GQA: 4 query heads, 2 KV heads
        q = qkv[:, :q_size].view(tokens, 4, head_dim)
        k = qkv[:, q_size : q_size + kv_size].view(tokens, 2, head_dim)
        v_before = qkv[:, q_size + kv_size :].clone()
        positions = torch.tensor([5, 63, 0, 17, 2, 40, 9][:tokens], device=DEVICE)
        want_q, want_k = REF.rotary(q.clone(), k.clone(), rot.cos, rot.sin, positions)
        got_q, got_k = OPS.rotary(q, k, rot.cos, rot.sin, positions)
        assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
        if dtype == torch.float32:
            torch.testing.assert_close(got_q, want_q, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(got_k, want_k, rtol=1e-6, atol=1e-6)
        else:  # the same roundings in the same order: equal
            assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
        assert torch.equal(qkv[:, q_size + kv_size :], v_before)


def test_fallbacks_match_torch_ops():
    x = rand(3, 64, dtype=torch.bfloat16)
    w32 = rand(64, dtype=torch.float32, seed=1)
    # Mixed dtypes: TorchOps promotes to float32; so must the fallback.
    got = OPS.rms_norm(x, w32, EPS)
    assert got.dtype == torch.float32
    assert torch.equal(got, REF.rms_norm(x, w32, EPS))
    # A strided last axis and a row too wide for one program.
    xt = rand(64, 3, dtype=torch.float32).t()
    assert torch.equal(OPS.rms_norm(xt, w32, EPS), REF.rms_norm(xt, w32, EPS))
    wide = rand(2, MAX_HIDDEN + 2, dtype=torch.float32)
    w_wide = rand(MAX_HIDDEN + 2, dtype=torch.float32)
    assert torch.equal(OPS.rms_norm(wide, w_wide, EPS), REF.rms_norm(wide, w_wide, EPS))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # qwen3: QK-norm on strided heads
def test_engine_greedy_equals_torch_backend(arch, tiny_model_dir):
    path = str(tiny_model_dir(arch))
    config = dict(
        device=DEVICE,
        dtype="float32",
        kv_cache_memory=4 * 2**20,
        max_num_seqs=8,
        max_num_batched_tokens=256,
    )
    params = GenerationParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[5, 17, 42, 99, 7], [300, 12], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [77]]
    with Engine.from_pretrained(path, attention_backend="torch", **config) as engine:
        want = [r.token_ids for r in engine.generate(prompts, params)]
    with Engine.from_pretrained(path, attention_backend="triton", **config) as engine:
        assert isinstance(engine.runner.backend.ops, TritonOps)
        got = [r.token_ids for r in engine.generate(prompts, params)]
    assert got == want
    assert all(len(ids) == 8 for ids in got)
