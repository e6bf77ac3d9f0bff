"""The engine's command-line flags, shared by `generate`, `chat` and `serve`.

``add_engine_args`` puts them on a parser; ``engine_options`` reads them back as
EngineConfig keyword arguments. It imports nothing heavy, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import re


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The flags every engine-loading command shares (model, device, dtype, weights)."""
    p.add_argument("--model", default=None, help="model name, folder or .gguf (default: embedded)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--attention-backend",
        default="auto",
        help="auto, cpu (C kernels), triton (CUDA) or torch (reference)",
    )
    p.add_argument(
        "--enable-cuda-graph",
        action="store_true",
        help="replay decode steps from captured CUDA graphs (CUDA with triton only)",
    )
    q = p.add_argument_group("quantized weights (CPU)")
    q.add_argument(
        "--quantize",
        choices=("q8_0", "q4_k"),
        default=None,
        help="quantize a float (HF) model's weights at load",
    )
    q.add_argument(
        "--dequantize",
        action="store_true",
        help="dequantize GGUF weights at load instead of running them quantized",
    )
    q.add_argument(
        "--quantized-matmul",
        choices=("exact", "int8"),
        default=None,
        help="exact (default): float32 sums, outputs as with float32 weights; "
        "int8: llama.cpp's numerics and speed (int8 activations, bfloat16 prompts)",
    )
    q.add_argument(
        "--kv-cache-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=None,
        help="KV cache element type (auto: the model's dtype; float16 on the int8 path)",
    )


def engine_options(args: argparse.Namespace) -> dict[str, object]:
    """The EngineConfig fields the command line set (unset ones keep their defaults)."""
    options = {
        "device": args.device,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "max_num_seqs": getattr(args, "max_num_seqs", None),
        "kv_cache_memory": getattr(args, "kv_cache_memory", None),
        "attention_backend": args.attention_backend,
        "enable_cuda_graph": args.enable_cuda_graph or None,
        "quantize": args.quantize,
        "dequantize": args.dequantize or None,
        "quantized_matmul": args.quantized_matmul,
        "kv_cache_dtype": args.kv_cache_dtype,
    }
    return {name: value for name, value in options.items() if value is not None}


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_memory(text: str) -> int | float:
    """A KV-cache size: "1073741824", "512MiB", "2 GB", "1.5g", "0.1" or "10%".

    Fractions (at most 1, or a percentage) are shares of free memory; anything
    else is bytes. "MB" is 10**6 bytes, "MiB" and a bare "M" are 2**20.
    """
    value = text.strip().replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt]?)(i?)(b?)", value, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: use bytes (1073741824), a size with a unit "
            "(512MiB, 2GiB, 1.5G) or a fraction of free memory (0.1 or 10%)"
        )
    number, unit, binary, byte = match.groups()
    amount = float(number)
    if unit == "%":
        if binary or byte or not 0 < amount <= 100:
            raise argparse.ArgumentTypeError(f"{text!r}: a percentage must be in (0, 100]")
        return amount / 100
    if not unit and not binary and not byte and "." in number:
        if not 0 < amount <= 1:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a fraction of free memory must be in (0, 1]; give bytes as an integer"
            )
        return amount
    if not unit and binary:
        raise argparse.ArgumentTypeError(f"{text!r}: 'i' needs a unit before it (KiB, MiB, GiB)")
    key = unit.lower()
    # A bare letter (512M) is read as binary, as memory sizes usually are.
    scale = 1024 ** list(_UNITS).index(key) if binary or not byte else _UNITS[key]
    size = int(amount * scale)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least one byte")
    return size
