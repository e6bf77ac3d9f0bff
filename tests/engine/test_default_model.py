"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers.

transformers loads the same GGUF (dequantized to float32), so greedy output
on the exact kernels (the default) must match token for token in every
scheduling scenario. (The int8 path has llama.cpp's numerics instead: how far
it moves the outputs is measured by benchmarks/quant_paths.py.)
"""

from __future__ import annotations

import asyncio

import pytest
import torch
import transformers

from candle_agents import Engine, GenerationParams
from candle_agents.engine.loader import default_gguf_path
from tests.support.checks import assert_all_blocks_free

NEW = 12
GREEDY = GenerationParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
EXACT = {"quantized_matmul": "exact"}
SYSTEM = "You are a concise assistant that answers questions about computers and caches."
QUESTIONS = [
    "What is a cache?",
    "Name three colors.",
    "Why is the sky blue? Answer in one sentence.",
    "Write a haiku about paged memory.",
    "What is 12 plus 30?",
    "Translate 'good morning' into French.",
    "List two uses of a hash table.",
    "Explain continuous batching to a child.",
    "你好！请用一句话介绍你自己。",
    "Give me an emoji that means success.",
    "What does a GPU do?",
    "Summarize the plot of Cinderella in ten words.",
    "Is 17 a prime number?",
    "Suggest a name for a pet robot.",
    "What is the capital of Japan?",
    "Describe the smell of rain.",
]


@pytest.fixture(scope="module")
def engine():
    # A small token budget and chunk size make the longer prompts prefill in
    # several chunks while others decode.
    eng = Engine.from_pretrained(
        kv_cache_memory=64 * 2**20, max_num_batched_tokens=96, prefill_chunk_size=32, **EXACT
    )
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def reference():
    path = default_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    cache: dict[tuple[int, ...], list[int]] = {}

    def generate(prompt: list[int]) -> list[int]:
        if tuple(prompt) not in cache:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                do_sample=False,
                pad_token_id=2,
            )
            cache[tuple(prompt)] = out[0, len(prompt) :].tolist()
        return cache[tuple(prompt)]

    generate.model = model
    return generate


def chat(engine, question: str, system: str = SYSTEM) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return engine.apply_chat_template(messages, tokenize=True)


def test_chat_template_matches_transformers(engine):
    path = default_gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi 🙂"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "你好"},
    ]
    ours = engine.apply_chat_template(messages)
    theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert engine.tokenize(ours, add_special_tokens=False) == tok.encode(
        theirs, add_special_tokens=False
    )


def test_one_request_alone(engine, reference):
    prompt = chat(engine, QUESTIONS[0])
    result = engine.generate(prompt, GREEDY)
    assert result.token_ids == reference(prompt)
    assert result.text == engine.detokenize(result.token_ids)
    assert_all_blocks_free(engine)


def test_sixteen_requests_together(engine, reference):
    prompts = [chat(engine, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 8  # different lengths
    results = engine.generate(prompts, GREEDY)
    for prompt, result in zip(prompts, results):
        assert result.token_ids == reference(prompt)
    assert_all_blocks_free(engine)


def test_staggered_arrivals_and_prefix_hits(engine, reference):
    prompts = [chat(engine, q) for q in QUESTIONS[:6]]

    async def run():
        async def one(i, p):
            await asyncio.sleep(0.15 * i)
            return await engine.agenerate(p, GREEDY)

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    results = asyncio.run(run())
    for prompt, result in zip(prompts, results):
        assert result.token_ids == reference(prompt)
        # The system prompt was seen before: its full blocks come from the cache.
        assert result.usage.cached_tokens >= 16
    assert_all_blocks_free(engine)


def test_multi_turn_chat_reuses_the_history(engine, reference):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}]
    first = engine.generate(engine.apply_chat_template(messages), GREEDY)
    messages += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And at sunset?"},
    ]
    prompt = engine.apply_chat_template(messages, tokenize=True)
    second = engine.generate(prompt, GREEDY)
    assert second.usage.cached_tokens >= 32
    assert second.token_ids == reference(prompt)


def test_forced_preemption(reference):
    # Room for 12 blocks of 16 tokens: 6 prompts of ~50 tokens cannot all run at once.
    per_block = 2 * 30 * 16 * 3 * 64 * 4
    with Engine.from_pretrained(kv_cache_memory=12 * per_block, max_num_seqs=6, **EXACT) as engine:
        assert engine.num_blocks == 12
        prompts = [chat(engine, q) for q in QUESTIONS[:6]]
        results = engine.generate(prompts, GREEDY)
        assert engine.scheduler.num_preemptions > 0
        for prompt, result in zip(prompts, results):
            assert result.token_ids == reference(prompt)
        assert_all_blocks_free(engine)


def test_stops_at_eos_without_ignore_eos(engine):
    prompt = chat(engine, "Say only the word 'yes'.")
    result = engine.generate(prompt, GenerationParams(max_tokens=64, temperature=0))
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] in engine.eos_token_ids
    assert "<|im_end|>" not in result.text


@pytest.fixture(scope="module")
def dequantized():
    """The reference path: GGUF weights dequantized to float32 at load."""
    eng = Engine.from_pretrained(dequantize=True, kv_cache_memory=64 * 2**20)
    yield eng
    eng.shutdown()


def first_divergence(got, want) -> str:
    """Where two greedy runs part, and how close the reference's top two choices were."""
    for step, (a, b) in enumerate(zip(got.token_ids, want.token_ids)):
        if a != b:
            top = want.logprobs[step].top_logprobs
            margin = top[0][2] - top[1][2]
            return f"diverged at step {step}: {a} vs {b}, reference logit margin {margin:.2e}"
    return "same tokens"


def test_quantized_weights_give_the_dequantized_greedy_tokens(engine, dequantized):
    # The default engine keeps the Q4_1/Q8_0 blocks and runs the exact kernels
    # (weights dequantized in registers, float32 sums): within float rounding of
    # the float32 matmuls, so greedy tokens are the same, alone and batched.
    params = GenerationParams(
        max_tokens=NEW, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2
    )
    assert type(engine.runner.model.lm_head).__name__ == "QuantLinear"
    prompts = [chat(engine, q) for q in QUESTIONS]
    want = dequantized.generate(prompts, params)
    together = engine.generate(prompts, params)
    alone = [engine.generate(p, params) for p in prompts[:4]]
    for i, (w, t) in enumerate(zip(want, together)):
        assert t.token_ids == w.token_ids, f"prompt {i} batched: {first_divergence(t, w)}"
    for i, (w, a) in enumerate(zip(want, alone)):
        assert a.token_ids == w.token_ids, f"prompt {i} alone: {first_divergence(a, w)}"
    assert_all_blocks_free(engine)
