"""Float weights -> GGUF quantized blocks, in torch, vectorised over all blocks.

For quantizing HF float weights at load, so that they run on the same quantized
kernels as GGUF files. The byte layouts are GGML's (``ggml-common.h``); the
algorithms follow llama.cpp's reference quantizers (``ggml-quants.c``), written
again here over whole tensors instead of one block at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from candle_agents.engine.quant.tensor import QuantTensor

__all__ = ["SUPPORTED", "quantize", "quantize_matrix"]

Q = GGMLQuantizationType
SUPPORTED = (Q.Q8_0, Q.Q4_K)

# Sub-blocks of a K-quant super-block, and the scale/min search of make_qkx2_quants as
# quantize_row_q4_K_ref calls it: 4-bit values, iscale from (nmax - 1) / range to
# (nmax + 1) / range in 21 steps.
_QK_K, _SUB = 256, 32
_NMAX, _RMIN, _RDELTA, _NSTEP = 15, -1.0, 0.1, 20
# C evaluates `rmin + rdelta*is + nmax` in float32: the same numerators, rounded alike.
_STEPS = [
    float(np.float32(_RMIN) + np.float32(_RDELTA) * np.float32(i) + np.float32(_NMAX))
    for i in range(_NSTEP + 1)
]
# Super-blocks per chunk (bounds memory), and sub-blocks searched together (small enough
# for the search's few [sub-blocks, 32] temporaries to stay in cache).
_CHUNK = 8192
_SEARCH_CHUNK = 2048


def quantize(weight: torch.Tensor, qtype: GGMLQuantizationType | int) -> torch.Tensor:
    """Quantize a 2-D float ``weight`` [N, K] to GGUF blocks of ``qtype``.

    Returns a contiguous uint8 tensor [N, row_bytes], each row the row's blocks as a
    GGUF file stores them (``gguf.quants.dequantize(out.numpy(), qtype)`` reads it
    back). Supports Q8_0 (byte for byte what ``gguf.quants.quantize`` and llama.cpp's
    ``quantize_row_q8_0_ref`` give) and Q4_K (llama.cpp's ``quantize_row_q4_K_ref``
    algorithm, the one ``llama-quantize`` uses without an importance matrix). Raises
    ValueError for other types, for K not a multiple of the block size, and for
    inputs that are not 2-D.
    """
    try:
        qtype = Q(qtype)
    except ValueError:
        raise ValueError(f"unknown GGML quantization type {qtype!r}") from None
    if qtype not in SUPPORTED:
        names = ", ".join(t.name for t in SUPPORTED)
        raise ValueError(f"cannot quantize to {qtype.name}: supported types are {names}")
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [rows, columns], got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    if cols % block:
        raise ValueError(
            f"{qtype.name} needs rows whose length is a multiple of {block}: this weight's "
            f"rows have {cols} values (shape {tuple(weight.shape)})"
        )
    x = weight.detach().to(device="cpu", dtype=torch.float32).reshape(-1, block)
    out = torch.empty(x.shape[0], type_size, dtype=torch.uint8)
    step = _CHUNK * (_QK_K // block)
    for start in range(0, x.shape[0], step):
        stop = min(start + step, x.shape[0])
        chunk = x[start:stop]
        out[start:stop] = _q8_0(chunk) if qtype == Q.Q8_0 else _q4_k(chunk)
    return out.reshape(rows, (cols // block) * type_size)


def _round_away(t: torch.Tensor) -> torch.Tensor:
    """C's roundf (halves away from zero), computed as gguf-py's np_roundf does: floor(a +
    0.5) would round 0.49999997 up, as a + 0.5 rounds to 1 in float32."""
    a = t.abs()
    floored = a.floor()
    return torch.copysign(floored + (2 * (a - floored)).floor(), t)


def _fp16_bytes(t: torch.Tensor) -> torch.Tensor:
    """[B] float32 -> [B, 2] uint8, little-endian fp16 (round to nearest even)."""
    return t.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    """[B, 32] -> [B, 34]: fp16 d = amax / 127, then 32 int8 round(x / d) (with the
    float32 d, as the reference does, not the stored fp16 one)."""
    d = x.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, 0.0, 1 / d)
    qs = _round_away(x * inv).to(torch.int8).view(torch.uint8)
    return torch.cat([_fp16_bytes(d), qs], dim=1)


def _nearest(t: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int: round to nearest, halves to even (the FPU's default mode)."""
    return t.round()


