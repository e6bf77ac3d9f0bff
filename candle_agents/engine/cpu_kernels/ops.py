"""Float kernels: paged decode attention, K/V stores, norms, SiLU, rotary, panel GEMM,
and the whole-decode-step entry points (``decode_stack.c``)."""

from __future__ import annotations

import torch

from candle_agents.engine.cpu_kernels import library
from candle_agents.engine.cpu_kernels.library import num_threads

MAX_HEAD_DIM = 256  # kernels.c keeps one K and one V row on the stack
# kernels.c's cache element types
CACHE_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of one query per sequence over its paged K/V history.

    ``q`` is [batch, heads, head_dim]; caches are [num_blocks, kv_heads,
    block_size, head_dim] in float32, bfloat16 or float16; ``block_tables`` [batch, n]
    and ``seq_lens`` [batch] are int64. Returns float32 [batch, heads, head_dim].

    With ``window`` each query sees its last ``window`` positions only; table
    entries of blocks wholly before them are never read. ``softcap`` caps the
    scaled scores to ``softcap * tanh(s / softcap)``.
    """
    library.require()
    q = q.float().contiguous()
    batch, heads, head_dim = q.shape
    _, kv_heads, block_size, _ = k_cache.shape
    if k_cache.dtype not in CACHE_TYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"paged_decode_attention: unsupported cache dtype {k_cache.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_decode_attention: caches must be contiguous")
    if head_dim > MAX_HEAD_DIM or heads % kv_heads or k_cache.shape[-1] != head_dim:
        raise ValueError(
            f"paged_decode_attention: heads={heads}, kv_heads={kv_heads}, "
            f"head_dim={head_dim} (cache {k_cache.shape[-1]}) are not supported"
        )
    if window is not None and window < 1:
        raise ValueError(f"paged_decode_attention: window={window} must be at least 1")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"paged_decode_attention: softcap={softcap} must be positive")
    tables = block_tables.to(torch.int64).contiguous()
    lens = seq_lens.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    rc = library._lib.paged_decode_attention(
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        CACHE_TYPES[k_cache.dtype],
        tables.data_ptr(),
        tables.shape[1],
        lens.data_ptr(),
        out.data_ptr(),
        batch,
        heads,
        kv_heads,
        head_dim,
        block_size,
        scale,
        window or 0,  # 0: no window
        softcap or 0.0,  # 0: no cap
        num_threads(),
    )
    if rc != 0:
        raise MemoryError("paged_decode_attention: out of memory for attention scores")
    return out


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Write token i's ``key``/``value`` [tokens, kv_heads, head_dim] (float32, heads
    contiguous in a row, rows may be strided) to cache slot ``slots[i]`` (int64,
    contiguous), rounded to nearest even where the cache is 16-bit, as torch does."""
    _, kv_heads, block_size, head_dim = k_cache.shape
    library._lib.store_kv(
        key.data_ptr(),
        key.stride(0),
        value.data_ptr(),
        value.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        CACHE_TYPES[k_cache.dtype],
        slots.data_ptr(),
        slots.shape[0],
        kv_heads,
        head_dim,
        block_size,
    )


# -- fused float32 elementwise ops (callers check dtype, device and layout) --------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / rms(x)`` over the last axis of a contiguous float32 tensor."""
    out = torch.empty_like(x)
    dim = x.shape[-1]
    library._lib.rms_norm(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps, num_threads()
    )
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` then ``x = norm(residual)``, both in place; returns (x, residual)."""
    dim = x.shape[-1]
    library._lib.add_rms_norm(
        x.data_ptr(),
        residual.data_ptr(),
        weight.data_ptr(),
        x.numel() // dim,
        dim,
        eps,
        num_threads(),
    )
    return x, residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up`` = [rows, 2 * inter] (gate first)."""
    rows, width = gate_up.shape
    out = gate_up.new_empty(rows, width // 2)
    library._lib.silu_and_mul(gate_up.data_ptr(), out.data_ptr(), rows, width // 2, num_threads())
    return out


def rotary_(
    x: torch.Tensor,
    heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    head_dim: int | None = None,
) -> None:
    """Rotate, in place, the first ``heads`` heads of each row of ``x`` [rows, >= heads * d].

    ``x`` may be a column slice of a wider matrix (rows ``x.stride(0)`` apart,
    columns contiguous); ``cos``/``sin`` are [positions, d] tables. With ``head_dim``
    > d, heads are ``head_dim`` apart and only their first d values turn.
    """
    d = cos.shape[-1]
    library._lib.rotary(
        x.data_ptr(),
        x.stride(0),
        heads,
        cos.data_ptr(),
        sin.data_ptr(),
        positions.data_ptr(),
        x.shape[0],
        d,
        head_dim or d,
        num_threads(),
    )


# -- small-M float32 matmul on panel-packed weights ------------------------------

PANEL = 32  # output columns per panel (kernels.c: NR)


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [N, K] as the ``[ceil(N / 32), K, 32]`` panels ``gemm_packed`` reads."""
    n, k = weight.shape
    padded = -(-n // PANEL) * PANEL
    w = weight.detach().float()
    if padded != n:
        w = torch.cat([w, w.new_zeros(padded - n, k)])
    return w.view(padded // PANEL, PANEL, k).transpose(1, 2).contiguous()


def gemm_packed(
    x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, n: int
) -> torch.Tensor | None:
    """``x @ W.T (+ bias)`` for a contiguous float32 ``x`` of at most 64 rows (GEMM_MAX_M).

    ``panels`` comes from ``pack_panels(W)``; ``n`` is W's row count. Returns
    None where the library has no vector path for this CPU.
    """
    rows, k = x.shape
    out = x.new_empty(rows, n)
    rc = library._lib.gemm_packed(
        x.data_ptr(),
        rows,
        k,
        panels.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        n,
        out.data_ptr(),
        num_threads(),
    )
    return out if rc == 0 else None


# -- a whole decode step (engine/decode_stack.py describes the model) -------------


def decode_stack_scratch(model_ref, m: int) -> int:
    """Bytes of scratch a ``decode_stack`` step of ``m`` rows needs."""
    return library._lib.decode_stack_scratch(model_ref, m)


def decode_stack(model_ref, m: int, *pointers_and_sizes) -> int:
    """Every layer of one decode step (``decode_stack.c``); 0, or -1 out of memory."""
    return library._lib.decode_stack(model_ref, m, *pointers_and_sizes)
