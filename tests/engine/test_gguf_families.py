"""Phi-3/Phi-4-mini, SmolLM3, Gemma 2 and Gemma 3 GGUF files written by llama.cpp's own
converter and llama-quantize (tests/data/gguf/, made by tests/data/make_gguf_files.py):
our loader, tokenizer and greedy output against transformers loading the same file.

transformers' GGUF loader drops a few things these files state or imply, so the
reference gets them as config (the same weights and tokenizer, read by transformers):
- phi3: ``rope.dimension_count`` (the rotated width: Phi-4-mini's partial rotary);
- gemma2/gemma3: llama.cpp's attention scale 1/sqrt(``attention.key_length``), where
  transformers keeps its default ``query_pre_attn_scalar`` (256);
- smollm3: transformers has no GGUF entry for it; it is registered for the test as
  the Llama layout it is (llama.cpp writes it with LlamaModel's tables and Q/K
  permutation), the no-rope layers coming from SmolLM3Config's default, as llama.cpp
  hard-codes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from gguf import GGUFReader

from candle_agents.engine.loader.gguf import load_gguf
from tests.support.exactness import GREEDY, Reference, check, engine_for
from tests.support.tiny_models import CORPUS

DATA = Path(__file__).parents[1] / "data" / "gguf"

# file stem -> (HF architecture, layers, GGML tensor types, reference config fixes)
FILES = {
    "phi3-h256-Q4_K_M": (
        "Phi3ForCausalLM",
        1,
        {"F32", "Q4_K", "Q6_K"},
        {"partial_rotary_factor": 0.75},
    ),
    "phi3-h256-Q8_0": ("Phi3ForCausalLM", 1, {"F32", "Q8_0"}, {"partial_rotary_factor": 0.75}),
    "smollm3-h256-Q4_K_M": ("SmolLM3ForCausalLM", 4, {"F32", "Q4_K", "Q5_0", "Q6_K"}, {}),
    "gemma2-h256-Q4_K_M": (
        "Gemma2ForCausalLM",
        2,
        {"F32", "Q4_K", "Q5_0", "Q6_K"},
        {"query_pre_attn_scalar": 64},
    ),
    "gemma2-h256-Q8_0": ("Gemma2ForCausalLM", 2, {"F32", "Q8_0"}, {"query_pre_attn_scalar": 64}),
    "gemma3-h256-Q4_K_M": (
        "Gemma3ForCausalLM",
        2,
        {"F32", "Q4_K", "Q5_0", "Q6_K"},
        {"query_pre_attn_scalar": 64},
    ),
    "gemma3-h64-Q8_0": ("Gemma3ForCausalLM", 6, {"F32", "Q8_0"}, {"query_pre_attn_scalar": 64}),
}
# Longer than the Gemma files' 16-token sliding window; repeats, code, CJK and emoji.
PROMPT_TEXTS = [CORPUS[0], CORPUS[2], CORPUS[4]]
TEXTS = [
    *CORPUS,
    "日本語 ẞ 👍🏽 \t tabs\n\nand  two  spaces",
    "<start_of_turn>user hi<end_of_turn>",
]

params = pytest.mark.parametrize("stem", sorted(FILES))


@pytest.fixture(autouse=True, scope="module")
def _smollm3_in_transformers():
    """Let transformers' (legacy) GGUF loader read smollm3 files with its Llama tables."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    added = "smollm3" not in GGUF_CONFIG_MAPPING
    if added:
        GGUF_CONFIG_MAPPING["smollm3"] = dict(GGUF_CONFIG_MAPPING["llama"])
        gguf_utils.GGUF_SUPPORTED_ARCHITECTURES.append("smollm3")
        gguf_utils.TENSOR_PROCESSORS["smollm3"] = gguf_utils.LlamaTensorProcessor
    yield
    if added:
        del GGUF_CONFIG_MAPPING["smollm3"]
        gguf_utils.GGUF_SUPPORTED_ARCHITECTURES.remove("smollm3")
        del gguf_utils.TENSOR_PROCESSORS["smollm3"]


