"""Greedy output equals transformers token for token, under every scheduling scenario."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.checks import assert_all_blocks_free
from tests.support.exactness import GREEDY, Reference, check, engine_for, make_prompts

_refs: dict[str, Reference] = {}


@pytest.fixture
def ref(arch, tiny_model_dir):
    if arch not in _refs:
        _refs[arch] = Reference(tiny_model_dir(arch))
    return _refs[arch]


def test_single_request(arch, tiny_model_dir, ref):
    with engine_for(tiny_model_dir(arch)) as engine:
        prompt = make_prompts(1, engine.runner.model.vocab_size, lengths=[23])
        check(engine, ref, prompt, [engine.generate(prompt[0], GREEDY)])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_sixteen_requests_together(arch, tiny_model_dir, ref, backend):
    with engine_for(tiny_model_dir(arch), attention_backend=backend) as engine:
        assert engine.runner.backend.name == backend
        prompts = make_prompts(16, engine.runner.model.vocab_size, seed=1)
        results = engine.generate(prompts, GREEDY)
        check(engine, ref, prompts, results)


def test_staggered_arrivals(arch, tiny_model_dir, ref):
    with engine_for(tiny_model_dir(arch)) as engine:
        prompts = make_prompts(10, engine.runner.model.vocab_size, seed=2)

        async def run():
            async def one(i, p):
                await asyncio.sleep(0.01 * i)  # arrive while earlier ones are decoding
                return await engine.agenerate(p, GREEDY)

            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

        check(engine, ref, prompts, asyncio.run(run()))


def test_chunked_prefill(arch, tiny_model_dir, ref):
    # A 24-token budget with 8-token chunks: long prompts take several steps
    # while the short ones decode beside them.
    with engine_for(
        tiny_model_dir(arch), max_num_batched_tokens=24, prefill_chunk_size=8
    ) as engine:
        prompts = make_prompts(
            6, engine.runner.model.vocab_size, seed=3, lengths=[3, 70, 5, 41, 9, 100]
        )
        results = engine.generate(prompts, GREEDY)
        assert engine.stats.steps > sum(-(-len(p) // 8) for p in prompts) // 3
        check(engine, ref, prompts, results)


def test_prefix_cache_hit(arch, tiny_model_dir, ref):
    with engine_for(tiny_model_dir(arch), block_size=16) as engine:
        vocab = engine.runner.model.vocab_size
        shared = make_prompts(1, vocab, seed=4, lengths=[50])[0]
        tails = make_prompts(3, vocab, seed=5, lengths=[7, 1, 20])
        first = engine.generate(shared + tails[0], GREEDY)
        assert first.usage.cached_tokens == 0
        later = engine.generate([shared + t for t in tails[1:]], GREEDY)
        for r in later:
            assert r.usage.cached_tokens == 48  # three full 16-token blocks of the prefix
        check(engine, ref, [shared + t for t in tails], [first, *later])
        # The same prompt again: everything but the last token comes from the cache.
        again = engine.generate(shared + tails[0], GREEDY)
        assert again.usage.cached_tokens == 48 and again.token_ids == first.token_ids


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_forced_preemption(arch, tiny_model_dir, ref, backend):
    # 24 blocks of 8 tokens cannot hold 12 sequences of up to ~75 tokens at once.
    # Sliding-window layers free what falls out of the window, so there each
    # sequence holds about 3 blocks: 8-token chunks keep prompts from taking
    # more at once, and 12 sequences still need more than 24.
    path = tiny_model_dir(arch)
    probe = engine_for(path, block_size=8)
    per_block = probe.runner.kv_caches[0][0][0].numel() * 4 * 2 * len(probe.runner.kv_caches)
    windowed = probe.runner.model.spec.layer_windows is not None
    probe.shutdown()
    with engine_for(
        path,
        block_size=8,
        kv_cache_memory=24 * per_block,
        attention_backend=backend,
        **({"prefill_chunk_size": 8} if windowed else {}),
    ) as engine:
        if not windowed:
            assert engine.num_blocks == 24
        prompts = make_prompts(
            12, engine.runner.model.vocab_size, seed=6, lengths=[40, 55, 20, 60] * 3
        )
        results = engine.generate(prompts, GREEDY)
        assert engine.scheduler.num_preemptions > 0
        check(engine, ref, prompts, results)


def test_outputs_equal_alone_and_batched(arch, tiny_model_dir):
    with engine_for(
        tiny_model_dir(arch), max_num_batched_tokens=64, prefill_chunk_size=16
    ) as engine:
        prompts = make_prompts(8, engine.runner.model.vocab_size, seed=7)
        alone = [engine.generate(p, GREEDY).token_ids for p in prompts]
        together = [r.token_ids for r in engine.generate(prompts, GREEDY)]
        assert together == alone
        assert_all_blocks_free(engine)


def test_uninitialised_cache_memory_never_leaks_into_outputs(tiny_model_dir):
    # The cache starts as uninitialised memory; poison every unused block with
    # NaN and check that blocks are cleaned on first use (padding included).
    path = tiny_model_dir("llama")
    reference = _refs.get("llama") or Reference(path)
    with engine_for(path, block_size=8) as engine:
        for group in engine.runner.kv_groups:
            group.buffer[:, :, 1:] = float("nan")
        prompts = make_prompts(
            6, engine.runner.model.vocab_size, seed=8, lengths=[3, 9, 30, 1, 17, 50]
        )
        results = engine.generate(prompts, GREEDY)
        check(engine, reference, prompts, results)
