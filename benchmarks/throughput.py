"""Throughput of our engine against transformers `generate`, same model, prompts and dtype.

Three loads, EOS ignored, useful tokens only (the tokens each request asked for):
  single  1 request, 128-token prompt, 128 new tokens
  equal   32 requests at once, distinct 128-token prompts, 128 new tokens
          (transformers: one static batch, no padding)
  mixed   64 requests, prompts of 32-256 tokens, 16-256 new tokens
          (transformers: static batches of 32, left-padded, each run to its longest member)

    python benchmarks/throughput.py                       # default model (GGUF blocks, exact)
    python benchmarks/throughput.py --dequantize          # float32 weights (dequantized at load)
    python benchmarks/throughput.py --dtype bfloat16
    python benchmarks/throughput.py --model PATH --loads single,equal

Prints tokens/s for both and the ratio; --json FILE saves the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from candle_agents import Engine, GenerationParams
from candle_agents.engine import cpu_kernels
from candle_agents.engine.loader import DEFAULT_MODEL, default_gguf_path

TEXT = (
    "Paged attention keeps the key and value cache in fixed-size blocks, so that "
    "memory is allocated as sequences grow and shared between requests with a common "
    "prefix. Continuous batching lets requests join and leave the running batch at every "
    "step. An agent loop calls tools, reads their results and answers the user. "
)


def make_prompt(tokenizer, length: int, seed: int) -> list[int]:
    ids = tokenizer.encode(TEXT * 20, add_special_tokens=False)
    start = random.Random(seed).randrange(0, len(ids) - length)
    return ids[start : start + length]


def build_loads(engine) -> dict[str, list[tuple[list[int], int]]]:
    rng = random.Random(0)
    tok = engine.tokenizer
    return {
        "single": [(make_prompt(tok, 128, 1), 128)],
        # Distinct prompts of one length: identical ones would mostly be served
        # from our prefix cache, which is a different comparison.
        "equal": [(make_prompt(tok, 128, 200 + i), 128) for i in range(32)],
        "mixed": [
            (make_prompt(tok, rng.randint(32, 256), 100 + i), rng.randint(16, 256))
            for i in range(64)
        ],
    }


def run_ours(engine: Engine, load) -> tuple[float, int]:
    params = [GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True) for _, n in load]
    # The prompts differ from the warm-up's, and the prefix cache is cleared: a
    # fair comparison recomputes every prompt.
    engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    results = engine.generate([p for p, _ in load], params)
    elapsed = time.perf_counter() - start
    useful = sum(len(r.token_ids) for r in results)
    assert useful == sum(n for _, n in load)
    return elapsed, useful


def run_transformers(model, load, batch_size: int, pad_id: int) -> tuple[float, int]:
    start = time.perf_counter()
    useful = 0
    for i in range(0, len(load), batch_size):
        chunk = load[i : i + batch_size]
        width = max(len(p) for p, _ in chunk)
        new = max(n for _, n in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (p, _) in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad_id,
            )
        assert out.shape[1] == width + new
        useful += sum(n for _, n in chunk)
    return time.perf_counter() - start, useful


def load_reference(model_arg: str | None, dtype: torch.dtype):
    import transformers

    if model_arg is None or model_arg == DEFAULT_MODEL or model_arg.endswith(".gguf"):
        path = default_gguf_path() if model_arg in (None, DEFAULT_MODEL) else Path(model_arg)
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
    return transformers.AutoModelForCausalLM.from_pretrained(model_arg, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--loads", default="single,equal,mixed")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--dequantize",
        action="store_true",
        help="GGUF weights dequantized at load (the float32 path; default: kept quantized)",
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    engine = Engine.from_pretrained(
        args.model,
        dtype=args.dtype,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        dequantize=args.dequantize,
    )
    reference = load_reference(args.model, dtype).eval()
    pad_id = engine.tokenizer.eos_token_id or 0
    loads = build_loads(engine)
    # Warm both up (allocator, kernels) on a small request.
    warm = [(make_prompt(engine.tokenizer, 16, 0), 4)]
    run_ours(engine, warm)
    run_transformers(reference, warm, 1, pad_id)
    cpu_kernels.release_thread_pool()

    print(
        f"model {args.model or DEFAULT_MODEL}, {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'load':8} {'requests':>8} {'tokens':>7} {'ours tok/s':>11} {'hf tok/s':>9} "
        f"{'ratio':>6} {'fwd share':>9}"
    )
    figures = {}
    for name in args.loads.split(","):
        load = loads[name]
        s0, f0 = engine.stats.step_time, engine.stats.forward_time
        ours_s, useful = run_ours(engine, load)
        steps_s, fwd_s = engine.stats.step_time - s0, engine.stats.forward_time - f0
        hf_s, _ = run_transformers(reference, load, 32, pad_id)
        # libgomp stops spinning idle workers when it manages more threads than
        # CPUs, so each side runs with the other's OpenMP pool released, as it
        # would alone: the engine frees its own when idle, this frees the main
        # thread's (transformers') before the engine's next run.
        cpu_kernels.release_thread_pool()
        ours_tps, hf_tps = useful / ours_s, useful / hf_s
        figures[name] = {
            "requests": len(load),
            "useful_tokens": useful,
            "ours_tok_s": round(ours_tps, 1),
            "transformers_tok_s": round(hf_tps, 1),
            "ratio": round(ours_tps / hf_tps, 2),
            "forward_share_of_wall": round(fwd_s / ours_s, 3),
            "step_share_of_wall": round(steps_s / ours_s, 3),
        }
        print(
            f"{name:8} {len(load):>8} {useful:>7} {ours_tps:>11.1f} {hf_tps:>9.1f} "
            f"{ours_tps / hf_tps:>5.2f}x {fwd_s / ours_s:>8.0%}"
        )
    engine.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": args.dtype, "loads": figures}, indent=2))


if __name__ == "__main__":
    main()
