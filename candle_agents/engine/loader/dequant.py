"""Vectorised torch dequantisers for GGUF tensor data.

Each block format is unpacked with whole-tensor torch ops (no Python loop over
blocks) and computes in the same float32 operation order as the reference in
``gguf.quants``, so results match it bit for bit. Types without a kernel here
fall back to ``gguf.quants.dequantize`` (numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

__all__ = ["dequantize", "native_types"]

Q = GGMLQuantizationType
QK_K = 256


def dequantize(
    raw: np.ndarray, qtype: GGMLQuantizationType | int, shape: Sequence[int]
) -> torch.Tensor:
    """Dequantize GGUF tensor data to a float32 tensor of ``shape``.

    ``raw`` is the tensor's data as ``GGUFReader`` gives it (the raw block
    bytes as uint8, or a float array for F32/F16); ``shape`` is the logical
    shape in row-major (numpy / HF) order, i.e. GGML's ``ne`` reversed.
    """
    qtype = Q(qtype)
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if numel % block_size:
        raise ValueError(f"{qtype.name}: {numel} elements are not whole blocks of {block_size}")
    kernel = _KERNELS.get(qtype)
    if kernel is None:
        out = gguf_dequantize(np.asarray(raw), qtype)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)
    data = _as_bytes(raw)
    n_blocks = numel // block_size
    if data.numel() != n_blocks * type_size:
        raise ValueError(
            f"{qtype.name}: expected {n_blocks * type_size} bytes for shape {shape}, "
            f"got {data.numel()}"
        )
    return kernel(data.view(n_blocks, type_size)).reshape(shape)


def native_types() -> frozenset[GGMLQuantizationType]:
    """The types dequantized here rather than by the gguf package."""
    return frozenset(_KERNELS)


def _as_bytes(raw: np.ndarray) -> torch.Tensor:
    """A flat uint8 tensor that owns a copy of ``raw`` (GGUF data is a read-only memmap)."""
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    return torch.from_numpy(flat.copy())


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte ``offset`` of every block, as a float32 column."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """Split bytes into (low, high) nibbles: ``groups`` runs of ``width`` bytes give
    ``2 * groups`` runs of ``width`` values, each run's low nibbles before its high ones."""
    packed = packed.reshape(-1, groups, 1, width)
    return torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(-1, 2 * groups, width)


def _bits(packed: torch.Tensor, count: int, step: int) -> torch.Tensor:
    """Fields of ``step`` bits: field ``i`` of every byte becomes row ``i``."""
    shifts = torch.arange(0, count * step, step, dtype=torch.uint8).view(1, 1, count, 1)
    mask = (1 << step) - 1
    return (packed.reshape(packed.shape[0], -1, 1, packed.shape[-1]) >> shifts) & mask


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1).view(torch.float32)


def _f16_plain(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1).view(torch.float16).float()


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1).view(torch.bfloat16).float()


def _f64(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1).view(torch.float64).float()


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return q * d


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:], 1, 16).reshape(-1, 32).to(torch.int8) - 8
    return d * q.float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 4:], 1, 16).reshape(-1, 32).float()
    return d * q + m


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: bit ``j`` of the little-endian uint32 ``qh`` is the 5th bit of value ``j``."""
    return _bits(qh.reshape(-1, 1, 4), 8, 1).permute(0, 1, 3, 2).reshape(-1, 32)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    low = _nibbles(blocks[:, 6:], 1, 16).reshape(-1, 32)
    q = (low | (_q5_high(blocks[:, 2:6]) << 4)).to(torch.int8) - 16
    return d * q.float()


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    low = _nibbles(blocks[:, 8:], 1, 16).reshape(-1, 32)
    q = (low | (_q5_high(blocks[:, 4:8]) << 4)).float()
    return d * q + m


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12 bytes of Q4_K/Q5_K sub-block scales and mins (6 bits each, 8 of each).

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7
    the same for the mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and of
    mins 4-7 (high nibble).
    """
    s = packed.reshape(-1, 3, 4)
    sc_lo, mn_lo, mixed = s[:, 0], s[:, 1], s[:, 2]
    scales = torch.cat([sc_lo & 0x3F, (mixed & 0x0F) | ((sc_lo >> 2) & 0x30)], dim=1)
    mins = torch.cat([mn_lo & 0x3F, (mixed >> 4) | ((mn_lo >> 2) & 0x30)], dim=1)
    return scales, mins


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    scales, mins = _k_scales(blocks[:, 4:16])
    d = (d * scales.float()).unsqueeze(-1)
    dm = (dmin * mins.float()).unsqueeze(-1)
    q = _nibbles(blocks[:, 16:], 4, 32).float()
    return (d * q - dm).reshape(-1, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    scales, mins = _k_scales(blocks[:, 4:16])
    d = (d * scales.float()).unsqueeze(-1)
    dm = (dmin * mins.float()).unsqueeze(-1)
    low = _nibbles(blocks[:, 48:], 4, 32)
    high = _bits(blocks[:, 16:48], 8, 1).reshape(-1, 8, 32)
    q = (low | (high << 4)).float()
    return (d * q - dm).reshape(-1, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    low = _nibbles(blocks[:, :128], 2, 64).reshape(-1, 8, 32)
    high = _bits(blocks[:, 128:192].reshape(-1, 2, 32), 4, 2).reshape(-1, 8, 32)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(blocks, 208) * scales).unsqueeze(-1)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(-1, 16, 16).float()
    return (d * q).reshape(-1, QK_K)


_KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.F32: _f32,
    Q.F16: _f16_plain,
    Q.BF16: _bf16,
    Q.F64: _f64,
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