def _scale_min_search(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qkx2_quants over every sub-block of ``x`` [M, 32] with weights ``w``.

    Returns (scale, min) [M] such that x ~ scale * L - min, L in 0..15, with the least
    weighted squared error found by the reference's search: start from range / 15 and
    the sub-block's min (clipped to <= 0); then, for 21 trial scales from 14 / range to
    16 / range, round x to levels, fit scale and min to those levels by least squares,
    and keep the fit if its error is lower. As in the reference, each trial's range
    and offset use the min kept so far, so the trials run one after another, each
    over all sub-blocks at once.
    """
    hi = x.amax(dim=1)
    lo = x.amin(dim=1).clamp(max=0)
    flat = hi == lo
    sum_w = w.sum(dim=1)
    sum_x = (w * x).sum(dim=1)
    sw, sx2 = sum_w.double(), 2 * sum_x.double()
    rows, chunk = x.shape[0], min(x.shape[0], _SEARCH_CHUNK)
    sums = torch.empty(3, rows)  # sum(w L), sum(w x L), sum(w L^2)
    lev = torch.empty(chunk, x.shape[1])
    prod = torch.empty(3, chunk, x.shape[1])

    def levels(iscale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Sums over the levels clamp(round(iscale * (x - offset)), 0, 15), a
        cache-sized slice of rows at a time."""
        for i in range(0, rows, chunk):
            j = min(i + chunk, rows)
            lv, p = lev[: j - i], prod[:, : j - i]
            torch.sub(x[i:j], offset[i:j, None], out=lv)
            lv.mul_(iscale[i:j, None]).clamp_(0, _NMAX).round_()
            torch.mul(w[i:j], lv, out=p[0])
            torch.mul(p[0], x[i:j], out=p[1])
            torch.mul(p[0], lv, out=p[2])
            torch.sum(p, dim=2, out=sums[:, i:j])
        return sums

    def error(fit: torch.Tensor, level_sums: torch.Tensor) -> torch.Tensor:
        """sum w (scale L + min - x)^2 less sum w x^2 (the same for every candidate),
        expanded over the sums. In float64: the expansion cancels large terms, which
        would cost float32 the digits that rank the candidates."""
        (scale, m), (sl, sxl, sl2) = fit.double(), level_sums.double()
        return scale * (scale * sl2 + 2 * (m * sl - sxl)) + m * (m * sw - sx2)

    # State: the kept fit (scale, min) and its error; first range / 15 and the min.
    span = torch.where(flat, 1.0, hi - lo)
    fit = torch.stack([1 / (_NMAX / span), lo])
    best = error(fit, levels(_NMAX / span, lo))
    for numerator in _STEPS:
        mn = fit[1]
        sl, sxl, sl2 = levels(numerator / torch.where(flat, 1.0, hi - mn), mn)
        # Least squares for scale and min (float32, as the reference); det <= 0 means
        # no fit (a flat sub-block has det 0, so it keeps scale 0).
        det = sum_w * sl2 - sl * sl
        this = torch.stack([sum_w * sxl - sum_x * sl, sl2 * sum_x - sl * sxl]) / det
        # A positive min would need negative levels: fit the scale alone instead.
        pos = this[1] > 0
        this[1].clamp_(max=0)
        this[0] = torch.where(pos, sxl / sl2, this[0])
        err = error(this, sums)
        better = (det > 0) & (err < best)
        best = torch.where(better, err, best)
        fit = torch.where(better, this, fit)
    return torch.where(flat, 0.0, fit[0]), -fit[1]


def _q4_k(x: torch.Tensor) -> torch.Tensor:
    """[B, 256] -> [B, 144]: fp16 d, fp16 dmin, 12 bytes of 6-bit sub-block scales and
    mins, 128 bytes of 4-bit levels (quantize_row_q4_K_ref)."""
    nb = x.shape[0]
    sub = x.reshape(-1, _SUB)
    # Weights favour large values: rms of the sub-block + |x|.
    w = (sub.square().sum(dim=1, keepdim=True) / _SUB).sqrt() + sub.abs()
    scales, mins = _scale_min_search(sub, w)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)

    # 6-bit scales and mins against the block's largest of each.
    max_scale = scales.amax(dim=1, keepdim=True)
    max_min = mins.amax(dim=1, keepdim=True)
    inv_scale = torch.where(max_scale > 0, 63 / max_scale, 0.0)
    inv_min = torch.where(max_min > 0, 63 / max_min, 0.0)
    ls = _nearest(inv_scale * scales).clamp(max=63).to(torch.uint8)
    lm = _nearest(inv_min * mins).clamp(max=63).to(torch.uint8)
    d16 = (max_scale / 63).to(torch.float16)
    dmin16 = (max_min / 63).to(torch.float16)

    # Levels against the scales as stored (fp16 times 6-bit integers).
    d = d16.float() * ls.float()
    dm = dmin16.float() * lm.float()
    safe_d = torch.where(d == 0, 1.0, d)
    lev = _nearest((x.reshape(nb, 8, _SUB) + dm[..., None]) / safe_d[..., None])
    # A sub-block whose scale is 0 dequantizes to -dm whatever its levels: 0 for those
    # (the reference leaves the search's levels there, which read back the same).
    lev = torch.where(d[..., None] == 0, 0.0, lev.clamp(0, 15)).to(torch.uint8)

    # Scales: bytes 0-3 the low 6 bits of scales 0-3 (top 2 bits: scales 4-7's high
    # bits), 4-7 likewise for the mins, 8-11 low nibbles of scales 4-7 | mins 4-7 << 4.
    packed = torch.empty(nb, 12, dtype=torch.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    # Levels: each 64 values as 32 bytes, the first 32 in the low nibbles.
    lev = lev.reshape(nb, 4, 2, _SUB)
    qs = (lev[:, :, 0] | (lev[:, :, 1] << 4)).reshape(nb, 128)
    d_bytes = d16.view(torch.uint8).reshape(nb, 2)
    dmin_bytes = dmin16.view(torch.uint8).reshape(nb, 2)
    return torch.cat([d_bytes, dmin_bytes, packed, qs], dim=1)


def quantize_matrix(weight: torch.Tensor, qtype: int | None) -> QuantTensor:
    """A float matrix as ``qtype`` blocks, for a layer quantized at load.

    Rows too short for the type's blocks fall back to Q8_0 (llama.cpp's quantizer
    falls back too, for K-quants of narrow tensors), then to float32; None keeps
    float32 (the parts of a quantized layer that a checkpoint stores as floats).
    """
    rows, cols = weight.shape
    if qtype is not None and cols % GGML_QUANT_SIZES[Q(qtype)][0] == 0:
        return QuantTensor(quantize(weight, qtype), int(qtype), (rows, cols))
    if qtype is not None and qtype != Q.Q8_0 and cols % 32 == 0:
        return quantize_matrix(weight, Q.Q8_0)
    data = weight.float().contiguous().view(torch.uint8).reshape(rows, -1)
    return QuantTensor(data, int(Q.F32), (rows, cols))
