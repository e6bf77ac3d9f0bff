"""Decode steps in one C call (engine.decode_stack) against the per-layer path.

Both run the same kernels in the same order, so every step's logits must be
equal bit for bit, not merely close: on every architecture, float32 (panel)
and quantized weights, each KV cache type, batches that cross block edges.
The per-layer path itself is checked against transformers elsewhere
(test_engine_exactness.py, test_quantized_engine.py, test_gguf_files.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from candle_agents import Engine, GenerationParams
from candle_agents.engine import cpu_kernels
from candle_agents.engine.layers.linear import PackedLinear
from tests.support.checks import assert_all_blocks_free, run_in_isa_build
from tests.support.exactness import make_prompts

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")

GGUF = Path(__file__).parents[1] / "data" / "gguf"
STEPS = GenerationParams(max_tokens=20, temperature=0.0, ignore_eos=True)
# block_size 16: prompts of 15-17 tokens cross a block edge on their first decode steps
LENGTHS = [1, 15, 16, 17, 40]


def step_logits(engine: Engine, prompts, use_stack: bool):
    """Greedy results and every step's logits, with the stack on or off."""
    runner = engine.runner
    stack, runner.decode_stack = runner.decode_stack, runner.decode_stack if use_stack else None
    calls = {"stack": 0}
    if use_stack:
        run = stack.run

        def counted(*args):
            calls["stack"] += 1
            return run(*args)

        stack.run = counted
    logits = []
    execute = runner.execute

    def capture(batch):
        out, sampling = execute(batch)
        logits.append(out.clone())
        return out, sampling

    runner.execute = capture
    try:
        results = engine.generate(prompts, STEPS)
    finally:
        runner.execute = execute
        runner.decode_stack = stack
        if use_stack:
            del stack.run
    assert_all_blocks_free(engine)
    return [r.token_ids for r in results], logits, calls["stack"]


def assert_same_steps(engine: Engine, prompts) -> None:
    assert engine.runner.decode_stack is not None, "the C decode step was not set up"
    tokens, logits, used = step_logits(engine, prompts, use_stack=True)
    ref_tokens, ref_logits, _ = step_logits(engine, prompts, use_stack=False)
    assert used >= STEPS.max_tokens - 1, f"the stack ran {used} steps"
    assert tokens == ref_tokens
    assert len(logits) == len(ref_logits)
    for step, (got, want) in enumerate(zip(logits, ref_logits)):
        assert torch.equal(got, want), (step, (got - want).abs().max().item())


def engine_for(path, **overrides) -> Engine:
    config = dict(
        kv_cache_memory=4 * 2**20,
        max_num_seqs=8,
        enable_prefix_caching=False,  # a cache hit would change the second run's steps
    )
    config.update(overrides)
    return Engine.from_pretrained(str(path), **config)


@pytest.mark.parametrize("weights", ["float32", "q8_0"])
@pytest.mark.parametrize("kv", ["float32", "float16"])
def test_every_arch_matches_the_per_layer_path(arch, tiny_model_dir, weights, kv):
    quantize = None if weights == "float32" else weights
    with engine_for(tiny_model_dir(arch), quantize=quantize, kv_cache_dtype=kv) as engine:
        model = engine.runner.model
        if len(engine.runner.kv_groups) > 1:
            # The C step takes one block table for every layer; Gemma's local and
            # global layers read different pools (and its blocks differ anyway).
            pytest.skip("models mixing local and global layers decode layer by layer")
        if weights == "float32":
            packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
            if not packed or any(m.panels is None for m in packed):
                pytest.skip("no panel kernel on this CPU: float models decode layer by layer")
        assert_same_steps(engine, make_prompts(5, model.vocab_size, lengths=LENGTHS))


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("qwen3-h256-Q4_K_M", {}),  # QK-norm; Q4_K and Q6_K parts in one QKV matrix
        ("qwen2-h256-Q4_K_M", {"kv_cache_dtype": "bfloat16"}),  # QKV bias
        ("llama-h256-Q4_K_M", {"quantized_matmul": "int8"}),  # and a float16 cache
        ("llama-h64-Q4_K_M", {}),  # Q5_0 / Q8_0 fallbacks for rows of 64
    ],
)
def test_gguf_files_match_the_per_layer_path(name, overrides):
    with engine_for(GGUF / f"{name}.gguf", **overrides) as engine:
        prompts = make_prompts(5, engine.runner.model.vocab_size, seed=1, lengths=LENGTHS)
        assert_same_steps(engine, prompts)


