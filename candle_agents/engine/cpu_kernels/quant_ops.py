"""Quantized matmuls on GGUF block data (quant.c, quant_legacy*.c, quant_k*.c).

Weights stay in their GGUF block format: row n of W [N, K] is the uint8 row
``weight[n]`` of K / block blocks. The package re-exports every name here.
"""

from __future__ import annotations

import torch

from candle_agents.engine.cpu_kernels import library
from candle_agents.engine.cpu_kernels.library import available, num_threads, require


def quant_supported(qtype: int, fast: bool = False) -> bool:
    """Whether GGUF type ``qtype`` has quantized matmuls here (with ``fast``: integer ones)."""
    return available() and bool(require().quant_supported(int(qtype), int(fast)))


_QUANT_BLOCKS: dict[int, tuple[int, int]] = {}  # qtype -> (values, bytes) per block


def _row_bytes(qtype: int, k: int, who: str) -> int:
    # Cached: this runs on every call, hundreds of times a token.
    info = _QUANT_BLOCKS.get(qtype)
    if info is None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            name = GGMLQuantizationType(int(qtype)).name
        except ValueError:
            raise ValueError(f"{who}: unknown GGUF type {qtype}") from None
        if not require().quant_supported(int(qtype), 0):
            raise ValueError(f"{who}: GGUF type {name} has no kernel")
        info = _QUANT_BLOCKS[int(qtype)] = GGML_QUANT_SIZES[GGMLQuantizationType(int(qtype))]
    block, size = info
    if k <= 0 or k % block:
        raise ValueError(f"{who}: K={k} is not a positive multiple of the block size {block}")
    return k // block * size


def quant_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    qtype: int,
    bias: torch.Tensor | None = None,
    *,
    fast: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with ``W`` [N, K] kept in GGUF type ``qtype``.

    ``x`` is float32 [M, K] with contiguous rows (rows may be any stride
    apart); ``weight`` the contiguous uint8 [N, row_bytes] block data. With
    ``fast``, x is quantized to 8 bits per call and integer dots are used
    (types without them run exact). ``out`` (float32 [M, N], rows any stride
    apart, e.g. a column slice of a wider tensor) receives the result, which
    is returned. Raises ValueError for bad shapes, dtypes or types.
    """
    # Called hundreds of times a token: each check here is ~0.1 us.
    lib = require()
    if x.dtype != torch.float32 or not x.is_cpu or x.dim() != 2:
        raise ValueError(
            f"quant_gemm: x must be a 2-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)}"
        )
    m, k = x.shape
    sx = x.stride()
    if k > 1 and sx[1] != 1:
        raise ValueError(f"quant_gemm: x rows must be contiguous, got strides {sx}")
    if (
        weight.dtype != torch.uint8
        or not weight.is_cpu
        or weight.dim() != 2
        or not weight.is_contiguous()
    ):
        raise ValueError("quant_gemm: weight must be a contiguous 2-D uint8 CPU tensor")
    n, row_bytes = weight.shape
    want = _row_bytes(qtype, k, "quant_gemm")
    if row_bytes != want:
        raise ValueError(
            f"quant_gemm: a row of K={k} values takes {want} bytes in type {qtype}, "
            f"weight rows have {row_bytes}"
        )
    if bias is not None and (
        bias.dtype != torch.float32
        or not bias.is_cpu
        or bias.shape != (n,)
        or not bias.is_contiguous()
    ):
        raise ValueError(f"quant_gemm: bias must be a contiguous float32 CPU tensor [{n}]")
    if out is None:
        out = x.new_empty(m, n)
        ldo = n
    else:
        so = out.stride() if out.dim() == 2 else (0, 0)
        if (
            out.dtype != torch.float32
            or not out.is_cpu
            or out.shape != (m, n)
            or (n > 1 and so[1] != 1)
            or (m > 1 and so[0] < n)
        ):
            raise ValueError(f"quant_gemm: out must be float32 [{m}, {n}] with contiguous rows")
        ldo = so[0]
    rc = lib.quant_gemm(
        int(qtype),
        weight.data_ptr(),
        n,
        k,
        x.data_ptr(),
        m,
        sx[0],
        bias.data_ptr() if bias is not None else None,
        out.data_ptr(),
        ldo,
        int(fast),
        num_threads(),
    )
    if rc != 0:
        raise ValueError(f"quant_gemm: type {qtype} with K={k} is not supported")
    return out


def quant_dequant_rows(
    weight: torch.Tensor,
    qtype: int,
    k: int,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``rows`` (int64 indices; all rows when None) of ``weight`` as float32 [n, k].

    Bit for bit what ``gguf.quants.dequantize`` gives. ``out`` may be given
    ([n, k], rows any stride apart): float32, or bfloat16 for those values
    rounded to nearest even, as torch rounds.
    """
    lib = require()
    want = _row_bytes(qtype, k, "quant_dequant_rows")
    if weight.dim() != 2 or weight.dtype != torch.uint8 or not weight.is_contiguous():
        raise ValueError("quant_dequant_rows: weight must be a contiguous 2-D uint8 tensor")
    if weight.shape[1] != want:
        raise ValueError(
            f"quant_dequant_rows: a row of {k} values takes {want} bytes, weight rows have "
            f"{weight.shape[1]}"
        )
    if rows is not None:
        rows = rows.to(torch.int64).contiguous().view(-1)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= weight.shape[0]):
            raise ValueError(f"quant_dequant_rows: row index out of range [0, {weight.shape[0]})")
    n = weight.shape[0] if rows is None else rows.numel()
    if out is None:
        out = torch.empty(n, k, dtype=torch.float32)
    elif (
        out.dtype not in (torch.float32, torch.bfloat16)
        or out.shape != (n, k)
        or (k > 1 and out.stride(1) != 1)
    ):
        raise ValueError(
            f"quant_dequant_rows: out must be float32 or bfloat16 [{n}, {k}] with contiguous rows"
        )
    rc = lib.quant_dequant_rows(
        int(qtype),
        weight.data_ptr(),
        k,
        rows.data_ptr() if rows is not None else None,
        n,
        out.data_ptr(),
        out.stride(0),
        int(out.dtype == torch.bfloat16),
        num_threads(),
    )
    if rc != 0:
        raise ValueError(f"quant_dequant_rows: type {qtype} with K={k} is not supported")
    return out


def quant_gemm_raw(
    qtype: int,
    w_ptr: int,
    n: int,
    k: int,
    x_ptr: int,
    m: int,
    ldx: int,
    bias_ptr: int | None,
    out_ptr: int,
    ldo: int,
    fast: int,
    threads: int,
) -> None:
    """``quant_gemm`` on raw pointers, with no checks: for layers that validated their
    weights once at load (a decode step makes hundreds of these calls)."""
    lib = library._lib
    if lib.quant_gemm(qtype, w_ptr, n, k, x_ptr, m, ldx, bias_ptr, out_ptr, ldo, fast, threads):
        raise ValueError(f"quant_gemm: type {qtype} with K={k} is not supported")
