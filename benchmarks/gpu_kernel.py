"""The paged decode kernel's bandwidth, next to SDPA on a dense copy of the same K/V.

Part `kernel` of gpu_throughput.py: `paged_decode` at the model's attention shape (32
query heads, 8 KV heads, head_dim 64 for Llama-3.2-1B), `kernel_batch` sequences of each
context, block size 16, shuffled blocks, as a long-running engine hands them out. Each
case cycles through enough disjoint K/V copies that L2 never holds the next one, checks
the output against SDPA, and reports K/V bytes read per second, as a share of the GPU's
peak memory bandwidth. On CUDA the calls are timed by CUDA events around a captured CUDA
graph (eager launches too, for comparison); on CPU (--smoke, triton's interpreter) by
wall clock, and the figures mean nothing.

Target: >= 70% of peak bandwidth at contexts of 4k tokens and above.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from gpu_setup import Setup, free_memory, sync

BANDWIDTH_TARGET = 0.70  # share of peak memory bandwidth
BANDWIDTH_TARGET_FROM = 4096  # judged at contexts of at least this many tokens


def time_per_call(fn: Callable[[int], object], setup: Setup, graph: bool) -> float:
    """Seconds per ``fn(i)`` call: median of 5 rounds (2 on CPU) of ``kernel_iters`` calls.

    On CUDA with ``graph`` the calls are captured once and replayed, which times
    the GPU alone (a Python launch can take longer than a 1k-context decode).
    """
    iters = setup.kernel_iters
    for i in range(3):  # compile, allocate
        fn(i)
    sync(setup.device)
    if setup.device.type != "cuda":
        rounds = []
        for _ in range(2):
            start = time.perf_counter()
            for i in range(iters):
                fn(i)
            rounds.append((time.perf_counter() - start) / iters)
        return statistics.median(rounds)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(i)
        g.replay()
        run = g.replay
    else:

        def run() -> None:
            for i in range(iters):
                fn(i)

    torch.cuda.synchronize(setup.device)
    rounds = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(rounds)


def timed(fn: Callable[[int], object], setup: Setup) -> tuple[float, str, float | None]:
    """(seconds per call, how it was timed, eager seconds per call on CUDA)."""
    if setup.device.type != "cuda":
        return time_per_call(fn, setup, graph=False), "perf_counter", None
    eager = time_per_call(fn, setup, graph=False)
    try:
        return time_per_call(fn, setup, graph=True), "cuda graph", eager
    except RuntimeError as exc:  # capture refused: eager launches are what is left
        print(f"  (CUDA graph capture failed, timing eager launches: {exc})")
        return eager, "eager", eager


def num_copies(setup: Setup, kv_bytes: int) -> int:
    """How many disjoint K/V sets to cycle through so that L2 never holds the next one."""
    if setup.device.type != "cuda":
        return 2  # exercises the rotation; there is no L2 to beat
    props = torch.cuda.get_device_properties(setup.device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    return max(1, math.ceil(4 * l2 / kv_bytes))


def kernel_case(setup: Setup, context: int) -> dict[str, Any]:
    from candle_agents.engine.attention import triton_kernels as tk

    m = setup.model  # the kernel runs at the model's attention shape
    heads, kv, d = m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"]
    b, bs = setup.kernel_batch, setup.block_size
    dev, dtype, item = setup.device, setup.dtype, setup.dtype.itemsize
    if context % bs:
        raise SystemExit(f"--contexts: {context} is not a multiple of the block size {bs}")
    per_seq = context // bs
    kv_bytes = 2 * b * context * kv * d * item
    copies = num_copies(setup, kv_bytes)
    gen = torch.Generator(dev).manual_seed(setup.seed + context)
    num_blocks = copies * b * per_seq
    k_cache = torch.randn((num_blocks, kv, bs, d), generator=gen, device=dev, dtype=dtype)
    v_cache = torch.randn((num_blocks, kv, bs, d), generator=gen, device=dev, dtype=dtype)
    # Shuffled blocks, as a long-running engine hands them out; disjoint between copies.
    perm = torch.randperm(num_blocks, generator=gen, device=dev)
    tables = perm.view(copies, b, per_seq).long()
    seq_lens = torch.full((b,), context, dtype=torch.long, device=dev)
    q = torch.randn((b, heads, d), generator=gen, device=dev, dtype=dtype)
    out = torch.empty_like(q)
    scale = d**-0.5
    splits = tk.decode_splits(b, kv, context, setup.num_sms)

    def ours(i: int) -> torch.Tensor:
        return tk.paged_decode(
            q, k_cache, v_cache, tables[i % copies], seq_lens, scale, splits, out
        )

    # The reference: SDPA on dense copies. A decode query has no causal mask, so the
    # query heads of one KV head can ride as that head's query rows (GQA, no repeat).
    dense = [(gather_dense(k_cache, t), gather_dense(v_cache, t)) for t in tables]
    qg = q.view(b, kv, heads // kv, d)

    def reference(i: int) -> torch.Tensor:
        k, v = dense[i % copies]
        return torch.nn.functional.scaled_dot_product_attention(qg, k, v, scale=scale)

    error = (ours(0).float() - reference(0).reshape(b, heads, d).float()).abs().max().item()
    tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    t_ours, method, t_eager = timed(ours, setup)
    t_ref, _, _ = timed(reference, setup)
    moved = kv_bytes + 2 * b * heads * d * item  # K and V read, q read, out written
    result = {
        "context": context,
        "batch": b,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": d,
        "num_splits": splits,
        "copies": copies,
        "bytes_per_call": moved,
        "timing": method,
        "us": t_ours * 1e6,
        "gbps": moved / t_ours / 1e9,
        "eager_us": t_eager * 1e6 if t_eager is not None else None,
        "sdpa_us": t_ref * 1e6,
        "sdpa_gbps": moved / t_ref / 1e9,
        "max_abs_err": error,
        "correct": error <= tolerance,
    }
    if setup.peak_bytes_s:
        result["share_of_peak"] = moved / t_ours / setup.peak_bytes_s
        result["sdpa_share_of_peak"] = moved / t_ref / setup.peak_bytes_s
    return result


def gather_dense(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, kv, bs, d] paged through [batch, blocks] -> [batch, kv, ctx, d]."""
    b, n = tables.shape
    _, kv, bs, d = cache.shape
    return cache[tables].permute(0, 2, 1, 3, 4).reshape(b, kv, n * bs, d).contiguous()


