"""A weight matrix kept in a GGUF block format: the bytes as stored, and what they mean.

Row ``n`` of a ``[rows, cols]`` matrix is ``cols / block`` consecutive blocks
(GGML's layout), so rows can be sliced, permuted and concatenated as byte
rows without decoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["FLOAT_TYPES", "QuantTensor", "row_bytes"]

Q = GGMLQuantizationType
FLOAT_TYPES = frozenset({Q.F32, Q.F16, Q.BF16})


def row_bytes(qtype: int, cols: int) -> int:
    """Bytes of one row of ``cols`` values in ``qtype``; ValueError if not whole blocks."""
    block, size = GGML_QUANT_SIZES[Q(qtype)]
    if cols % block:
        raise ValueError(
            f"{Q(qtype).name} stores rows in blocks of {block} values; a row of {cols} is not "
            "a whole number of blocks"
        )
    return cols // block * size


@dataclass
class QuantTensor:
    """``data`` is a contiguous uint8 tensor ``[rows, row_bytes]`` of ``qtype`` blocks."""

    data: torch.Tensor
    qtype: int
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows, cols = self.shape
        expected = (rows, row_bytes(self.qtype, cols))
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != expected:
            raise ValueError(
                f"{self.type_name} tensor of shape {self.shape} needs uint8 data of shape "
                f"{expected}, got {self.data.dtype} {tuple(self.data.shape)}"
            )

    @property
    def type_name(self) -> str:
        return Q(self.qtype).name

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @classmethod
    def from_bytes(cls, raw: np.ndarray | torch.Tensor, qtype: int, shape: tuple[int, int]):
        """Wrap flat block bytes (copied only when they are not a writable uint8 tensor)."""
        rows, cols = (int(s) for s in shape)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True).reshape(-1))
        return cls(raw.view(torch.uint8).reshape(rows, -1), int(qtype), (rows, cols))

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix (the reference every kernel is checked against)."""
        from candle_agents.engine.loader.dequant import dequantize

        return dequantize(self.data.numpy(), self.qtype, self.shape)

    def permute_rows(self, order: torch.Tensor) -> QuantTensor:
        """Rows taken in ``order`` (a permutation): byte rows move whole."""
        return QuantTensor(self.data[order].contiguous(), self.qtype, self.shape)
