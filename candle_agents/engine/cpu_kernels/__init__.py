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
        "quant_dequant_rows": (i32, [i32, ptr, i64, ptr, i64, ptr, i64, i32, i32]),
        "store_kv": (None, [ptr, i64, ptr, i64, ptr, ptr, i32, ptr, i64, i32, i32, i32]),
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


def _require() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError("CPU kernels are not loaded; call available() first")
    return _lib


# Quantized matmuls live in quant_ops.py (it uses the loader above).
from candle_agents.engine.cpu_kernels import quant_ops as _quant_ops  # noqa: E402

quant_supported = _quant_ops.quant_supported
quant_gemm = _quant_ops.quant_gemm
quant_gemm_raw = _quant_ops.quant_gemm_raw
quant_dequant_rows = _quant_ops.quant_dequant_rows

# -- a whole decode step (engine/decode_stack.py describes the model) -------------


def decode_stack_scratch(model_ref, m: int) -> int:
    """Bytes of scratch a ``decode_stack`` step of ``m`` rows needs."""
    return _lib.decode_stack_scratch(model_ref, m)


def decode_stack(model_ref, m: int, *pointers_and_sizes) -> int:
    """Every layer of one decode step (``decode_stack.c``); 0, or -1 out of memory."""
    return _lib.decode_stack(model_ref, m, *pointers_and_sizes)
