"""Checking the engine against transformers, token by token: prompts, references, checks."""

from __future__ import annotations

import random

import torch
import transformers

from candle_agents import Engine, GenerationParams
from tests.support.checks import assert_all_blocks_free

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