def run_kernel(setup: Setup) -> list[dict[str, Any]]:
    cases = []
    for context in setup.contexts:
        cases.append(kernel_case(setup, context))
        free_memory(setup.device)  # the case's caches, before the next one's
    return cases


def print_kernel(setup: Setup, cases: list[dict[str, Any]], verdict: str | None) -> None:
    if not cases:
        return
    k = cases[0]
    print()
    print(
        f"decode kernel: {k['batch']} sequences, {k['heads']}/{k['kv_heads']} heads, head_dim "
        f"{k['head_dim']}, block {setup.block_size}, {setup.dtype_name}, shuffled blocks; "
        f"timed by {k['timing']}"
    )
    print(
        f"{'context':>8} {'splits':>6} {'MB/call':>8} {'us':>9} {'GB/s':>8} {'of peak':>8} "
        f"{'eager us':>9} {'sdpa us':>9} {'sdpa GB/s':>10} {'max err':>8}"
    )
    for k in cases:
        share = f"{k['share_of_peak']:.0%}" if "share_of_peak" in k else "?"
        eager = f"{k['eager_us']:.1f}" if k["eager_us"] is not None else "-"
        err = f"{k['max_abs_err']:.1e}" + ("" if k["correct"] else " BAD")
        print(
            f"{k['context']:>8} {k['num_splits']:>6} {k['bytes_per_call'] / 1e6:>8.1f} "
            f"{k['us']:>9.1f} {k['gbps']:>8.1f} {share:>8} {eager:>9} {k['sdpa_us']:>9.1f} "
            f"{k['sdpa_gbps']:>10.1f} {err:>8}"
        )
    if setup.peak_bytes_s is None and not setup.smoke:
        print("peak bandwidth unknown for this device: pass --peak-gbps to get shares")
    if verdict:
        print(
            f"bandwidth >= {BANDWIDTH_TARGET:.0%} of peak at >= {BANDWIDTH_TARGET_FROM} "
            f"tokens: {verdict}"
        )
