"""Real-format quantized GGUF files (written by llama.cpp's own tools, tests/data/gguf/):
our loader, tokenizer and greedy output against transformers loading the same file.

The engine runs the files' blocks on its exact kernels (float32 sums), which agree with
transformers' dequantized float32 weights to rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from gguf import GGUFReader

from candle_agents.engine.loader.gguf import load_gguf
from tests.support.exactness import GREEDY, Reference, check, engine_for
from tests.support.tiny_models import CORPUS, build_tokenizer

DATA = Path(__file__).parents[1] / "data" / "gguf"

# file stem -> (HF architecture, layers, GGML tensor types it holds), as
# tests/data/make_gguf_files.py wrote them (see tests/data/gguf/README.md).
FILES = {
    "llama-h256-Q4_0": ("LlamaForCausalLM", 1, {"F32", "Q4_0", "Q6_K"}),
    "llama-h256-Q4_1": ("LlamaForCausalLM", 1, {"F32", "Q4_1", "Q6_K"}),
    "llama-h256-Q5_0": ("LlamaForCausalLM", 1, {"F32", "Q5_0", "Q6_K"}),
    "llama-h256-Q5_1": ("LlamaForCausalLM", 1, {"F32", "Q5_1", "Q6_K"}),
    "llama-h256-Q8_0": ("LlamaForCausalLM", 1, {"F32", "Q8_0"}),
    "llama-h256-Q2_K": ("LlamaForCausalLM", 1, {"F32", "Q2_K", "Q3_K", "Q6_K"}),
    "llama-h256-Q3_K_M": ("LlamaForCausalLM", 1, {"F32", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}),
    "llama-h256-Q4_K_M": ("LlamaForCausalLM", 2, {"F32", "Q4_K", "Q6_K"}),
    "llama-h256-Q5_K_M": ("LlamaForCausalLM", 2, {"F32", "Q5_K", "Q6_K"}),
    "llama-h256-Q6_K": ("LlamaForCausalLM", 1, {"F32", "Q6_K"}),
    "mistral-h256-Q4_K_M": ("MistralForCausalLM", 1, {"F32", "Q4_K", "Q6_K"}),
    "mistral-h256-Q8_0": ("MistralForCausalLM", 1, {"F32", "Q8_0"}),
    "qwen2-h256-Q4_K_M": ("Qwen2ForCausalLM", 1, {"F32", "Q4_K", "Q6_K"}),
    "qwen2-h256-Q8_0": ("Qwen2ForCausalLM", 1, {"F32", "Q8_0"}),
    "qwen3-h256-Q4_K_M": ("Qwen3ForCausalLM", 1, {"F32", "Q4_K", "Q6_K"}),
    "qwen3-h256-Q8_0": ("Qwen3ForCausalLM", 1, {"F32", "Q8_0"}),
    # Rows of 64 and 128 values fit no 256-value K-quant block: Q4_K_M falls back.
    "llama-h64-Q4_K_M": ("LlamaForCausalLM", 2, {"F32", "Q5_0", "Q8_0"}),
}
# Prompts of 31, 18 and 36 tokens in this vocabulary (repeats, code, CJK and emoji).
PROMPT_TEXTS = [CORPUS[0], CORPUS[2], CORPUS[4]]

params = pytest.mark.parametrize("stem", sorted(FILES))


def test_every_file_is_listed() -> None:
    from tests.engine.test_gguf_families import FILES as FAMILY_FILES  # the other families

    assert {p.stem for p in DATA.glob("*.gguf")} == set(FILES) | set(FAMILY_FILES)


@params
def test_file_opens(stem: str) -> None:
    path = DATA / f"{stem}.gguf"
    arch, layers, types = FILES[stem]
    assert {t.tensor_type.name for t in GGUFReader(path).tensors} == types
    ckpt = load_gguf(path)
    c = ckpt.config
    hidden, ffn = (64, 128) if "-h64-" in stem else (256, 512)
    heads, kv_heads, head_dim = (2, 1, 128) if arch == "Qwen3ForCausalLM" else (4, 2, hidden // 4)
    assert c["architectures"] == [arch]
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (
        hidden,
        ffn,
        layers,
    )
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (
        heads,
        kv_heads,
        head_dim,
    )
    assert c["vocab_size"] == 384 and c["tie_word_embeddings"] is False
    assert c["attention_bias"] is (arch == "Qwen2ForCausalLM")
    assert ckpt.eos_token_ids[0] == 2
    assert ckpt.tokenizer.get_vocab_size() == 384
    per_layer = 9 + (3 if arch == "Qwen2ForCausalLM" else 2 if arch == "Qwen3ForCausalLM" else 0)
    assert ckpt.num_weights == 3 + layers * per_layer  # embeddings, final norm, lm_head
    for name, tensor in ckpt.weights():
        assert tensor.isfinite().all(), name


@params
def test_tokenizer_matches_transformers(stem: str) -> None:
    ours = load_gguf(DATA / f"{stem}.gguf").tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(DATA, gguf_file=f"{stem}.gguf")
    trained = build_tokenizer()  # the tokenizer the file was made from (deterministic)
    for text in CORPUS:
        ids = ours.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ids == trained.encode(text).ids, text
        assert ours.decode(ids, skip_special_tokens=False) == text


@params
def test_greedy_matches_transformers(stem: str) -> None:
    path = DATA / f"{stem}.gguf"
    ref = Reference(DATA, gguf_file=path.name)
    with engine_for(path, quantized_matmul="exact") as engine:
        # The engine runs the file's own block types (exact kernels), holding no
        # more than the file's tensor bytes.
        held = {
            w.type_name for m in engine.runner.model.modules() for _, w in getattr(m, "parts", [])
        }
        assert held == {t.tensor_type.name for t in GGUFReader(path).tensors} - {"F32"}
        assert engine.runner.weight_bytes <= 1.05 * sum(t.n_bytes for t in GGUFReader(path).tensors)
        prompts = [engine.tokenize(t, add_special_tokens=False) for t in PROMPT_TEXTS]
        assert [len(p) for p in prompts] == [31, 18, 36]
        check(engine, ref, prompts, engine.generate(prompts, GREEDY))
