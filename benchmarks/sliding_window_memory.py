"""KV memory a Gemma 3 sequence holds with window groups, against a uniform cache.

Gemma 3 1B has 26 layers, every sixth global and the rest local with a
512-token window, one KV head of 256 dims. A uniform paged cache keeps every
token of every layer; ours frees a local layer's blocks once they fall out of
the window (``engine.block_manager``). The ratio depends only on that layout
(layers, window, block size, step), not on the hidden size or the weights, so
a random model with Gemma 3 1B's attention layout and a small hidden size
gives the real model's figure. Run from the repository root:

    python benchmarks/sliding_window_memory.py              # 8k tokens
    python benchmarks/sliding_window_memory.py --tokens 32768
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from candle_agents.engine import Engine, GenerationParams
from tests.support.tiny_models import build_tiny_model

GEMMA3_1B = dict(  # the attention layout of google/gemma-3-1b-it
    num_hidden_layers=26,
    sliding_window=512,
    layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    hidden_size=64,
    intermediate_size=128,
)


def measure(tokens: int, new_tokens: int, block_size: int = 16):
    """Run one sequence of ``tokens`` + ``new_tokens``; its KV groups and peak blocks held.

    The peak is taken right after each step's allocation: the window plus the
    step's new blocks.
    """
    total = tokens + new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(
            "gemma3", Path(tmp), max_position_embeddings=total + 64, **GEMMA3_1B
        )
        engine = Engine.from_pretrained(
            str(path),
            device="cpu",
            dtype="float32",
            block_size=block_size,
            max_model_len=total + 64,
            kv_cache_memory=2 << 30,
        )
        groups = engine.runner.kv_groups
        blocks, sched = engine.block_manager, engine.scheduler
        peak = [0] * len(groups)
        schedule = sched.schedule

        def record():
            batch = schedule()
            for seq in batch.seqs:
                for g, n in enumerate(blocks.held_blocks(seq)):
                    peak[g] = max(peak[g], n)
            return batch

        sched.schedule = record
        rng = random.Random(0)
        prompt = [rng.randrange(3, engine.runner.model.vocab_size) for _ in range(tokens)]
        params = GenerationParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        result = engine.generate(prompt, params)
        deadline = time.monotonic() + 10  # the engine thread frees blocks after the result
        while engine.num_free_blocks != engine.num_blocks and time.monotonic() < deadline:
            time.sleep(0.01)
        free = engine.num_free_blocks == engine.num_blocks
        engine.shutdown()
    assert len(result.token_ids) == new_tokens and free
    return groups, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="prompt length")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    total = args.tokens + args.new_tokens
    groups, peak = measure(args.tokens, args.new_tokens, args.block_size)
    bs = args.block_size
    layers = sum(len(g.layers) for g in groups)
    uniform = layers * math.ceil(total / bs)
    ours = sum(len(g.layers) * n for g, n in zip(groups, peak))
    print(f"Gemma 3 1B layout: {layers} layers, block size {bs}, {total} tokens")
    for g, n in zip(groups, peak):
        kind = "global" if g.window is None else f"window {g.window}"
        print(f"  {len(g.layers):2d} {kind:>10} layers: at most {n} blocks per layer")
    print(f"layer-blocks held at peak: ours {ours}, uniform cache {uniform}")
    print(f"ratio ours / uniform: {ours / uniform:.3f} ({uniform / ours:.1f}x less KV memory)")


if __name__ == "__main__":
    main()
