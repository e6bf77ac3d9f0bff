"""C kernels for CPU inference, compiled on first use and called through ctypes.

The sources (every ``*.c`` and ``*.h`` beside this file) are plain C with no
torch headers, built into one library: a build takes a few seconds with the
system's C compiler. The library is cached under ``$CANDLE_AGENTS_CACHE``
(default ``~/.cache/candle-agents``), keyed by the sources, the flags and the
CPU. Where no compiler works, or ``CANDLE_AGENTS_CPU_KERNELS=0`` is set,
``available()`` is False and the engine keeps to its torch reference paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SOURCE_DIR = Path(__file__).parent
MAX_HEAD_DIM = 256  # kernels.c keeps one K and one V row on the stack
# Tried in order: the first set the compiler accepts wins. -march=native is
# where the speed comes from: the code picks its AVX-512 (VNNI), AVX2 or
# portable paths from what the compiler targets, which is what this CPU runs.
# AMX is never used, though -march=native may list it: some machines here
# advertise it and fault on its instructions. The kernels run on their own
# thread pool (pool.c); -fopenmp is for `omp simd` and release_thread_pool().
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-mcpu=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)
# CANDLE_AGENTS_CPU_ISA pins a lower x86 level instead of -march=native, to
# test (or work around) the other code paths on one machine.
_ISA_FLAGS = {
    "avx512": "-march=x86-64-v4",  # AVX-512 without VNNI
    "avx2": "-march=x86-64-v3",  # AVX2 + FMA
    "avxvnni": "-march=x86-64-v3 -mavxvnni",  # AVX2 with VNNI (Alder Lake and later clients)
    "generic": "-march=x86-64",  # SSE2 only: the portable C paths
}


def _flag_sets() -> list[list[str]]:
    isa = os.environ.get("CANDLE_AGENTS_CPU_ISA", "native")
    if isa == "native":
        return [list(f) for f in _FLAG_SETS]
    if isa not in _ISA_FLAGS:
        raise ValueError(f"CANDLE_AGENTS_CPU_ISA={isa!r}: use native, {', '.join(_ISA_FLAGS)}")
    flags = _ISA_FLAGS[isa].split()
    return [["-O3", *flags, "-fopenmp"], ["-O3", *flags]]


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def cache_dir() -> Path:
    root = os.environ.get("CANDLE_AGENTS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "candle-agents"


def _cpu_id() -> str:
    # A library built with -march=native must not be reused on another CPU
    # that shares the cache directory.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _sources() -> list[Path]:
    return sorted(_SOURCE_DIR.glob("*.c"))


def _build(compiler: str, out: Path) -> bool:
    source = b"".join(p.name.encode() + p.read_bytes() for p in sorted(_SOURCE_DIR.glob("*.[ch]")))
    for flags in _flag_sets():
        key = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), compiler.encode(), _cpu_id().encode()])
        ).hexdigest()[:16]
        target = out / f"kernels-{key}.so"
        if target.exists():
            return _open(target)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out)
        os.close(fd)
        cmd = [compiler, *flags, "-std=c11", "-shared", "-fPIC", f"-I{_SOURCE_DIR}"]
        cmd += [*map(str, _sources()), "-o", tmp, "-lm", "-lpthread"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.info("CPU kernels: %s failed: %s", compiler, exc)
            os.unlink(tmp)
            return False
        if done.returncode != 0:
            logger.debug("CPU kernels: %s rejected %s: %s", compiler, flags, done.stderr[-500:])
            os.unlink(tmp)
            continue
        # Atomic: another process building at the same time sees a whole file or none.
        os.replace(tmp, target)
        return _open(target)
    return False


def _open(path: Path) -> bool:
    global _lib
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        logger.info("CPU kernels: cannot load %s: %s", path, exc)
        return False
    ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    signatures = {
        "paged_decode_attention": (
            i32,
            [ptr, ptr, ptr, i32, ptr, i64, ptr, ptr, i32, i32, i32, i32, i32, f32, i32],
        ),
        "pool_threads": (i32, []),
        "pool_shutdown": (None, []),
        "rms_norm": (None, [ptr, ptr, ptr, i64, i32, f32, i32]),
        "add_rms_norm": (None, [ptr, ptr, ptr, i64, i32, f32, i32]),
        "silu_and_mul": (None, [ptr, ptr, i64, i32, i32]),
        "rotary": (None, [ptr, i64, i32, ptr, ptr, ptr, i64, i32, i32]),
        "gemm_packed": (i32, [ptr, i64, i64, ptr, ptr, i64, ptr, i32]),
        "release_thread_pool": (i32, []),
        "quant_supported": (i32, [i32, i32]),
        "quant_gemm": (i32, [i32, ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, i32, i32]),
        "quant_dequant_rows": (i32, [i32, ptr, i64, ptr, i64, ptr, i64, i32]),
        "store_kv": (None, [ptr, i64, ptr, i64, ptr, ptr, i32, ptr, i64, i32, i32, i32]),
        "quant_dequant_rows_bf16": (i32, [i32, ptr, i64, i64, ptr, i64, i32]),
        "decode_stack_scratch": (i64, [ptr, i64]),
        "decode_stack": (i32, [ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i32]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _lib = lib
    return True


def available() -> bool:
    """Build (once per process, cached on disk) and load the kernels; False if that fails."""
    global _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("CANDLE_AGENTS_CPU_KERNELS", "1") == "0":
                return False
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if compiler is None:
                logger.info("CPU kernels: no C compiler found; using torch attention")
            elif not any(_try_build(compiler, root) for root in _build_roots()):
                logger.info("CPU kernels: build failed; using torch attention")
        return _lib is not None


def _build_roots() -> list[Path]:
    # A read-only home (containers, CI sandboxes) must not stop the engine.
    return [cache_dir() / "kernels", Path(tempfile.gettempdir()) / "candle-agents-kernels"]


def _try_build(compiler: str, root: Path) -> bool:
    try:
        return _build(compiler, root)
    except OSError as exc:
        logger.info("CPU kernels: cannot build in %s: %s", root, exc)
        return False


# kernels.c's cache element types
CACHE_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one query per sequence over its paged K/V history.

    ``q`` is [batch, heads, head_dim]; caches are [num_blocks, kv_heads,
    block_size, head_dim] in float32, bfloat16 or float16; ``block_tables`` [batch, n]
    and ``seq_lens`` [batch] are int64. Returns float32 [batch, heads, head_dim].
    """
    if _lib is None:
        raise RuntimeError("CPU kernels are not loaded; call available() first")
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
    tables = block_tables.to(torch.int64).contiguous()
    lens = seq_lens.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    rc = _lib.paged_decode_attention(
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
        _threads(),
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
    _lib.store_kv(
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
    _lib.rms_norm(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps, _threads()
    )
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` then ``x = norm(residual)``, both in place; returns (x, residual)."""
    dim = x.shape[-1]
    _lib.add_rms_norm(
        x.data_ptr(),
        residual.data_ptr(),
        weight.data_ptr(),
        x.numel() // dim,
        dim,
        eps,
        _threads(),
    )
    return x, residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up`` = [rows, 2 * inter] (gate first)."""
    rows, width = gate_up.shape
    out = gate_up.new_empty(rows, width // 2)
    _lib.silu_and_mul(gate_up.data_ptr(), out.data_ptr(), rows, width // 2, _threads())
    return out


def rotary_(
    x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor
) -> None:
    """Rotate, in place, the first ``heads`` heads of each row of ``x`` [rows, >= heads * d].

    ``x`` may be a column slice of a wider matrix (rows ``x.stride(0)`` apart,
    columns contiguous); ``cos``/``sin`` are [positions, d] tables.
    """
    d = cos.shape[-1]
    _lib.rotary(
        x.data_ptr(),
        x.stride(0),
        heads,
        cos.data_ptr(),
        sin.data_ptr(),
        positions.data_ptr(),
        x.shape[0],
        d,
        _threads(),
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
    rc = _lib.gemm_packed(
        x.data_ptr(),
        rows,
        k,
        panels.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        n,
        out.data_ptr(),
        _threads(),
    )
    return out if rc == 0 else None


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP workers (see kernels.c); True if released.

    libgomp stops spinning idle workers between parallel regions once it
    manages more threads than CPUs, and each region then pays a wake-up: an
    engine computing on its own thread runs 20-25% faster at decode batch
    sizes with the loading thread's pool gone. Later torch work on this thread
    starts a new pool; that costs speed, not correctness.
    """
    return available() and _lib.release_thread_pool() == 0


def pool_threads() -> int:
    """Threads in the kernels' own pool (pool.c): live workers + 1 for the caller.

    Workers are created on the first parallel kernel and grown to the most
    threads any call asked for (at most the CPUs this process may use).
    """
    if not available():
        return 1
    return _lib.pool_threads()


def pool_shutdown() -> None:
    """Join the kernels' pool workers (e.g. when an engine stops).

    Safe while other threads call kernels: it waits for the job in flight, and
    the next parallel kernel creates the workers again.
    """
    if available():
        _lib.pool_shutdown()


def num_threads() -> int:
    """The thread count the kernels use: torch's setting for the calling thread."""
    return torch.get_num_threads()


_threads = num_threads


# -- quantized matmuls ------------------------------------------------------------
# Weights stay in their GGUF block format (quant.c, quant_legacy.c, quant_k.c):
# row n of W [N, K] is the uint8 row ``weight[n]`` of K / block blocks.


def _require() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError("CPU kernels are not loaded; call available() first")
    return _lib


def quant_supported(qtype: int, fast: bool = False) -> bool:
    """Whether GGUF type ``qtype`` has quantized matmuls here (with ``fast``: integer ones)."""
    return available() and bool(_lib.quant_supported(int(qtype), int(fast)))


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
        if not _require().quant_supported(int(qtype), 0):
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
    lib = _require()
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
        torch.get_num_threads(),
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
    (float32 [n, k], rows any stride apart).
    """
    lib = _require()
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
    elif out.dtype != torch.float32 or out.shape != (n, k) or (k > 1 and out.stride(1) != 1):
        raise ValueError(f"quant_dequant_rows: out must be float32 [{n}, {k}] with contiguous rows")
    rc = lib.quant_dequant_rows(
        int(qtype),
        weight.data_ptr(),
        k,
        rows.data_ptr() if rows is not None else None,
        n,
        out.data_ptr(),
        out.stride(0),
        _threads(),
    )
    if rc != 0:
        raise ValueError(f"quant_dequant_rows: type {qtype} with K={k} is not supported")
    return out


def quant_dequant_rows_bf16(weight: torch.Tensor, qtype: int, k: int, out: torch.Tensor) -> None:
    """Every row of ``weight`` into ``out`` (bfloat16 [rows, k], rows any stride apart):
    dequantized as ``quant_dequant_rows`` does, then rounded to nearest even."""
    lib = _require()
    n = weight.shape[0]
    if weight.shape[1] != _row_bytes(qtype, k, "quant_dequant_rows_bf16"):
        raise ValueError(f"quant_dequant_rows_bf16: rows of {weight.shape[1]} bytes for K={k}")
    if out.dtype != torch.bfloat16 or out.shape != (n, k) or (k > 1 and out.stride(1) != 1):
        raise ValueError(f"quant_dequant_rows_bf16: out must be bfloat16 [{n}, {k}]")
    rc = lib.quant_dequant_rows_bf16(
        int(qtype), weight.data_ptr(), k, n, out.data_ptr(), out.stride(0), num_threads()
    )
    if rc != 0:
        raise ValueError(f"quant_dequant_rows_bf16: type {qtype} with K={k} is not supported")


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
    if _lib.quant_gemm(qtype, w_ptr, n, k, x_ptr, m, ldx, bias_ptr, out_ptr, ldo, fast, threads):
        raise ValueError(f"quant_gemm: type {qtype} with K={k} is not supported")


# -- a whole decode step (engine/decode_stack.py describes the model) -------------


def decode_stack_scratch(model_ref, m: int) -> int:
    """Bytes of scratch a ``decode_stack`` step of ``m`` rows needs."""
    return _lib.decode_stack_scratch(model_ref, m)


def decode_stack(model_ref, m: int, *pointers_and_sizes) -> int:
    """Every layer of one decode step (``decode_stack.c``); 0, or -1 out of memory."""
    return _lib.decode_stack(model_ref, m, *pointers_and_sizes)
