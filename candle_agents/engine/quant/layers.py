"""Linear and embedding layers whose weights stay in GGUF block formats.

Every model uses them unchanged: the loader swaps them in for ``nn.Linear``
and ``nn.Embedding`` where the checkpoint's weights are quantized (or are to
be quantized at load), and ``load_rows`` fills them part by part (a fused
QKV projection may hold Q4_K rows for Q and K and Q6_K rows for V).

Matmuls run in the C kernels (``cpu_kernels.quant_gemm``):
- up to ``PREFILL_MIN_ROWS`` rows (decode steps): straight from the blocks,
  on the exact path (weights dequantized in registers, float32 sums) or the
  int8 one (activations quantized per block, integer dot products);
- more rows (prefill chunks): the matrix is dequantized into a reused float
  buffer and multiplied by every row at once with torch's GEMM (dequantizing
  costs ~1% of that GEMM at prefill sizes). On the int8 path, where the CPU
  multiplies bfloat16 matrices much faster than float32 (oneDNN on AMX or
  AVX512-BF16: 3-5x here), that buffer and the rows are bfloat16 instead.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

from candle_agents.engine import cpu_kernels
from candle_agents.engine.quant.quantize import quantize_matrix
from candle_agents.engine.quant.tensor import QuantTensor

__all__ = ["PREFILL_MIN_ROWS", "QuantEmbedding", "QuantLinear"]

PREFILL_MIN_ROWS = 64
# The most float32 weight bytes the prefill path dequantizes at once (per thread).
_SCRATCH_BYTES = 32 << 20
_scratch_local = threading.local()


def _scratch(rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A [rows, cols] buffer reused across calls on this thread: allocating
    megabytes per matmul would page-fault them in every time."""
    name = f"buf_{dtype}"
    buf = getattr(_scratch_local, name, None)
    if buf is None or buf.numel() < rows * cols:
        buf = torch.empty(rows * cols, dtype=dtype)
        setattr(_scratch_local, name, buf)
    return buf[: rows * cols].view(rows, cols)


@functools.cache
def bf16_matmul_pays() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16, and AMX
    on the CPUs that have it): torch's GEMM then runs 3-5x faster in bfloat16 than
    in float32 at prompt sizes (measured on a 2-vCPU Xeon with AMX). Elsewhere
    bfloat16 is emulated, slower than float32. A CPU flag, not a timing: timed
    probes at load read 1.5x under other load and 4x on a quiet machine."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


class _BlockWeights(nn.Module):
    """Holds ``QuantTensor`` parts covering rows ``[0, rows)`` of one weight matrix."""

    def __init__(self, rows: int, cols: int, quantize_to: int | None) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.quantize_to = quantize_to
        self.parts: list[tuple[int, QuantTensor]] = []

    def load_rows(self, start: int, weight: QuantTensor | torch.Tensor) -> None:
        """Rows ``start..`` of the weight: blocks as they are, or a float matrix that is
        quantized to ``quantize_to`` (or kept as float32 blocks where that is None)."""
        if not isinstance(weight, QuantTensor):
            weight = quantize_matrix(weight.detach().float().contiguous(), self.quantize_to)
        rows, cols = weight.shape
        if cols != self.cols or start < 0 or start + rows > self.rows:
            raise ValueError(
                f"rows {start}..{start + rows} of a {cols}-column weight do not fit a "
                f"[{self.rows}, {self.cols}] matrix"
            )
        self.parts = sorted([*self.parts, (start, weight)], key=lambda p: p[0])
        self.register_buffer(f"blocks_{len(self.parts) - 1}", weight.data, persistent=False)

    def check_complete(self, name: str) -> None:
        covered = 0
        for start, weight in self.parts:
            if start != covered:
                break
            covered += weight.shape[0]
        if covered != self.rows:
            raise ValueError(f"{name}: the checkpoint filled {covered} of {self.rows} rows")

    def merge_parts(self) -> None:
        """Join neighbouring parts of one type (Q, K and V rows of a fused projection):
        one kernel call a step instead of one per part, the same bytes."""
        merged: list[tuple[int, QuantTensor]] = []
        for start, w in self.parts:
            if merged and merged[-1][1].qtype == w.qtype:
                first, prev = merged[-1]
                data = torch.cat([prev.data, w.data])
                merged[-1] = (first, QuantTensor(data, w.qtype, (data.shape[0], self.cols)))
            else:
                merged.append((start, w))
        for name in [n for n, _ in self.named_buffers(recurse=False)]:
            delattr(self, name)
        self.parts = merged
        for i, (_, w) in enumerate(merged):
            self.register_buffer(f"blocks_{i}", w.data, persistent=False)

    def weight_bytes(self) -> int:
        return sum(w.nbytes for _, w in self.parts)

    def dequantized(self) -> torch.Tensor:
        """The whole float32 matrix (for tests and references)."""
        return torch.cat([w.dequantize() for _, w in self.parts])