def reference(stem: str) -> Reference:
    name = f"{stem}.gguf"
    config = transformers.AutoConfig.from_pretrained(DATA, gguf_file=name)
    for key, value in FILES[stem][3].items():
        if key in (getattr(config, "rope_parameters", None) or {}):
            config.rope_parameters[key] = value
        else:
            setattr(config, key, value)
    return Reference(DATA, gguf_file=name, config=config)


@params
def test_file_opens(stem: str) -> None:
    path = DATA / f"{stem}.gguf"
    arch, layers, types, _ = FILES[stem]
    assert {t.tensor_type.name for t in GGUFReader(path).tensors} == types
    ckpt = load_gguf(path)
    c = ckpt.config
    assert c["architectures"] == [arch] and c["num_hidden_layers"] == layers
    names = {name for name, _ in ckpt.weights()}
    if arch == "Phi3ForCausalLM":
        assert c["partial_rotary_factor"] == 0.75 and "sliding_window" not in c
        assert "model.layers.0.self_attn.qkv_proj.weight" in names
        assert "model.layers.0.mlp.gate_up_proj.weight" in names
    elif arch == "SmolLM3ForCausalLM":
        assert c["no_rope_layers"] == [1, 1, 1, 0]  # llama.cpp: every fourth layer
    else:
        assert c["sliding_window"] == 16 and c["query_pre_attn_scalar"] == 64
        pattern = 2 if arch == "Gemma2ForCausalLM" else 6
        assert c["layer_types"] == [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(layers)
        ]
        # Gemma 2's converter drops lm_head (tied); Gemma 3's keeps an untied one.
        assert c["tie_word_embeddings"] is (arch == "Gemma2ForCausalLM")
        assert "model.layers.0.pre_feedforward_layernorm.weight" in names
        assert "model.layers.0.post_feedforward_layernorm.weight" in names


@pytest.mark.parametrize("stem", ["gemma2-h256-Q8_0", "gemma3-h64-Q8_0"])
def test_gemma_norms_match_transformers_bit_for_bit(stem: str) -> None:
    """The converter stored 1 + w; we take the 1 off as transformers does, so that the
    model's 1 + (a - 1) equals transformers' in every bit (a alone would not, for
    weights outside [0.5, 2])."""
    import torch

    ref = reference(stem).model.state_dict()
    ours = {n: w for n, w in load_gguf(DATA / f"{stem}.gguf").weights() if "norm" in n}
    assert ours
    for name, w in ours.items():
        assert torch.equal(w, ref[name]), name
    # ... and the weights are wide enough for it to matter: 1 + (a - 1) != a somewhere.
    stored = {t.name: t for t in GGUFReader(DATA / f"{stem}.gguf").tensors}
    a = torch.from_numpy(stored["blk.0.attn_norm.weight"].data.copy())
    assert (a.abs() > 2).any()


@params
def test_tokenizer_matches_transformers(stem: str) -> None:
    ours = load_gguf(DATA / f"{stem}.gguf").tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(DATA, gguf_file=f"{stem}.gguf")
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == text
    if stem.startswith("gemma"):  # SentencePiece with byte fallback: bytes for the emoji
        pieces = ours.encode("👍🏽").tokens
        assert pieces[0] == "<0xF0>" and len(pieces) == 8


@params
def test_greedy_matches_transformers(stem: str) -> None:
    path = DATA / f"{stem}.gguf"
    ref = reference(stem)
    with engine_for(path, quantized_matmul="exact") as engine:
        held = {
            w.type_name for m in engine.runner.model.modules() for _, w in getattr(m, "parts", [])
        }
        assert held == {t.tensor_type.name for t in GGUFReader(path).tensors} - {"F32"}
        prompts = [engine.tokenize(t, add_special_tokens=False) for t in PROMPT_TEXTS]
        assert min(len(p) for p in prompts[:1]) > 16
        check(engine, ref, prompts, engine.generate(prompts, GREEDY))
