"""Rope scaling types (linear, Llama 3's, YaRN) token for token against transformers,
with prompts past the context the scaling stretches; the kinds not supported yet refused."""

from __future__ import annotations

import re

import pytest

from candle_agents import Engine
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


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": [1.0] * 6,
                    "long_factor": [2.0] * 6,
                    "original_max_position_embeddings": 64,
                }
            },
            "rope scaling type 'longrope' is not supported yet",
        ),
    ],
)
def test_rope_kinds_not_supported_yet_are_refused(overrides, message, tmp_path):
    folder = build_tiny_model("phi3", tmp_path, max_position_embeddings=256, **overrides)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        Engine.from_pretrained(str(folder), kv_cache_memory=2**20)
