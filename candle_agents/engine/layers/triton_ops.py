"""The model's elementwise ops as fused triton kernels (CUDA, or the interpreter on CPU).

In ``TorchOps`` each op is a chain of torch kernels: rms_norm is a cast, a
square, a mean, an add, an rsqrt, two multiplies and a cast back, each a
launch and a pass over the activations; rotary gathers and casts the tables
and builds a rotated copy of q and k. At decode batch sizes those launches
dominate; at prefill, the extra passes over memory do. Here each op is one
launch that reads its inputs once and writes its outputs once.

The roundings follow ``TorchOps`` step for step: every intermediate that
torch materialises in the model dtype is rounded to it here too. Half
precision results then equal the reference but where float32 summation
order or the GPU's approximate ``exp``/``rsqrt`` move an intermediate across
a rounding boundary (an ulp or two of the output, rarely); rotary and the
residual add have neither and are exact.

Writes in place: ``add_rms_norm`` updates ``residual`` (the decoder layers
never read the old residual stream again, and ``CpuKernelOps`` does the
same) and ``rotary`` rotates q and k where they are (views into the fused
QKV row). Anything the kernels do not cover falls back to ``TorchOps``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from candle_agents.engine.layers.ops import TorchOps
from candle_agents.engine.platform import interpreting

# Read once, at import, as triton itself reads it when the kernels are defined.
INTERPRET = interpreting()
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HIDDEN = 8192  # a norm's whole row is one tile of one program
MAX_HEAD_DIM = 512
SILU_BLOCK = 1024  # silu_and_mul needs no reduction: columns are tiled, any width fits
# The interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest
# even), so there ``_round`` rounds the bits itself first.
ROUND_BF16_BY_HAND = tl.constexpr(INTERPRET)


@triton.jit
def _round(x, dtype: tl.constexpr):
    """float32 ``x`` rounded to ``dtype`` (to nearest even), as torch rounds."""
    if ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def _f32_in(x, dtype: tl.constexpr):
    """float32 ``x`` through ``dtype`` and back: the value torch would hold in ``dtype``."""
    return _round(x, dtype).to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x,
    residual,
    weight,
    out,
    n_rows,
    hidden,
    inner,
    stride_xo,
    stride_xi,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # BLOCK_M rows per program, each whole in one tile. Row r of x sits at
    # (r // inner) * stride_xo + (r % inner) * stride_xi: a [T, H, D] view of
    # per-head rows (QK-norm on a slice of the QKV row) needs no copy.
    # ``residual`` and ``out`` are dense [n_rows, hidden].
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < hidden)[None, :]
    x_off = (rows // inner) * stride_xo + (rows % inner) * stride_xi
    v = tl.load(x + x_off[:, None] + cols[None, :], mask=mask, other=0.0)
    dense = rows[:, None] * hidden + cols[None, :]
    if HAS_RESIDUAL:
        # residual + x, rounded to the model dtype as torch's add rounds it;
        # the norm below reads the rounded sum, as TorchOps does.
        r = tl.load(residual + dense, mask=mask, other=0.0)
        v = _round(r.to(tl.float32) + v.to(tl.float32), residual.dtype.element_ty)
        tl.store(residual + dense, v, mask=mask)
    vf = v.to(tl.float32)
    mean = tl.sum(vf * vf, axis=1) / hidden
    # The normalised row is rounded to the dtype before the weight multiplies
    # it (TorchOps: ``weight * xf.to(dtype)``), and the product once more.
    y = _f32_in(vf * tl.math.rsqrt(mean + eps)[:, None], out.dtype.element_ty)
    w = tl.load(weight + cols, mask=cols < hidden, other=0.0)
    o = w.to(tl.float32)[None, :] * y
    tl.store(out + dense, _round(o, out.dtype.element_ty), mask=mask)


@triton.jit
def _silu_and_mul_kernel(
    gate_up, out, n_rows, inter, stride_in, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < inter)[None, :]
    src = gate_up + rows[:, None] * stride_in + cols[None, :]
    g = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(src + inter, mask=mask, other=0.0).to(tl.float32)
    dtype = out.dtype.element_ty
    # torch rounds F.silu(gate) to the dtype before the multiply: so do we,
    # which keeps half precision equal to TorchOps (and to the HF models).
    s = _f32_in(g / (1.0 + tl.exp(-g)), dtype)
    tl.store(out + rows[:, None] * inter + cols[None, :], _round(s * u, dtype), mask=mask)


@triton.jit
def _rotate_heads(
    x,
    t,
    t_mask,
    stride_t,
    stride_h,
    heads,
    half,
    c1,
    c2,
    s1,
    s2,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # In place on [BLOCK_T, BLOCK_H, BLOCK_HALF] (tokens, heads, first half)
    # and the matching second halves. Each product and the sum are rounded
    # to x's dtype, as TorchOps' ``x * cos + rotated * sin`` rounds them.
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    off = t[:, None, None] * stride_t + h[None, :, None] * stride_h + j[None, None, :]
    mask = t_mask[:, None, None] & (h < heads)[None, :, None] & (j < half)[None, None, :]
    a = tl.load(x + off, mask=mask, other=0.0)
    b = tl.load(x + off + half, mask=mask, other=0.0)
    dtype = a.dtype
    a, b = a.to(tl.float32), b.to(tl.float32)
    c1, c2 = c1[:, None, :], c2[:, None, :]
    s1, s2 = s1[:, None, :], s2[:, None, :]
    new_a = _f32_in(a * c1, dtype) - _f32_in(b * s1, dtype)
    new_b = _f32_in(b * c2, dtype) + _f32_in(a * s2, dtype)
    tl.store(x + off, _round(new_a, dtype), mask=mask)
    tl.store(x + off + half, _round(new_b, dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q,
    k,
    cos,
    sin,
    positions,
    n_tokens,
    q_heads,
    k_heads,
    half,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    stride_sin,
    BLOCK_T: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    # q and k of BLOCK_T tokens in one program: each token's table rows are
    # read once for all its heads. Both halves of the tables are read (not
    # assumed equal), then rounded to q's dtype as TorchOps casts them.
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    t_mask = t < n_tokens
    pos = tl.load(positions + t, mask=t_mask, other=0).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)
    c_mask = t_mask[:, None] & (j < half)[None, :]
    c_off = pos[:, None] * stride_cos + j[None, :]
    s_off = pos[:, None] * stride_sin + j[None, :]
    dtype = q.dtype.element_ty
    c1 = _f32_in(tl.load(cos + c_off, mask=c_mask, other=0.0).to(tl.float32), dtype)
    c2 = _f32_in(tl.load(cos + c_off + half, mask=c_mask, other=0.0).to(tl.float32), dtype)
    s1 = _f32_in(tl.load(sin + s_off, mask=c_mask, other=0.0).to(tl.float32), dtype)
    s2 = _f32_in(tl.load(sin + s_off + half, mask=c_mask, other=0.0).to(tl.float32), dtype)
    _rotate_heads(
        q, t, t_mask, stride_qt, stride_qh, q_heads, half, c1, c2, s1, s2, BLOCK_HQ, BLOCK_HALF
    )
    _rotate_heads(
        k, t, t_mask, stride_kt, stride_kh, k_heads, half, c1, c2, s1, s2, BLOCK_HK, BLOCK_HALF
    )


# -- launch configurations (shared with tests/support/triton_compile_check.py) ---------------
#
# On a GPU a program gets about 2-4K elements: one row of a 2048-wide norm,
# or several rows of a narrow one; the block is not shrunk to the row count,
# so one compiled variant serves every batch size. The interpreter runs
# programs one after another in Python, so there a program takes as many
# rows as exist (up to a larger budget): fewer programs, faster tests.


def _rows_per_program(row_elems: int, n_rows: int, interpret: bool) -> int:
    if interpret:
        return max(1, min(triton.next_power_of_2(n_rows), 2**16 // row_elems))
    return max(1, 2048 // row_elems)


def _warps(elems: int) -> int:
    # About 16 elements a thread, 1 to 8 warps, rounded down to a power of two
    # (triton requires one; rotary's element count need not be).
    n = max(1, min(8, elems // 512))
    return 1 << (n.bit_length() - 1)


def norm_config(hidden: int, n_rows: int, interpret: bool = INTERPRET) -> dict[str, int]:
    block_n = triton.next_power_of_2(hidden)
    block_m = _rows_per_program(block_n, n_rows, interpret)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": _warps(block_m * block_n)}


def silu_config(inter: int, n_rows: int, interpret: bool = INTERPRET) -> dict[str, int]:
    block_n = min(triton.next_power_of_2(inter), SILU_BLOCK)
    block_m = _rows_per_program(block_n, n_rows, interpret)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": _warps(block_m * block_n)}


def rotary_config(
    q_heads: int, k_heads: int, head_dim: int, n_tokens: int, interpret: bool = INTERPRET
) -> dict[str, int]:
    bq, bk = triton.next_power_of_2(q_heads), triton.next_power_of_2(k_heads)
    bh = triton.next_power_of_2(head_dim // 2)
    per_token = (bq + bk) * bh * 2
    block_t = _rows_per_program(per_token, n_tokens, interpret)
    return {
        "BLOCK_T": block_t,
        "BLOCK_HQ": bq,
        "BLOCK_HK": bk,
        "BLOCK_HALF": bh,
        "num_warps": _warps(block_t * per_token),
    }


# -- the ops ---------------------------------------------------------------------------


def _on_device(*tensors: torch.Tensor) -> bool:
    dev = tensors[0].device
    if not (dev.type == "cuda" or (INTERPRET and dev.type == "cpu")):
        return False
    return all(t.device == dev for t in tensors)


def _row_layout(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(inner, outer stride, inner stride) addressing x's rows, or None if they can't be."""
    if x.dim() == 0 or x.stride(-1) != 1:
        return None
    if x.dim() == 1:
        return 1, 0, 0
    if x.dim() == 2:
        return 1, x.stride(0), 0
    if x.dim() == 3:
        return x.shape[1], x.stride(0), x.stride(1)
    if x.is_contiguous():
        return 1, x.shape[-1], 0
    return None


