"""GPU throughput of our engine against transformers `generate`, and the decode kernel's bandwidth.

What it measures, in one run on one GPU:
  throughput  a Llama-3.2-1B-shaped model with random weights (built here, nothing is
              downloaded), 256 concurrent requests of 512 random prompt tokens and 256
              output tokens, greedy, EOS ignored: our engine (bfloat16, triton attention,
              CUDA graphs unless --no-cuda-graph) against transformers `generate` on the
              same folder, prompts and dtype; output tokens/s of each and the ratio
  bandwidth   the paged decode kernel (`paged_decode`: 32 sequences, 32 query heads,
              8 KV heads, head_dim 64, block size 16, bfloat16, shuffled blocks) at
              contexts 1k, 4k and 16k: K/V bytes read per second, as a share of the GPU's
              peak memory bandwidth, next to SDPA on a dense copy of the same K/V

Targets: ours >= 5x transformers' output tokens/s; the decode kernel >= 70% of peak
bandwidth at 4k and above.

    python benchmarks/gpu_throughput.py                       # on a CUDA GPU (H100, H200, ...)
    python benchmarks/gpu_throughput.py --json gpu.json       # also save every figure
    python benchmarks/gpu_throughput.py --peak-gbps 3350      # a GPU missing from the table
    python benchmarks/gpu_throughput.py --parts kernel        # only the kernel bandwidth
    python benchmarks/gpu_throughput.py --smoke               # CPU: tiny shapes, every path

--smoke runs the whole pipeline on CPU in float32 with a tiny model, the triton kernels in
triton's interpreter (TRITON_INTERPRET=1, set here) and wall-clock timers: it checks that
the script works; its figures mean nothing and no target is judged. The exit status is 0
whether or not a target is met (the verdicts are printed and saved); it is not 0 when a
part fails to run.

The run's setup (defaults, environment, the random model folder and prompts) is in
gpu_setup.py, the decode kernel's micro-benchmark in gpu_kernel.py; this script holds
the command line, the throughput runs of ours and transformers, the verdicts and the
report.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gpu_kernel import BANDWIDTH_TARGET, BANDWIDTH_TARGET_FROM, print_kernel, run_kernel
from gpu_setup import LLAMA_3_2_1B as LLAMA_3_2_1B  # re-exported
from gpu_setup import (
    PARTS,
    ROPE_SCALING,
    WEIGHT_STD,
    Setup,
    build_model_folder,
    configure_triton,
    environment,
    free_memory,
    quiet_transformers,
    random_prompts,
    resolve_setup,
    sync,
)

THROUGHPUT_TARGET = 5.0  # ours / transformers, output tokens/s


# -- the command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    parser.add_argument("--requests", type=int, help="concurrent requests (256)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens per request (512)")
    parser.add_argument("--output-len", type=int, help="output tokens per request (256)")
    parser.add_argument(
        "--warmup-tokens",
        type=int,
        help="output tokens of the warm-up runs (default: enough for every request to be "
        "decoding at once, so the warm-up meets every batch shape of the timed run)",
    )
    parser.add_argument("--hf-batch", type=int, help="transformers batch size (all requests)")
    parser.add_argument("--max-batched-tokens", type=int, help="engine token budget (8192)")
    parser.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the engine's enable_cuda_graph (default: on, except with --smoke)",
    )
    parser.add_argument("--contexts", help="decode kernel contexts (1024,4096,16384)")
    parser.add_argument("--kernel-batch", type=int, help="decode kernel sequences (32)")
    parser.add_argument("--kernel-iters", type=int, help="timed decode calls per replay (100)")
    parser.add_argument(
        "--peak-gbps", type=float, help="the GPU's peak memory bandwidth, GB/s (1e9 bytes/s)"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"what to run, of {','.join(PARTS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every figure to this file")
    return parser.parse_args(argv)


# -- ours ----------------------------------------------------------------------------------


def engine_kwargs(setup: Setup) -> dict[str, Any]:
    m = setup.model
    max_len = setup.prompt_len + max(setup.output_len, setup.warmup_tokens)
    # Every request's blocks at full length, one spare each: no preemption.
    blocks = setup.requests * (math.ceil(max_len / setup.block_size) + 1) + 1
    per_block = (
        2
        * m["num_hidden_layers"]
        * setup.block_size
        * m["num_key_value_heads"]
        * m["head_dim"]
        * setup.dtype.itemsize
    )
    kwargs: dict[str, Any] = {
        "device": setup.device.type,
        "dtype": setup.dtype_name,
        "attention_backend": "triton",
        "max_num_seqs": setup.requests,
        "max_num_batched_tokens": setup.max_batched_tokens,
        "max_model_len": max_len,
        "kv_cache_memory": blocks * per_block,
        "block_size": setup.block_size,
        "seed": setup.seed,
    }
    kwargs["enable_cuda_graph"] = bool(setup.cuda_graph)
    return kwargs


def generate_ours(engine, setup: Setup, prompts: list[list[int]], max_tokens: int) -> float:
    from candle_agents import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    # Distinct random prompts share no block, but the warm-up's blocks would still
    # sit in the prefix cache: every timed prompt is computed.
    engine.block_manager.reset_prefix_cache()
    sync(setup.device)
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    sync(setup.device)
    elapsed = time.perf_counter() - start
    got = [len(r.token_ids) for r in results]
    if got != [max_tokens] * len(prompts):
        raise RuntimeError(f"the engine returned {sorted(set(got))} tokens, not {max_tokens}")
    return elapsed


def run_engine(setup: Setup, folder: Path) -> dict[str, Any]:
    from candle_agents import Engine

    kwargs = engine_kwargs(setup)
    engine = Engine.from_pretrained(str(folder), **kwargs)
    try:
        warm = random_prompts(setup, setup.requests, setup.seed + 1)
        generate_ours(engine, setup, warm, setup.warmup_tokens)
        prompts = random_prompts(setup, setup.requests, setup.seed)
        stats, preempted = engine.stats, engine.scheduler.num_preemptions
        steps0, fwd0 = stats.steps, stats.forward_time
        elapsed = generate_ours(engine, setup, prompts, setup.output_len)
        steps, fwd = stats.steps - steps0, stats.forward_time - fwd0
        preempted = engine.scheduler.num_preemptions - preempted
        backend = engine.runner.backend.name
        # Capture failures only log a warning and decode eagerly: say what ran.
        graphs = engine.runner.graphs
        graph_batch = graphs.max_batch if graphs is not None else None
        del graphs  # it holds the model and the cache, which must go before transformers
    finally:
        engine.shutdown()
        del engine
        free_memory(setup.device)
    output = setup.requests * setup.output_len
    return {
        "seconds": elapsed,
        "output_tok_s": output / elapsed,
        "total_tok_s": setup.requests * (setup.prompt_len + setup.output_len) / elapsed,
        "steps": steps,
        "forward_share": fwd / elapsed,
        "preemptions": preempted,
        "attention_backend": backend,
        "cuda_graph_max_batch": graph_batch,
        "engine_config": {k: v for k, v in kwargs.items() if k != "seed"},
    }


# -- transformers --------------------------------------------------------------------------


def generate_transformers(model, setup: Setup, prompts: list[list[int]], new: int) -> float:
    pad = model.config.pad_token_id
    sync(setup.device)
    start = time.perf_counter()
    for i in range(0, len(prompts), setup.hf_batch):
        ids = torch.tensor(prompts[i : i + setup.hf_batch], device=setup.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
        if tuple(out.shape) != (ids.shape[0], setup.prompt_len + new):
            raise RuntimeError(f"transformers returned shape {tuple(out.shape)}")
    sync(setup.device)
    return time.perf_counter() - start


def run_transformers(setup: Setup, folder: Path) -> dict[str, Any]:
    import transformers

    quiet_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=setup.dtype)
    model = model.to(setup.device).eval()
    try:
        warm = random_prompts(setup, min(setup.hf_batch, setup.requests), setup.seed + 1)
        generate_transformers(model, setup, warm, setup.warmup_tokens)
        prompts = random_prompts(setup, setup.requests, setup.seed)
        elapsed = generate_transformers(model, setup, prompts, setup.output_len)
        attn = model.config._attn_implementation
    finally:
        del model
        free_memory(setup.device)
    return {
        "seconds": elapsed,
        "output_tok_s": setup.requests * setup.output_len / elapsed,
        "total_tok_s": setup.requests * (setup.prompt_len + setup.output_len) / elapsed,
        "batch": setup.hf_batch,
        "attn_implementation": attn,
    }


# -- verdicts and output -------------------------------------------------------------------


def verdicts(setup: Setup, figures: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if setup.smoke:
        return {"throughput": "not judged (smoke)", "bandwidth": "not judged (smoke)"}
    if "ratio" in figures:
        out["throughput"] = "PASS" if figures["ratio"] >= THROUGHPUT_TARGET else "FAIL"
    judged = [k for k in figures.get("kernel", []) if k["context"] >= BANDWIDTH_TARGET_FROM]
    if judged and any(not k["correct"] for k in judged):
        out["bandwidth"] = "FAIL (kernel output differs from SDPA)"
    elif judged and setup.peak_bytes_s is None:
        out["bandwidth"] = "unknown (peak bandwidth unknown: pass --peak-gbps)"
    elif judged:
        ok = all(k["share_of_peak"] >= BANDWIDTH_TARGET for k in judged)
        out["bandwidth"] = "PASS" if ok else "FAIL"
    return out


def print_header(command: str, setup: Setup, env: dict[str, Any]) -> None:
    print(f"$ {command}")
    peak = f"{env['peak_gbps']:.0f} GB/s" if env["peak_gbps"] else "unknown"
    sms = f"{setup.num_sms} SMs assumed" if setup.smoke else f"{setup.num_sms} SMs"
    print(
        f"device {env['device']} ({sms}, peak bandwidth {peak}), "
        f"torch {env['torch']} (cuda {env['cuda']}), triton {env['triton']}, "
        f"transformers {env['transformers']}, python {env['python']}"
    )
    m = setup.model
    print(
        f"model: random Llama, hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
        f"{m['num_attention_heads']}/{m['num_key_value_heads']} heads, head_dim "
        f"{m['head_dim']}, vocab {m['vocab_size']}, {setup.dtype_name}"
    )
    print(
        f"load: {setup.requests} requests x ({setup.prompt_len} prompt + {setup.output_len} "
        f"output) tokens, greedy, EOS ignored; warm-up {setup.warmup_tokens} output tokens"
    )
    if setup.smoke:
        print("smoke: figures are not meaningful")


def print_throughput(setup: Setup, figures: dict[str, Any]) -> None:
    rows = [(name, figures[key]) for name, key in (("ours", "engine"), ("transformers", "hf"))]
    rows = [(n, f) for n, f in rows if f is not None]
    if not rows:
        return
    print()
    print(f"{'':13} {'seconds':>8} {'output tok/s':>13} {'total tok/s':>12}  notes")
    for name, f in rows:
        if name == "ours":
            if f["cuda_graph_max_batch"]:
                graph = f"decode batches <= {f['cuda_graph_max_batch']}"
            elif f["engine_config"].get("enable_cuda_graph"):
                graph = "requested but not captured (see the log)"
            else:
                graph = "off"
            notes = (
                f"{f['attention_backend']} attention, cuda graphs {graph}, {f['steps']} steps, "
                f"forward {f['forward_share']:.0%} of wall, {f['preemptions']} preemptions"
            )
        else:
            notes = f"batch {f['batch']}, attention {f['attn_implementation']}"
        print(
            f"{name:13} {f['seconds']:>8.2f} {f['output_tok_s']:>13.1f} "
            f"{f['total_tok_s']:>12.1f}  {notes}"
        )
    if "ratio" in figures:
        verdict = figures["verdicts"].get("throughput", "")
        print(
            f"ours / transformers: {figures['ratio']:.2f}x (target >= {THROUGHPUT_TARGET:.0f}x) "
            f"{verdict}"
        )


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([sys.executable, sys.argv[0], *args])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_triton(args.smoke)
    setup = resolve_setup(args)
    env = environment(setup)
    command = command_line(argv)
    print_header(command, setup, env)
    torch.manual_seed(setup.seed)
    started = time.perf_counter()
    figures: dict[str, Any] = {"engine": None, "hf": None, "kernel": []}
    if "engine" in setup.parts or "transformers" in setup.parts:
        with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
            folder = build_model_folder(setup, Path(tmp) / "llama-3.2-1b-random")
            if "engine" in setup.parts:
                figures["engine"] = run_engine(setup, folder)
            if "transformers" in setup.parts:
                figures["hf"] = run_transformers(setup, folder)
    if figures["engine"] and figures["hf"]:
        figures["ratio"] = figures["engine"]["output_tok_s"] / figures["hf"]["output_tok_s"]
    if "kernel" in setup.parts:
        figures["kernel"] = run_kernel(setup)
    figures["verdicts"] = verdicts(setup, figures)
    print_throughput(setup, figures)
    print_kernel(setup, figures["kernel"], figures["verdicts"].get("bandwidth"))
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.1f} s")
    if args.json:
        report = {
            "command": command,
            "smoke": setup.smoke,
            "environment": env,
            "setup": {
                "model": setup.model,
                "rope_scaling": ROPE_SCALING,
                "weight_std": WEIGHT_STD,
                "dtype": setup.dtype_name,
                "requests": setup.requests,
                "prompt_len": setup.prompt_len,
                "output_len": setup.output_len,
                "warmup_tokens": setup.warmup_tokens,
                "cuda_graph": setup.cuda_graph,
                "contexts": setup.contexts,
                "kernel_iters": setup.kernel_iters,
            },
            "targets": {
                "throughput_ratio": THROUGHPUT_TARGET,
                "bandwidth_share": BANDWIDTH_TARGET,
                "bandwidth_from_context": BANDWIDTH_TARGET_FROM,
            },
            "ours": figures["engine"],
            "transformers": figures["hf"],
            "ratio": figures.get("ratio"),
            "kernel": figures["kernel"],
            "verdicts": figures["verdicts"],
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