class QuantLinear(_BlockWeights):
    """``y = x @ W.T + b`` with ``W`` in block formats; ``b`` stays a float parameter."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        quantize_to: int | None = None,
        int8_activations: bool = False,
    ) -> None:
        super().__init__(out_features, in_features, quantize_to)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.int8_activations = int8_activations
        # Prompt-sized matmuls in bfloat16: only where activations are already
        # rounded (the int8 path) and the CPU is fast at it.
        self.prefill_dtype = (
            torch.bfloat16 if int8_activations and bf16_matmul_pays() else torch.float32
        )
        self._calls: list[tuple] = []
        self._bias32: torch.Tensor | None = None

    @property
    def fast(self) -> int:
        return int(self.int8_activations)

    @classmethod
    def tied_to(cls, embedding: QuantEmbedding, int8_activations: bool) -> QuantLinear:
        """An output head that reads the embedding's blocks (no second copy)."""
        head = cls(embedding.cols, embedding.rows, int8_activations=int8_activations)
        head.parts = embedding.parts
        head.prepare()
        return head

    def prepare(self) -> None:
        """Fix the kernel calls of the decode path once the weights are loaded: it runs
        hundreds of times a token, so nothing is looked up or checked per call."""
        bias = None if self.bias is None else self.bias.detach().float().contiguous()
        self._bias32 = bias
        self._calls = [
            (
                w.qtype,
                w.data.data_ptr(),
                w.shape[0],
                start * 4,  # byte offset of the part's first output column
                None if bias is None else bias[start:].data_ptr(),
            )
            for start, w in self.parts
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32 or x2.stride(-1) != 1:
            x2 = x2.float().contiguous()
        m = x2.shape[0]
        if m >= PREFILL_MIN_ROWS:
            out = self._prefill(x2)
        else:
            out = x2.new_empty(m, self.out_features)
            gemm, threads = cpu_kernels.quant_gemm_raw, cpu_kernels.num_threads()
            x_ptr, out_ptr, ldx, fast = x2.data_ptr(), out.data_ptr(), x2.stride(0), self.fast
            for qtype, w_ptr, rows, offset, bias_ptr in self._calls:
                gemm(
                    qtype,
                    w_ptr,
                    rows,
                    self.in_features,
                    x_ptr,
                    m,
                    ldx,
                    bias_ptr,
                    out_ptr + offset,
                    self.out_features,
                    fast,
                    threads,
                )
        return out.view(*lead, self.out_features).to(x.dtype)

    def _prefill(self, x: torch.Tensor) -> torch.Tensor:
        # Whole matrices (or slabs of _SCRATCH_BYTES) dequantized into one reused
        # buffer, then torch's GEMM: as fast as float32 weights (measured on
        # SmolLM2, 2048 rows: 1.68 s either way; slabs of 1 MiB multiplied into a
        # transposed output took 2.8 s).
        dtype = self.prefill_dtype
        xd = x.to(dtype)
        step = max(1, _SCRATCH_BYTES // (dtype.itemsize * self.in_features))
        bias = self._bias32
        if len(self.parts) == 1 and self.out_features <= step:
            weight = self._dequantized(self.parts[0][1], 0, self.out_features)
            if dtype == torch.float32:  # the bias inside the GEMM, as F.linear on floats
                bias, out = None, F.linear(xd, weight, bias)
            else:
                out = F.linear(xd, weight)
        else:
            out = x.new_empty(x.shape[0], self.out_features, dtype=dtype)
            for start, w in self.parts:
                for r0 in range(0, w.shape[0], step):
                    r1 = min(w.shape[0], r0 + step)
                    out[:, start + r0 : start + r1] = F.linear(xd, self._dequantized(w, r0, r1))
        out = out.float()
        if bias is not None:
            out += bias
        return out

    def _dequantized(self, w: QuantTensor, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of part ``w`` in ``prefill_dtype``, in this thread's scratch."""
        buf = _scratch(r1 - r0, self.in_features, self.prefill_dtype)
        return cpu_kernels.quant_dequant_rows(w.data[r0:r1], w.qtype, self.in_features, out=buf)

    def extra_repr(self) -> str:
        kinds = sorted({w.type_name for _, w in self.parts})
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, types={'+'.join(kinds) or 'unloaded'}"
        )


class QuantEmbedding(_BlockWeights):
    """Token embedding whose rows are dequantized on lookup."""

    def __init__(self, num_embeddings: int, embedding_dim: int, quantize_to: int | None = None):
        super().__init__(num_embeddings, embedding_dim, quantize_to)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        (_, w), *rest = self.parts  # a checkpoint stores the embedding as one tensor
        assert not rest, "an embedding has one part"
        rows = ids.reshape(-1).to(torch.int64)
        out = cpu_kernels.quant_dequant_rows(w.data, w.qtype, self.embedding_dim, rows=rows)
        return out.view(*ids.shape, self.embedding_dim).to(self.dtype)

    def extra_repr(self) -> str:
        kinds = sorted({w.type_name for _, w in self.parts})
        return f"{self.num_embeddings}, {self.embedding_dim}, types={'+'.join(kinds) or 'unloaded'}"
