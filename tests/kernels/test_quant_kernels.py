"""Quantized matmuls on GGUF block data (cpu_kernels.quant_gemm / quant_dequant_rows)
against gguf.quants.dequantize + F.linear."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from candle_agents.engine import cpu_kernels
from tests.support.checks import run_in_isa_build

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")

Q = GGMLQuantizationType
TYPES = [
    Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
]  # fmt: skip
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
# Byte offsets of each block's fp16 scale fields (ggml-common.h): random bytes
# elsewhere are valid block data, but a random fp16 scale may be inf or NaN.
SCALE_OFFSETS = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}  # fmt: skip
M_VALUES = [1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 33, 48, 64, 65, 100]
N_VALUES = [37, 100, 256]


def k_values(qtype: Q) -> list[int]:
    """Row lengths of several blocks; for 32-value types one is not a multiple of 64,
    and some cross the driver's 256-value dequantization steps with a tail."""
    block = GGML_QUANT_SIZES[qtype][0]
    if qtype in FLOAT_TYPES:
        return [100, 608]
    if block == 32:
        return [224, 608]
    return [512, 768]


def need(qtype: Q, fast: bool = False) -> None:
    if not cpu_kernels.quant_supported(qtype, fast):
        kind = "an integer (fast) path" if fast else "a kernel"
        pytest.skip(f"{qtype.name} has no {kind} in this build")


