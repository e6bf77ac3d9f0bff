"""K-quant blocks (Q2_K..Q6_K) in the quantized matmuls: cases the generic suite
(test_quant_kernels.py) does not reach.

- fp16 scale fields at the edges (zero, subnormal, the largest finite, negative):
  dequantization stays bit-exact with gguf.quants, also where fp16 is converted
  in software (the generic build);
- the integer path against the same 8-bit activations in float64, to float32
  rounding: the NMSE bound of the generic suite would hide a wrong min or offset
  term of small weight;
- the largest products (all quant bits set, activations at +-127), where 16-bit
  intermediate sums would overflow if the kernels kept any;
both through the per-row (dot_fast) and the 8-row interleaved (dot_fast_x8) paths.
Each ISA build runs the same checks in its own process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from candle_agents.engine import cpu_kernels
from tests.support.checks import run_in_isa_build

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")

Q = GGMLQuantizationType
K_TYPES = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of the fp16 d (and dmin) fields in each block (ggml-common.h).
SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
EDGE_F16 = np.array([0.0, -0.0, 6e-8, 3e-5, 65504.0, -65504.0, 1e-3, -2.5e-3], np.float16)


def blocks(qtype: Q, n: int, k: int, seed: int, fill: int | None = None, edge: bool = False):
    """Block data for W [n, k]: random bytes (or every byte `fill`), fp16 scales
    small and random, or cycling through EDGE_F16."""
    rng = np.random.default_rng(seed)
    size = GGML_QUANT_SIZES[qtype][1]
    nb = n * k // 256
    data = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    if fill is not None:
        data[:] = fill
    for j, off in enumerate(SCALES[qtype]):
        if edge:
            v = EDGE_F16[(np.arange(nb) + 3 * j) % len(EDGE_F16)]
        else:
            v = (rng.random(nb) * 0.02 - 0.01).astype(np.float16)
        data[:, off : off + 2] = v.view(np.uint8).reshape(nb, 2)
    return data.reshape(n, -1)


def act_q8(x: np.ndarray) -> np.ndarray:
    """The 8-bit activations quant_gemm(fast=True) makes, as float64 values d * q
    (d = max|x| / 127 per 256 values, q = round-half-even(x / d))."""
    xb = x.reshape(x.shape[0], -1, 256).astype(np.float32)
    d = (np.abs(xb).max(axis=2) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.rint(xb * inv[..., None])
    return (q * d[..., None].astype(np.float64)).reshape(x.shape)


def check_dequant_edges() -> None:
    for qtype in K_TYPES:
        data = blocks(qtype, 8, 256 * 3, seed=1, edge=True)
        want = gguf_dequantize(data, qtype).reshape(8, -1)
        got = cpu_kernels.quant_dequant_rows(torch.from_numpy(data), qtype, 256 * 3).numpy()
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), qtype.name)
        # the bfloat16 form (prompt-sized matmuls): the same values, rounded as torch rounds
        bf16 = torch.empty(8, 256 * 3, dtype=torch.bfloat16)
        cpu_kernels.quant_dequant_rows(torch.from_numpy(data), qtype, 256 * 3, out=bf16)
        assert torch.equal(bf16, torch.from_numpy(want).to(torch.bfloat16)), qtype.name


def check_fast_against_same_activations() -> None:
    rng = np.random.default_rng(2)
    for qtype in K_TYPES:
        # 8 rows and more also take the interleaved 8-row path (dot_fast_x8)
        for m, k in ((1, 256), (3, 768), (6, 1280), (8, 512), (19, 2304)):
            data = blocks(qtype, 21, k, seed=m)
            w = gguf_dequantize(data, qtype).reshape(21, k).astype(np.float64)
            x = rng.standard_normal((m, k)).astype(np.float32)
            x[:, :256] *= 50  # blocks of very different activation scales
            want = act_q8(x) @ w.T
            xt, wt = torch.from_numpy(x), torch.from_numpy(data)
            got = cpu_kernels.quant_gemm(xt, wt, qtype, fast=True)
            err = np.abs(got.numpy() - want).max() / np.abs(want).max()
            assert err < 1e-6, f"{qtype.name} m={m} k={k}: relative error {err:.2e}"


def check_largest_products() -> None:
    for qtype in K_TYPES:
        data = blocks(qtype, 4, 512, seed=3, fill=0xFF)  # every quant at its largest
        w = gguf_dequantize(data, qtype).reshape(4, 512).astype(np.float64)
        x = np.full((10, 512), 3.0, np.float32)
        x[1::2, ::2] = -3.0  # 127 and -127 alternating
        xt = torch.from_numpy(x)
        for fast in (False, True):
            got = cpu_kernels.quant_gemm(xt, torch.from_numpy(data), qtype, fast=fast).numpy()
            want = (act_q8(x) if fast else x.astype(np.float64)) @ w.T
            err = np.abs(got - want).max() / np.abs(want).max()
            # float32 sums of 512 same-signed products (exact) or of 2 blocks (fast)
            assert err < (1e-6 if fast else 1e-5), f"{qtype.name} fast={fast}: error {err:.2e}"


def test_dequant_bit_exact_at_edge_scales():
    check_dequant_edges()


def test_fast_path_exact_against_same_activations():
    check_fast_against_same_activations()


def test_largest_products_do_not_overflow():
    check_largest_products()


def run_all() -> None:
    assert cpu_kernels.available(), "the kernels did not build"
    check_dequant_edges()
    check_fast_against_same_activations()
    check_largest_products()
    print("k-quant checks passed")


@pytest.mark.parametrize("isa", ["avx512", "avxvnni", "avx2", "generic"])
def test_other_isa_builds(isa):
    run_in_isa_build(isa, __file__, "run_all()", "k-quant checks passed")
