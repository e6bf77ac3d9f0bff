"""Compile every triton kernel for NVIDIA targets without a GPU (run as a script).

Run with TRITON_INTERPRET=0: the kernels must be real JIT functions. Each
configuration is what the launch wrappers pick for a model shape (attention
in ``triton_kernels``, elementwise ops in ``layers/triton_ops``); the check
goes through ptxas to a cubin, so rules that only the GPU compiler enforces
(tl.dot tile sizes, power-of-two warps, shared memory) fail here, in CI,
not on a GPU. Prints one line per kernel; exits non-zero on the first failure.
"""

from __future__ import annotations

import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from candle_agents.engine.attention import triton_kernels as tk
from candle_agents.engine.layers import triton_ops as to

TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def signature(fn, pointers: dict[str, str], constants: dict[str, object]) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        elif name in ("scale_log2", "softcap_log2", "eps"):
            sig[name] = "fp32"
        else:  # strides and counts
            sig[name] = "i32"
    return sig


def compile_one(fn, pointers, config, capability: int) -> None:
    constants = {k: v for k, v in config.items() if k != "num_warps"}
    src = ASTSource(
        fn,
        signature(fn, pointers, constants),
        constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
    )
    options = {"num_warps": config["num_warps"]} if "num_warps" in config else {}
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
    assert kernel.asm.get("cubin"), f"{fn.__name__}: no cubin"
    print(f"sm_{capability} {fn.__name__} {config} shared={kernel.metadata.shared}")


def configurations():
    """(kernel, pointer types, constants) for the shapes the engine launches.

    The last rows are the sliding-window and soft-capped variants (their own
    constexpr flags, so their own compiled kernels) at Gemma and Mistral shapes.
    """
    for dtype, heads, kv_heads, head_dim, block_size, splits, window, softcap in (
        (torch.bfloat16, 32, 8, 64, 16, 4, None, None),  # Llama-3.2-1B
        (torch.bfloat16, 32, 8, 128, 32, 1, None, None),  # Llama-3-8B
        (torch.float16, 14, 2, 64, 16, 8, None, None),  # Qwen2-0.5B, GQA 7
        (torch.float32, 9, 3, 64, 16, 2, None, None),  # SmolLM2-135M
        (torch.bfloat16, 8, 4, 256, 16, 4, 4096, 50.0),  # Gemma-2-2B local layers
        (torch.bfloat16, 8, 4, 256, 16, 1, None, 50.0),  # Gemma-2-2B global layers
        (torch.bfloat16, 4, 1, 256, 16, 2, 512, None),  # Gemma-3-270M local layers
        (torch.float16, 32, 8, 128, 16, 2, 4096, None),  # Mistral-7B-v0.1
    ):
        t = TYPES[dtype]
        io = {name: f"*{t}" for name in ("q", "k_cache", "v_cache", "out", "key", "value")}
        yield (
            tk._decode_split_kernel,
            {**io, "block_tables": "*i64", "seq_lens": "*i64", "o_part": "*fp32",
             "lse_part": "*fp32"},
            tk.decode_constants(
                heads, kv_heads, head_dim, block_size, splits, dtype, window, softcap
            ),
        )  # fmt: skip
        if splits > 1:
            yield (
                tk._decode_merge_kernel,
                {"o_part": "*fp32", "lse_part": "*fp32", "out": f"*{t}"},
                tk.merge_constants(head_dim, splits),
            )
        yield (
            tk._prefill_kernel,
            {**io, "block_tables": "*i64", "query_start": "*i64", "query_lens": "*i64",
             "seq_lens": "*i64"},
            tk.prefill_constants(
                heads, kv_heads, head_dim, block_size, 512, dtype, window, softcap
            ),
        )  # fmt: skip
        yield (
            tk._store_kv_kernel,
            {**io, "slots": "*i64"},
            tk.store_constants(kv_heads, head_dim, block_size),
        )


def op_configurations():
    """The fused elementwise ops (norms, SiLU-and-multiply, rotary) at Llama shapes."""
    for t in ("bf16", "fp16"):
        norm = {name: f"*{t}" for name in ("x", "residual", "weight", "out")}
        # The model's norms (8192: the widest row one program takes) and
        # QK-norm's many short rows a program.
        for hidden, has_residual in ((2048, False), (2048, True), (8192, True), (128, False)):
            yield (
                to._rms_norm_kernel,
                norm,
                {**to.norm_config(hidden, 1, False), "HAS_RESIDUAL": has_residual},
            )
        silu = {"gate_up": f"*{t}", "out": f"*{t}"}
        yield to._silu_and_mul_kernel, silu, to.silu_config(8192, 1, False)
        rotary = {"q": f"*{t}", "k": f"*{t}", "cos": "*fp32", "sin": "*fp32", "positions": "*i64"}
        for head_dim in (64, 128):  # Llama-3.2-1B / Llama-3-8B heads: 32 and 8 KV
            yield to._rotary_kernel, rotary, to.rotary_config(32, 8, head_dim, 1, False)


def main(argv: list[str]) -> int:
    capabilities = [int(a) for a in argv] or [80, 90]
    for capability in capabilities:
        for fn, pointers, config in (*configurations(), *op_configurations()):
            compile_one(fn, pointers, config, capability)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
