"""Speed of the quantized matmuls (cpu_kernels.quant_gemm) against float32.

Per GGUF type and weight shape, x [M, K] @ W.T with W [N, K]:
  exact   quant_gemm(fast=False): float32 activations, W unpacked on the fly
  fast    quant_gemm(fast=True): activations quantized to 8 bits, integer dots
  panel   the float32 panel kernel on the dequantized W (gemm_packed, M <= 64)
  linear  F.linear on the dequantized W (torch's oneDNN/MKL GEMM)
all four in the same run. Shapes: SmolLM2-135M (K=576: N=960 qkv, 576 o,
3072 gate_up; K=1536: N=576 down; the 49152 x 576 head) and Llama-3.2-1B
(K=2048: N=3072 qkv, 2048 o, 16384 gate_up; K=8192: N=2048 down).

    python benchmarks/quant_kernels.py                      # every type, shape, M
    python benchmarks/quant_kernels.py --types Q4_1,Q8_0 --models smollm2 --m 1,32

Prints ms per call (the fastest single call), GB/s of weight bytes at M=1 and
GFLOP/s (2 M N K / time) at M >= 8. Every timed call, of each method, cycles
through copies of its weights that together fill --working-set MB, so W comes
from memory as in a decode step, not from cache.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from candle_agents.engine import cpu_kernels

Q = GGMLQuantizationType
SHAPES = {
    "smollm2": [("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536),
                ("head", 49152, 576)],
    "llama1b": [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048),
                ("down", 2048, 8192)],
}  # fmt: skip
SCALE_OFFSETS = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}  # fmt: skip
DEFAULT_TYPES = "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,F16"


def random_weight(qtype: Q, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random valid block data for W [n, k] and its float32 dequantization."""
    g = torch.Generator().manual_seed(n * 7 + k)
    if qtype in (Q.F32, Q.F16, Q.BF16):
        dt = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype]
        w = (torch.randn(n, k, generator=g) * 0.05).to(dt)
        return w.view(torch.uint8).reshape(n, -1).contiguous(), w.float()
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = torch.randint(0, 256, (n * k // block, size), generator=g, dtype=torch.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scale = (torch.rand(blocks.shape[0], generator=g) * 0.002).half()
        blocks[:, off : off + 2] = scale.view(torch.uint8).reshape(-1, 2)
    data = blocks.reshape(n, -1)
    w = torch.from_numpy(np.ascontiguousarray(gguf_dequantize(data.numpy(), qtype)))
    return data, w.reshape(n, k).float()


def timeit(fn, calls: int, repeat: int) -> float:
    """The fastest of `calls * repeat` single calls, in seconds.

    Each call is timed alone: on a shared machine the minimum is the figure
    that other people's work disturbs least.
    """
    fn(0)
    best = float("inf")
    for i in range(calls * repeat):
        t = time.perf_counter()
        fn(i)
        best = min(best, time.perf_counter() - t)
    return best


def bench_shape(qtype, name, n, k, ms, args) -> None:
    data, w = random_weight(qtype, n, k)

    def copies_of(t: torch.Tensor) -> list[torch.Tensor]:
        # as many copies as fill the working set: each call reads its weights from memory
        count = max(2, int(args.working_set * 1e6 // (t.numel() * t.element_size())))
        return [t] + [t.clone() for _ in range(count - 1)]

    datas, ws = copies_of(data), copies_of(w)
    panels = [cpu_kernels.pack_panels(v) for v in ws]
    fast_ok = cpu_kernels.quant_supported(qtype, fast=True)
    nan = float("nan")
    for m in ms:
        x = torch.randn(m, k)
        flops = 2 * m * n * k
        # about --budget GFLOP (or 20 passes over W) per timing run
        calls = max(3, min(2000, int(args.budget * 1e9 / max(flops, data.numel() * 20))))

        def quant(i, fast, x=x):
            return cpu_kernels.quant_gemm(x, datas[i % len(datas)], qtype, fast=fast)

        def panel(i, x=x):
            return cpu_kernels.gemm_packed(x, panels[i % len(panels)], None, n)

        def linear(i, x=x):
            return F.linear(x, ws[i % len(ws)])

        t_exact = timeit(lambda i: quant(i, False), calls, args.repeat)
        t_fast = timeit(lambda i: quant(i, True), calls, args.repeat) if fast_ok else nan
        t_panel = timeit(panel, calls, args.repeat) if m <= 64 else nan
        t_lin = timeit(linear, calls, args.repeat)
        times = (t_exact, t_fast, t_panel, t_lin)
        if m == 1:
            rate = [f"{data.numel() / t / 1e9:.1f} GB/s" if t == t else "-" for t in times[:2]]
            rate += ["", ""]
        elif m >= 8:
            rate = [f"{flops / t / 1e9:.0f}" if t == t else "-" for t in times]
        else:
            rate = ["", "", "", ""]
        cols = [f"{t * 1e3:.3f}" if t == t else "-" for t in times] + rate
        print(f"| {qtype.name} | {name} {n}x{k} | {m} | " + " | ".join(cols) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--models", default="smollm2,llama1b")
    ap.add_argument("--shapes", default="", help="only these shape names, e.g. qkv,head")
    ap.add_argument("--m", default="1,4,8,16,32,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.5, help="GFLOP per timing run")
    ap.add_argument("--working-set", type=float, default=256.0, help="MB of weight copies")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("the CPU kernels did not build")
    if args.threads:
        torch.set_num_threads(args.threads)
    ms = [int(v) for v in args.m.split(",")]
    print(f"{platform.processor() or platform.machine()}, threads={torch.get_num_threads()}")
    print("ms per call; exact/fast GB/s of weight bytes at M=1;")
    print("GFLOP/s at M >= 8 (exact, fast, panel, linear)\n")
    head = ["type", "shape NxK", "M", "exact ms", "fast ms", "panel ms", "linear ms"]
    head += ["exact", "fast", "panel", "linear"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for tname in args.types.split(","):
        qtype = Q[tname]
        if not cpu_kernels.quant_supported(qtype):
            print(f"| {tname} | (no kernel in this build) |")
            continue
        for model in args.models.split(","):
            for name, n, k in SHAPES[model]:
                if args.shapes and name not in args.shapes.split(","):
                    continue
                bench_shape(qtype, f"{model} {name}", n, k, ms, args)


if __name__ == "__main__":
    main()