class TritonOps(TorchOps):
    def rms_norm(self, x, weight, eps):
        layout = _row_layout(x)
        hidden = x.shape[-1] if x.dim() else 0
        if (
            layout is None
            or x.dtype not in DTYPES
            or weight.dtype != x.dtype  # TorchOps would promote; keep its result type
            or weight.shape != (hidden,)
            or weight.stride(0) != 1
            or not 0 < hidden <= MAX_HIDDEN
            or x.numel() == 0
            or not _on_device(x, weight)
        ):
            return super().rms_norm(x, weight, eps)
        n_rows = x.numel() // hidden
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self._norm(x, None, weight, out, eps, n_rows, hidden, layout)
        return out

    def add_rms_norm(self, x, residual, weight, eps):
        layout = _row_layout(x)
        hidden = x.shape[-1] if x.dim() else 0
        if (
            layout is None
            or x.dim() > 2
            or x.dtype not in DTYPES
            or residual.dtype != x.dtype
            or weight.dtype != x.dtype
            or residual.shape != x.shape
            or not residual.is_contiguous()  # no overlapping rows: safe to write in place
            or weight.shape != (hidden,)
            or weight.stride(0) != 1
            or not 0 < hidden <= MAX_HIDDEN
            or x.numel() == 0
            or not _on_device(x, residual, weight)
        ):
            return super().add_rms_norm(x, residual, weight, eps)
        n_rows = x.numel() // hidden
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self._norm(x, residual, weight, out, eps, n_rows, hidden, layout)
        return out, residual

    @staticmethod
    def _norm(x, residual, weight, out, eps, n_rows, hidden, layout):
        cfg = norm_config(hidden, n_rows)
        inner, stride_o, stride_i = layout
        grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
        _rms_norm_kernel[grid](
            x,
            residual if residual is not None else out,  # unused without HAS_RESIDUAL
            weight,
            out,
            n_rows,
            hidden,
            inner,
            stride_o,
            stride_i,
            eps,
            HAS_RESIDUAL=residual is not None,
            **cfg,
        )

    def silu_and_mul(self, gate_up):
        width = gate_up.shape[-1] if gate_up.dim() else 0
        if (
            gate_up.dim() == 0
            or gate_up.stride(-1) != 1
            or not (gate_up.dim() <= 2 or gate_up.is_contiguous())
            or width % 2
            or gate_up.numel() == 0
            or gate_up.dtype not in DTYPES
            or not _on_device(gate_up)
        ):
            return super().silu_and_mul(gate_up)
        inter = width // 2
        n_rows = gate_up.numel() // width
        stride_in = gate_up.stride(0) if gate_up.dim() == 2 else width
        out = torch.empty((*gate_up.shape[:-1], inter), dtype=gate_up.dtype, device=gate_up.device)
        cfg = silu_config(inter, n_rows)
        grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]), triton.cdiv(inter, cfg["BLOCK_N"]))
        _silu_and_mul_kernel[grid](gate_up, out, n_rows, inter, stride_in, **cfg)
        return out

    def rotary(self, q, k, cos, sin, positions):
        if not _rotary_fits(q, k, cos, sin, positions):
            return super().rotary(q, k, cos, sin, positions)
        n_tokens, q_heads, head_dim = q.shape
        if n_tokens == 0:
            return q, k
        cfg = rotary_config(q_heads, k.shape[1], head_dim, n_tokens)
        grid = (triton.cdiv(n_tokens, cfg["BLOCK_T"]),)
        _rotary_kernel[grid](
            q,
            k,
            cos,
            sin,
            positions,
            n_tokens,
            q_heads,
            k.shape[1],
            head_dim // 2,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            cos.stride(0),
            sin.stride(0),
            **cfg,
        )
        return q, k


def _rotary_fits(q, k, cos, sin, positions) -> bool:
    if q.dim() != 3 or k.dim() != 3 or cos.dim() != 2 or sin.dim() != 2 or positions.dim() != 1:
        return False
    head_dim = q.shape[2]
    return (
        q.dtype in DTYPES
        and k.dtype == q.dtype
        and cos.dtype in DTYPES
        and sin.dtype == cos.dtype
        and positions.dtype in (torch.int64, torch.int32)
        and k.shape[0] == q.shape[0] == positions.shape[0]
        and k.shape[2] == head_dim
        and head_dim % 2 == 0
        and 0 < head_dim <= MAX_HEAD_DIM
        and cos.shape[1] == sin.shape[1] == head_dim
        and q.stride(2) == k.stride(2) == cos.stride(1) == sin.stride(1) == 1
        and positions.is_contiguous()
        and _on_device(q, k, cos, sin, positions)
    )
