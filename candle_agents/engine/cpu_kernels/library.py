"""Building and loading the C kernels: flags per CPU, the on-disk cache, ctypes signatures.

Every other module here calls the library through ``require()`` (or ``_lib``
on hot paths, after ``available()``); this one imports nothing of the engine.
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
            # ..., scale, window (0: none), softcap (0: none), threads
            [ptr, ptr, ptr, i32, ptr, i64, ptr, ptr, i32, i32, i32, i32, i32, f32, i32, f32, i32],
        ),
        "pool_threads": (i32, []),
        "pool_shutdown": (None, []),
        "rms_norm": (None, [ptr, ptr, ptr, i64, i32, f32, i32]),
        "add_rms_norm": (None, [ptr, ptr, ptr, i64, i32, f32, i32]),
        "silu_and_mul": (None, [ptr, ptr, i64, i32, i32]),
        "rotary": (None, [ptr, i64, i32, ptr, ptr, ptr, i64, i32, i32, i32]),
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


def require() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError("CPU kernels are not loaded; call available() first")
    return _lib
