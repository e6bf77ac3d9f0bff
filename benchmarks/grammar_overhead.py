"""What constrained decoding costs a batch: step time with 0, 1 and all rows under a grammar.

A batch of 16 requests decodes 64 tokens each on the default model, greedy; the
grammar rows run under a regex that cannot be complete within 64 tokens, so
every row stays in the batch to the end and the steps compare like for like.
Also timed: compiling a grammar (cold, then from the cache) and building the
tokenizer index llguidance needs (once per engine).

    python benchmarks/grammar_overhead.py
    python benchmarks/grammar_overhead.py --requests 32 --tokens 128 --repeats 5

The claim it checks: a constrained request costs the others no more than its
mask (the masks are filled on a worker thread while the forward pass runs and
applied batched in the sampler).
"""

from __future__ import annotations

import argparse
import statistics
import time

from candle_agents import Engine, GenerationParams
from candle_agents.engine.grammar import Grammar, GrammarCompiler

# Lower-case words: at most ~16 characters a token, so 64 tokens never reach 4000.
LONG_TEXT = Grammar.regex("[a-z ]{4000}")
SCHEMA = Grammar.json_schema(
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
)


def step_ms(engine: Engine, prompts: list[str], constrained: int, tokens: int) -> float:
    """Mean wall time of a decode step with ``constrained`` of the rows under the grammar."""
    plain = GenerationParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    ruled = GenerationParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, grammar=LONG_TEXT)
    params = [ruled if i < constrained else plain for i in range(len(prompts))]
    engine.block_manager.reset_prefix_cache()
    steps0, time0 = engine.stats.steps, engine.stats.step_time
    results = engine.generate(prompts, params)
    assert all(len(r.token_ids) == tokens for r in results), "a row left the batch early"
    return 1000 * (engine.stats.step_time - time0) / (engine.stats.steps - steps0)


def compile_times(engine: Engine) -> tuple[float, float, float]:
    """Seconds: tokenizer index build, a cold compile, a compile served from the cache."""
    start = time.perf_counter()
    compiler = GrammarCompiler(engine.tokenizer.tokenizer, engine.eos_token_ids)
    built = time.perf_counter() - start
    try:
        start = time.perf_counter()
        compiler.compile(SCHEMA)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        compiler.compile(SCHEMA)
        cached = time.perf_counter() - start
    finally:
        compiler.close()
    return built, cold, cached


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median counts")
    args = parser.parse_args(argv)

    with Engine.from_pretrained(max_num_seqs=max(64, args.requests)) as engine:
        prompts = [f"Write a short story about a lighthouse keeper, part {i}." for i in range(16)]
        prompts = (prompts * (args.requests // 16 + 1))[: args.requests]
        step_ms(engine, prompts, args.requests, 4)  # warm-up: kernels, grammar compiler
        cases = {"none": 0, "one": 1, "all": args.requests}
        figures = {
            name: statistics.median(
                step_ms(engine, prompts, n, args.tokens) for _ in range(args.repeats)
            )
            for name, n in cases.items()
        }
        built, cold, cached = compile_times(engine)

    print(f"{args.requests} requests x {args.tokens} tokens, greedy, default model")
    print(f"{'rows under a grammar':>22}  ms/step  vs none")
    for name, n in cases.items():
        ratio = figures[name] / figures["none"]
        print(f"{f'{name} ({n})':>22}  {figures[name]:7.1f}  {ratio:6.3f}x")
    print(
        f"tokenizer index {built * 1000:.0f} ms (once per engine); json_schema compile "
        f"{cold * 1000:.2f} ms cold, {cached * 1e6:.0f} us cached"
    )


if __name__ == "__main__":
    main()
