"""Rope scaling types (linear, Llama 3's, YaRN, LongRoPE) against transformers, with
prompts past the context the scaling stretches; the kinds not supported yet refused."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
import transformers

from candle_agents import Engine, GenerationParams
from candle_agents.engine.layers.rotary import RotaryEmbedding
from candle_agents.errors import ModelLoadError
from tests.support.exactness import GREEDY, Reference, check, engine_for, make_prompts
from tests.support.tiny_models import build_tiny_model

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "beta_fast": 16,
    },
}


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_scaled_rope_matches_transformers(kind, tmp_path):
    scaling = {**SCALINGS[kind], "rope_theta": 10000.0}
    folder = build_tiny_model(
        "llama", tmp_path, name=kind, max_position_embeddings=256, rope_parameters=scaling
    )
    ref = Reference(folder)
    assert ref.model.config.rope_parameters["rope_type"] == scaling["rope_type"]
    with engine_for(folder) as engine:
        prompts = make_prompts(3, engine.runner.model.vocab_size, seed=5, lengths=[20, 90, 150])
        check(engine, ref, prompts, engine.generate(prompts, GREEDY))


# LongRoPE on a tiny Phi-3 turning 3/4 of each 16-wide head: 12 rotated dims, so 6 factors
# per set; original context 32 stretched to 128 (s = 4).
ORIGINAL, LONGEST = 32, 128


def _longrope_model(tmp_path, form: str, **extra):
    """A tiny Phi-3 with random LongRoPE factors, its config.json written in ``form``.

    "rope_parameters": as transformers 5 saves it (everything in ``rope_parameters``, the
    original length there and at the top level); "rope_scaling": Phi-4-mini's published
    form (``rope_scaling`` with ``type``, ``rope_theta`` and ``original_max_position_embeddings``
    at the top level only).
    """
    rng = random.Random(7)
    params = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [round(rng.uniform(1.0, 2.0), 3) for _ in range(6)],
        "long_factor": [round(rng.uniform(2.0, 8.0), 3) for _ in range(6)],
        **extra,
    }
    folder = build_tiny_model(
        "phi3",
        tmp_path,
        max_position_embeddings=LONGEST,
        original_max_position_embeddings=ORIGINAL,
        rope_parameters=params,
    )
    if form == "rope_scaling":
        path = folder / "config.json"
        config = json.loads(path.read_text())
        saved = config.pop("rope_parameters")
        config["rope_theta"] = saved["rope_theta"]
        config["rope_scaling"] = {
            "type": "longrope",
            "short_factor": saved["short_factor"],
            "long_factor": saved["long_factor"],
            **extra,
        }
        path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "form, extra",
    [
        ("rope_parameters", {}),
        ("rope_scaling", {}),
        ("rope_scaling", {"attention_factor": 1.25}),
    ],
)
def test_longrope_tables_match_transformers(form, extra, tmp_path):
    # Rows below the original length: transformers' short-factor cos/sin (a pass whose
    # largest position is 31); rows from it on: its long-factor ones (a pass reaching 127).
    folder = _longrope_model(tmp_path, form, **extra)
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["original_max_position_embeddings"] == ORIGINAL
    rope = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding(config)
    x = torch.zeros(1, dtype=torch.float32)

    def theirs(n):
        cos, sin = rope(x, torch.arange(n)[None])
        return cos[0], sin[0]

    (short_cos, short_sin), (long_cos, long_sin) = theirs(ORIGINAL), theirs(LONGEST)
    assert not torch.equal(short_cos, long_cos[:ORIGINAL])  # the two sets do differ
    with Engine.from_pretrained(str(folder), kv_cache_memory=2**20) as engine:
        rotary = engine.runner.model.rotary
        cos, sin = rotary.cos.cpu(), rotary.sin.cpu()
    assert cos.shape[0] >= LONGEST and cos.shape[1] == 12
    assert torch.equal(cos[:ORIGINAL], short_cos) and torch.equal(sin[:ORIGINAL], short_sin)
    assert torch.equal(cos[ORIGINAL:LONGEST], long_cos[ORIGINAL:])
    assert torch.equal(sin[ORIGINAL:LONGEST], long_sin[ORIGINAL:])
    expected = extra.get("attention_factor", (1 + math.log(4) / math.log(ORIGINAL)) ** 0.5)
    assert rope.attention_scaling == pytest.approx(expected)
    # The original length given inside the scaling dict only (no top-level field) builds the
    # same table.
    inside = {
        "type": "longrope",
        "short_factor": config.rope_parameters["short_factor"],
        "long_factor": config.rope_parameters["long_factor"],
        "original_max_position_embeddings": ORIGINAL,
        **extra,
    }
    alone = RotaryEmbedding(12, LONGEST, 10000.0, inside, LONGEST)
    assert torch.equal(alone.cos, cos[:LONGEST]) and torch.equal(alone.sin, sin[:LONGEST])


def _stepwise(model, prompt: list[int], new: int) -> list[int]:
    """transformers' greedy continuation, one forward per token over a kept cache.

    Each pass picks short or long factors by its own largest position, so a prompt that fits
    the original length is rotated short and every token from position ``ORIGINAL`` on long:
    our per-position rule. ``generate`` is not used past the boundary: Phi-3's
    ``prepare_inputs_for_generation`` drops the cache when the sequence first reaches
    ``ORIGINAL + 1`` tokens and re-encodes everything with the long factors, which no engine
    that keeps its KV cache does.
    """
    cache = transformers.DynamicCache(config=model.config)
    ids, out, pos = torch.tensor([prompt]), [], 0
    with torch.no_grad():
        for _ in range(new):
            n = ids.shape[1]
            logits = model(
                input_ids=ids,
                cache=cache,
                position_ids=torch.arange(pos, pos + n)[None],
                use_cache=True,
            ).logits
            out.append(int(logits[0, -1].argmax()))
            pos, ids = pos + n, torch.tensor([[out[-1]]])
    return out


@pytest.mark.parametrize(
    "overrides",
    [{}, {"max_num_batched_tokens": 24, "prefill_chunk_size": 8}],
    ids=["together", "chunked"],
)
def test_longrope_generation_across_the_original_length(overrides, tmp_path):
    # Prompts that fit the original 32 positions, decoding 30 tokens well past it.
    # Prompts longer than 32 are not compared: transformers rotates the whole of such a
    # prompt with the long factors, our table keeps positions below 32 short.
    folder = _longrope_model(tmp_path, "rope_scaling")
    ref = Reference(folder)
    new = 30
    params = GenerationParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    with engine_for(folder, **overrides) as engine:
        vocab = engine.runner.model.vocab_size
        prompts = make_prompts(4, vocab, seed=11, lengths=[20, 31, 32, 5])
        results = engine.generate(prompts, params)
        # The 20-token prompt again: its first 16-token block comes from the prefix cache.
        again = engine.generate(prompts[0], params)
    assert again.usage.cached_tokens == 16 and again.token_ids == results[0].token_ids
    for prompt, result in zip(prompts, results):
        assert result.token_ids == _stepwise(ref.model, prompt, new), f"{len(prompt)} tokens"
        # generate() agrees until its cache reset at the boundary (the token made at
        # position ORIGINAL - 1 is the last from an unreset cache).
        agree = ORIGINAL - len(prompt) + 1
        assert result.token_ids[:agree] == ref(prompt, new)[:agree]
        assert result.usage.completion_tokens == new


def test_longrope_factor_lists_of_the_wrong_length_are_refused(tmp_path):
    folder = _longrope_model(tmp_path, "rope_scaling")
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["rope_scaling"]["short_factor"] = config["rope_scaling"]["short_factor"][:5]
    path.write_text(json.dumps(config))
    message = "longrope rope scaling needs short_factor as a list of 6 numbers"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        Engine.from_pretrained(str(folder), kv_cache_memory=2**20)
