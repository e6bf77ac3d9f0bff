"""C kernels for CPU inference, compiled on first use and called through ctypes.

The sources (every ``*.c`` and ``*.h`` beside this file) are plain C with no
torch headers, built into one library: a build takes a few seconds with the
system's C compiler. The library is cached under ``$CANDLE_AGENTS_CACHE``
(default ``~/.cache/candle-agents``), keyed by the sources, the flags and the
CPU. Where no compiler works, or ``CANDLE_AGENTS_CPU_KERNELS=0`` is set,
``available()`` is False and the engine keeps to its torch reference paths.

``library`` builds and loads it; ``ops`` wraps the float kernels, ``quant_ops``
the quantized matmuls; this package re-exports both.
"""

from candle_agents.engine.cpu_kernels.library import (
    available,
    cache_dir,
    num_threads,
    pool_shutdown,
    pool_threads,
    release_thread_pool,
    require,
)
from candle_agents.engine.cpu_kernels.ops import (
    CACHE_TYPES,
    MAX_HEAD_DIM,
    PANEL,
    add_rms_norm,
    decode_stack,
    decode_stack_scratch,
    gemm_packed,
    pack_panels,
    paged_decode_attention,
    rms_norm,
    rotary_,
    silu_and_mul,
    store_kv,
)
from candle_agents.engine.cpu_kernels.quant_ops import (
    quant_dequant_rows,
    quant_gemm,
    quant_gemm_raw,
    quant_supported,
)

__all__ = [
    "CACHE_TYPES",
    "MAX_HEAD_DIM",
    "PANEL",
    "add_rms_norm",
    "available",
    "cache_dir",
    "decode_stack",
    "decode_stack_scratch",
    "gemm_packed",
    "num_threads",
    "pack_panels",
    "paged_decode_attention",
    "pool_shutdown",
    "pool_threads",
    "quant_dequant_rows",
    "quant_gemm",
    "quant_gemm_raw",
    "quant_supported",
    "release_thread_pool",
    "require",
    "rms_norm",
    "rotary_",
    "silu_and_mul",
    "store_kv",
]