def random_weight(qtype: Q, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random valid GGUF data for W [n, k] (uint8 [n, row_bytes]) and its float32 dequantization."""
    g = torch.Generator().manual_seed(seed)
    if qtype in FLOAT_TYPES:
        w = (torch.randn(n, k, generator=g) * 0.1).to(FLOAT_TYPES[qtype])
        data = w.contiguous().view(torch.uint8).reshape(n, -1)
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        blocks = torch.randint(0, 256, (n * k // block, size), generator=g, dtype=torch.uint8)
        for off in SCALE_OFFSETS[qtype]:
            scale = (torch.rand(blocks.shape[0], generator=g) * 0.02 - 0.01).half()
            blocks[:, off : off + 2] = scale.view(torch.uint8).reshape(-1, 2)
        data = blocks.reshape(n, -1).contiguous()
    ref = gguf_dequantize(data.numpy(), qtype)
    return data, torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).reshape(n, k)


def case(qtype: Q, m: int, i: int, seed: int = 0):
    """Shapes and layouts vary with the case index i: N with tails, both K values,
    bias or not, x rows strided or not, out a column slice of a wider tensor or not."""
    ks = k_values(qtype)
    n, k = N_VALUES[i % 3], ks[(i // 3) % 2]
    data, w = random_weight(qtype, n, k, seed + i)
    g = torch.Generator().manual_seed(seed + 1000 + i)
    x = torch.randn(m, k + (7 if i % 2 else 0), generator=g)[:, :k]
    bias = torch.randn(n, generator=g) if i % 4 < 2 else None
    out = torch.full((m, n + 10), float("nan"))[:, 3 : 3 + n] if i % 3 == 1 else None
    return data, w, x, bias, out


def check_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    # Both sides sum K float32 products in different orders: the difference is a
    # few ulps of the partial sums, i.e. ~1e-6 of the outputs' overall size, not
    # of each element (an output near zero by cancellation has no relative
    # precision), so atol scales with max|want|.
    scale = want.abs().max().item() or 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def check_fast(got: torch.Tensor, want: torch.Tensor) -> None:
    # 8-bit activations: llama.cpp's test-backend-ops holds matmuls to a
    # normalised MSE of 5e-4 (NMSE = sum((got - want)^2) / sum(want^2)).
    nmse = ((got.double() - want.double()) ** 2).sum() / (want.double() ** 2).sum()
    assert nmse <= 5e-4, f"NMSE {nmse:.3g}"


@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_exact_path_matches_dequantized_linear(qtype, m):
    need(qtype)
    for i in range(2):
        data, w, x, bias, out = case(qtype, m, M_VALUES.index(m) + 5 * i)
        got = cpu_kernels.quant_gemm(x, data, qtype, bias, out=out)
        if out is not None:
            assert got.data_ptr() == out.data_ptr()
        check_exact(got, F.linear(x, w, bias))


@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_fast_path_within_llamacpp_bound(qtype, m):
    need(qtype)
    for i in range(2):
        data, w, x, bias, out = case(qtype, m, M_VALUES.index(m) + 5 * i, seed=7)
        got = cpu_kernels.quant_gemm(x, data, qtype, bias, fast=True, out=out)
        want = F.linear(x, w, bias)
        if cpu_kernels.quant_supported(qtype, fast=True):
            check_fast(got, want)
        else:  # no integer path (the float types): fast runs the exact path
            check_exact(got, want)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequant_rows_bit_exact(qtype):
    need(qtype)
    k = k_values(qtype)[1]
    data, w = random_weight(qtype, 300, k, seed=3)
    assert torch.equal(cpu_kernels.quant_dequant_rows(data, qtype, k), w)
    rows = torch.tensor([5, 0, 299, 5, 17])
    out = torch.full((5, k + 3), float("nan"))[:, :k]
    got = cpu_kernels.quant_dequant_rows(data, qtype, k, rows, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, w[rows])
    check_dequant_bf16(data, qtype, w)


def check_dequant_bf16(data, qtype, w) -> None:
    """The bfloat16 form of the rows (prompt-sized matmuls): rounded as torch rounds."""
    n, k = w.shape
    out = torch.full((n, k + 5), float("nan"), dtype=torch.bfloat16)[:, 2 : k + 2]
    cpu_kernels.quant_dequant_rows(data, qtype, k, out=out)
    assert torch.equal(out, w.to(torch.bfloat16)), qtype.name


def test_unaligned_rows_and_zero_sizes():
    need(Q.Q4_0)
    data, w = random_weight(Q.Q4_0, 40, 224)
    x = torch.randn(3, 224)
    # a view that starts 4 bytes into a row, for x and for the weights
    buf = torch.empty(3 * 224 + 1)
    xs = buf[1:].view(3, 224)
    xs.copy_(x)
    wbuf = torch.empty(data.numel() + 3, dtype=torch.uint8)
    ws = wbuf[3:].view(40, -1)
    ws.copy_(data)
    check_exact(cpu_kernels.quant_gemm(xs, ws, Q.Q4_0), F.linear(x, w))
    check_fast(cpu_kernels.quant_gemm(xs, ws, Q.Q4_0, fast=True), F.linear(x, w))
    assert cpu_kernels.quant_gemm(torch.empty(0, 224), data, Q.Q4_0).shape == (0, 40)


def test_bad_arguments_raise_value_error():
    need(Q.Q4_0)
    data, _ = random_weight(Q.Q4_0, 8, 64)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="bytes"):
        cpu_kernels.quant_gemm(x, data[:, :-1].contiguous(), Q.Q4_0)
    with pytest.raises(ValueError, match="bytes"):
        cpu_kernels.quant_gemm(x, data, Q.Q8_0)
    with pytest.raises(ValueError, match="unknown GGUF type"):
        cpu_kernels.quant_gemm(x, data, 12345)
    with pytest.raises(ValueError, match="no kernel"):
        cpu_kernels.quant_gemm(x, data, Q.IQ2_XXS)
    with pytest.raises(ValueError, match="multiple"):
        cpu_kernels.quant_gemm(torch.randn(2, 48), data, Q.Q4_0)
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.quant_gemm(x.double(), data, Q.Q4_0)
    with pytest.raises(ValueError, match="bias"):
        cpu_kernels.quant_gemm(x, data, Q.Q4_0, torch.zeros(7))
    with pytest.raises(ValueError, match="out"):
        cpu_kernels.quant_gemm(x, data, Q.Q4_0, out=torch.empty(2, 9))
    with pytest.raises(ValueError, match="out of range"):
        cpu_kernels.quant_dequant_rows(data, Q.Q4_0, 64, torch.tensor([8]))
    with pytest.raises(ValueError, match="bytes"):
        cpu_kernels.quant_dequant_rows(data, Q.Q4_0, 96)


# -- the activation quantizers, bit for bit against numpy ---------------------------


def act_reference(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """d = max|x| / 127 and qs = round-half-even(x * (1 / d)) per block, in float32."""
    xb = x.reshape(-1, block).astype(np.float32)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    qs = np.rint(xb * inv[:, None]).astype(np.int8)
    return d, qs


def test_quantize_act_q8_32_matches_reference():
    x = np.random.default_rng(0).standard_normal(32 * 9).astype(np.float32)
    x[32:64] = 0  # a zero block: d = 0, qs = 0
    x[64:96] *= 1e-30  # a tiny one
    out = (ctypes.c_uint8 * (40 * 9))()
    cpu_kernels.require().quantize_act_q8_32(
        ctypes.c_void_p(x.ctypes.data), ctypes.c_int64(x.size), out
    )
    raw = np.frombuffer(out, dtype=np.uint8).reshape(9, 40)
    d, qs = act_reference(x, 32)
    got_qs = raw[:, 8:].view(np.int8)
    np.testing.assert_array_equal(raw[:, :4].copy().view(np.float32)[:, 0], d)
    np.testing.assert_array_equal(got_qs, qs)
    s = d * qs.astype(np.int32).sum(axis=1).astype(np.float32)
    np.testing.assert_array_equal(raw[:, 4:8].copy().view(np.float32)[:, 0], s)


def test_quantize_act_q8_256_matches_reference():
    x = np.random.default_rng(1).standard_normal(256 * 3).astype(np.float32) * 3
    size = 4 + 32 + 256
    out = (ctypes.c_uint8 * (size * 3))()
    cpu_kernels.require().quantize_act_q8_256(
        ctypes.c_void_p(x.ctypes.data), ctypes.c_int64(x.size), out
    )
    raw = np.frombuffer(out, dtype=np.uint8).reshape(3, size)
    d, qs = act_reference(x, 256)
    np.testing.assert_array_equal(raw[:, :4].copy().view(np.float32)[:, 0], d)
    np.testing.assert_array_equal(raw[:, 36:].view(np.int8), qs)
    bsums = qs.astype(np.int32).reshape(3, 16, 16).sum(axis=2)
    np.testing.assert_array_equal(raw[:, 4:36].copy().view(np.int16), bsums)


# -- the other code paths, each in its own process ----------------------------------


def reduced_check() -> None:
    """A few cases of every supported type through every path (run per ISA below)."""
    assert cpu_kernels.available(), "the kernels did not build"
    for qtype in TYPES:
        if not cpu_kernels.quant_supported(qtype):
            continue
        for i, m in enumerate([1, 3, 4, 5, 13, 33]):
            data, w, x, bias, out = case(qtype, m, i)
            want = F.linear(x, w, bias)
            check_exact(cpu_kernels.quant_gemm(x, data, qtype, bias, out=out), want)
            got = cpu_kernels.quant_gemm(x, data, qtype, bias, fast=True)
            if cpu_kernels.quant_supported(qtype, fast=True):
                check_fast(got, want)
            else:
                check_exact(got, want)
        k = k_values(qtype)[1]
        data, w = random_weight(qtype, 20, k)
        assert torch.equal(cpu_kernels.quant_dequant_rows(data, qtype, k), w), qtype.name
        check_dequant_bf16(data, qtype, w)
    test_quantize_act_q8_32_matches_reference()
    test_quantize_act_q8_256_matches_reference()
    print("reduced check passed")


@pytest.mark.parametrize("isa", ["avx512", "avxvnni", "avx2", "generic"])
def test_other_isa_paths(isa):
    run_in_isa_build(isa, __file__, "reduced_check()", "reduced check passed")
