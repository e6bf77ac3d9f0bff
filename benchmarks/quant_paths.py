"""The quantized-weight paths on one GGUF file: speed, and how far each moves the outputs.

Paths: ``dequantize`` (weights dequantized to float32 at load: the reference),
``exact`` (blocks kept, dequantized in registers, float32 sums) and ``int8``
(activations quantized per block, integer dot products, as llama.cpp does;
prompts in bfloat16 where the CPU is fast at it), each with a float32 and a
float16 KV cache (the default of exact and of int8 respectively).

Fidelity against the reference, on chat prompts:
- first greedy divergence: the step where a path's greedy tokens first differ
  (none within ``--steps`` is reported as ">= steps");
- mean KL(reference || path) of the next-token distributions, teacher-forced
  along the reference's greedy continuation (full vocabulary), and how often
  the two argmaxes agree.
Speed: decode tok/s with 1 and 32 sequences (128-token prompts), the prompt
phase excluded.

    python benchmarks/quant_paths.py                 # the embedded default model
    python benchmarks/quant_paths.py --model F.gguf --steps 32 --prompts 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import torch

from candle_agents import Engine, GenerationParams
from candle_agents.engine import cpu_kernels

PATHS = {
    "dequantize": {"dequantize": True},
    "exact": {"quantized_matmul": "exact"},
    "exact, float16 KV": {"quantized_matmul": "exact", "kv_cache_dtype": "float16"},
    "int8, float32 KV": {"quantized_matmul": "int8", "kv_cache_dtype": "float32"},
    "int8": {"quantized_matmul": "int8"},  # float16 KV, bfloat16 prompts
}
# Long enough that every prompt is prefilled as one prompt-sized matmul (64+ rows:
# bfloat16 on the int8 path where the CPU is fast at it).
SYSTEM = (
    "You are a concise, friendly assistant. Answer in plain words, in one or two "
    "sentences, without lists or headings. If a question is about computers, give "
    "one concrete example; if it asks for a poem, keep to the form it names; if it "
    "is unclear, answer the most likely reading."
)
QUESTIONS = [
    "What is a cache?",
    "Why is the sky blue? Answer in one sentence.",
    "Write a haiku about paged memory.",
    "Explain continuous batching to a child.",
    "List two uses of a hash table.",
    "What does a GPU do?",
    "Describe the smell of rain.",
    "Suggest a name for a pet robot.",
]


class HeadLogits:
    """Captures the output head's logits (full vocabulary) of each forward pass."""

    def __init__(self, engine: Engine) -> None:
        self.rows: list[torch.Tensor] = []
        engine.runner.model.lm_head.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.rows.append(output.detach().float().clone())


def next_token_logits(engine: Engine, head: HeadLogits, context: list[int]) -> torch.Tensor:
    head.rows.clear()
    engine.generate(context, GenerationParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    return head.rows[-1][-1]


def fidelity(engines: dict[str, Engine], prompts: list[list[int]], steps: int) -> dict:
    greedy = GenerationParams(max_tokens=steps, temperature=0.0, ignore_eos=True)
    outputs = {name: e.generate(prompts, greedy) for name, e in engines.items()}
    heads = {name: HeadLogits(e) for name, e in engines.items()}
    ref = outputs["dequantize"]
    report = {}
    for name in engines:
        if name == "dequantize":
            continue
        divergences, kls, agree = [], [], 0
        for i, prompt in enumerate(prompts):
            got, want = outputs[name][i].token_ids, ref[i].token_ids
            first = next((s for s, (a, b) in enumerate(zip(got, want)) if a != b), None)
            divergences.append(steps if first is None else first)
            for s in range(steps):
                context = prompt + want[:s]
                p = next_token_logits(engines["dequantize"], heads["dequantize"], context)
                q = next_token_logits(engines[name], heads[name], context)
                p, q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
                kls.append(float((p.exp() * (p - q)).sum()))
                agree += int(p.argmax() == q.argmax())
        report[name] = {
            "first_divergence_min": min(divergences),
            "first_divergence_median": sorted(divergences)[len(divergences) // 2],
            "prompts_identical": sum(d == steps for d in divergences),
            "mean_kl": sum(kls) / len(kls),
            "max_kl": max(kls),
            "top1_agreement": agree / len(kls),
        }
    return report


def decode_speed(engine: Engine, n: int, new: int, seed: int) -> float:
    rng = random.Random(seed)
    prompts = [[rng.randrange(100, 20000) for _ in range(128)] for _ in range(n)]
    params = GenerationParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    first = [None] * n

    async def run():
        async def one(i):
            async for _ in engine.stream(prompts[i], params):
                if first[i] is None:
                    first[i] = time.perf_counter()

        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(run())
    end = time.perf_counter()
    return n * (new - 1) / (end - max(first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a .gguf file (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=64, help="tokens per request in the speed runs")
    ap.add_argument("--npl", default="1,32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("the C kernels did not build here: nothing quantized to measure")
    common = {"kv_cache_memory": 512 * 2**20, "max_num_seqs": 32}
    engines = {
        name: Engine.from_pretrained(args.model, **common, **cfg) for name, cfg in PATHS.items()
    }

    any_engine = engines["exact"]
    prompts = [
        any_engine.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], tokenize=True
        )
        for q in QUESTIONS[: args.prompts]
    ]
    result = {"model": args.model or "default", "fidelity": fidelity(engines, prompts, args.steps)}
    for e in engines.values():
        e.shutdown()
    speed: dict[str, dict[int, float]] = {}
    for name, cfg in PATHS.items():
        with Engine.from_pretrained(args.model, **common, **cfg) as engine:
            decode_speed(engine, 1, 8, seed=99)  # warm-up
            speed[name] = {
                n: max(decode_speed(engine, n, args.new, seed=s) for s in range(2))
                for n in map(int, args.npl.split(","))
            }
    result["decode_tok_s"] = speed
    print(f"model: {result['model']}; {args.prompts} chat prompts, {args.steps} steps")
    print("| path | first divergence (min / median) | identical | mean KL | max KL | top-1 agree |")
    print("|---|---|---|---|---|---|")
    for name, f in result["fidelity"].items():
        print(
            f"| {name} | {f['first_divergence_min']} / {f['first_divergence_median']} | "
            f"{f['prompts_identical']}/{args.prompts} | {f['mean_kl']:.2e} | {f['max_kl']:.2e} | "
            f"{100 * f['top1_agreement']:.1f}% |"
        )
    npls = list(next(iter(speed.values())))
    print("\n| path | " + " | ".join(f"decode tok/s, {n} seq" for n in npls) + " |")
    print("|---|" + "---|" * len(npls))
    for name, row in speed.items():
        print(f"| {name} | " + " | ".join(f"{row[n]:.1f}" for n in npls) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
