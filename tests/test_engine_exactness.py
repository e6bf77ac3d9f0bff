"""Greedy output equals transformers token for token, under every scheduling scenario."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
import transformers
from checks import assert_all_blocks_free

from candle_agents import Engine, GenerationParams

MAX_NEW = 16
GREEDY = GenerationParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


def make_prompts(n: int, vocab: int, seed: int = 0, lengths=None) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = lengths or [rng.randint(1, 90) for _ in range(n)]
    return [[rng.randrange(3, vocab) for _ in range(k)] for k in lengths]


class Reference:
    """transformers' greedy continuation of each prompt, run alone, memoised.

    ``load_kwargs`` go to ``from_pretrained`` (``gguf_file=name`` to load a GGUF file).
    """

    def __init__(self, path, **load_kwargs) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, **load_kwargs
        )
        self.cache: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
        key = (*prompt, -max_new)
        if key not in self.cache:
            ids = torch.tensor([prompt])
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                pad_token_id=0,
            )
            self.cache[key] = out[0, len(prompt) :].tolist()
        return self.cache[key]


_refs: dict[str, Reference] = {}


@pytest.fixture
def ref(arch, tiny_model_dir):
    if arch not in _refs:
        _refs[arch] = Reference(tiny_model_dir(arch))
    return _refs[arch]


def engine_for(path, **overrides) -> Engine:
    config = dict(kv_cache_memory=4 * 2**20, max_num_seqs=32, max_num_batched_tokens=256)
    config.update(overrides)
    return Engine.from_pretrained(str(path), **config)


def check(engine, ref, prompts, results) -> None:
    for prompt, result in zip(prompts, results):
        assert result.token_ids == ref(prompt), f"prompt of {len(prompt)} tokens diverged"
        assert result.finish_reason == "length"
        assert result.usage.prompt_tokens == len(prompt)
        assert result.usage.completion_tokens == MAX_NEW
    assert_all_blocks_free(engine)


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
    path = tiny_model_dir(arch)
    probe = engine_for(path, block_size=8)
    per_block = probe.runner.kv_caches[0][0][0].numel() * 4 * 2 * len(probe.runner.kv_caches)
    probe.shutdown()
    with engine_for(
        path, block_size=8, kv_cache_memory=24 * per_block, attention_backend=backend
    ) as engine:
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
        engine.runner.kv_buffer[:, :, 1:] = float("nan")
        prompts = make_prompts(
            6, engine.runner.model.vocab_size, seed=8, lengths=[3, 9, 30, 1, 17, 50]
        )
        results = engine.generate(prompts, GREEDY)
        check(engine, reference, prompts, results)