def test_the_default_model_decodes_in_one_call_and_release_drops_it():
    engine = Engine.from_pretrained(kv_cache_memory=16 * 2**20, enable_prefix_caching=False)
    runner = engine.runner
    assert runner.decode_stack is not None
    prompts = [engine.tokenize("The capital of France is"), engine.tokenize("def add(a, b):")]
    assert_same_steps(engine, prompts)
    engine.shutdown()
    assert runner.decode_stack is None  # it points into the cache, which is gone


def run_isa_check(model_dir: str) -> None:
    """The stack against the per-layer path on this process's kernel build (run per ISA
    below: the C step itself has no ISA code, but every kernel it calls does)."""
    assert cpu_kernels.available(), "the kernels did not build"
    for kv in ("float32", "float16"):
        with engine_for(model_dir, quantize="q8_0", kv_cache_dtype=kv) as engine:
            vocab = engine.runner.model.vocab_size
            assert_same_steps(engine, make_prompts(3, vocab, seed=2, lengths=[16, 17, 5]))
    print("decode stack checks passed")


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_isa_builds(isa, tiny_model_dir):
    model = str(tiny_model_dir("llama"))
    run_in_isa_build(isa, __file__, f"run_isa_check({model!r})", "decode stack checks passed")


SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -2.5,
    math.inf,
    -math.inf,
    65504.0,  # the largest half
    65519.99,  # rounds down to it
    65520.0,  # rounds (to even) up to infinity
    2.0**-14,  # the smallest normal half
    2.0**-24,  # the smallest subnormal half
    2.0**-25,  # a tie between 0 and the smallest subnormal: to even (0)
    2.0**-25 * 1.0001,  # just above the tie
    3 * 2.0**-25,  # a tie between subnormals 1 and 2: to even (2)
    1.0 + 2.0**-11,  # a tie in the normal range: to even (1.0)
    1.0 + 3 * 2.0**-11,  # a tie: to even (1.0 + 2^-9)
    1.0 + 2.0**-8,  # a bfloat16 tie: to even (1.0)
    1.0 + 3 * 2.0**-8,  # a bfloat16 tie: to even (1.0 + 2^-6)
    3.4e38,  # bfloat16 rounds it up to infinity
    1e-40,  # a float32 subnormal
]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_store_kv_rounds_as_torch_does(dtype):
    kv_heads, block, d, blocks, tokens = 2, 4, 16, 6, 9
    g = torch.Generator().manual_seed(0)
    values = torch.randn(tokens, 3 * kv_heads * d, generator=g)
    values *= torch.logspace(-30, 5, values.numel(), base=2.0).view_as(values)
    # K and V as column slices of one wider row, as in a fused QKV output
    key = values[:, kv_heads * d : 2 * kv_heads * d].view(tokens, kv_heads, d)
    value = values[:, 2 * kv_heads * d :].view(tokens, kv_heads, d)
    special = torch.ones(kv_heads * d)
    special[: len(SPECIAL)] = torch.tensor(SPECIAL)
    special = special.view(kv_heads, d)
    key[0], value[0], key[1], value[1] = special, -special, -special, special
    slots = torch.randperm(blocks * block, generator=g)[:tokens]
    shape = (blocks, kv_heads, block, d)
    k_cache, v_cache = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    cpu_kernels.store_kv(key, value, k_cache, v_cache, slots)
    want_k, want_v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    for i, slot in enumerate(slots.tolist()):
        want_k[slot // block, :, slot % block] = key[i].to(dtype)
        want_v[slot // block, :, slot % block] = value[i].to(dtype)
    assert torch.equal(bits(k_cache), bits(want_k))
    assert torch.equal(bits(v_cache), bits(want_v))
