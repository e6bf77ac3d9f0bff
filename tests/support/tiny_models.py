"""Tiny random-weight models of each supported architecture, saved as HF folders."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Paged attention stores keys and values in fixed-size blocks.",
    "def add(a, b):\n    return a + b\n",
    "Continuous batching lets requests join and leave at every step.",
    "你好，世界。🙂 Emoji and CJK text must survive byte-level tokenization.",
    "1234567890 numbers, punctuation!? and    spaces.",
]

ARCHS = {
    "llama": ("LlamaConfig", {}),
    # a sliding window on every layer, far shorter than the test prompts
    "mistral": ("MistralConfig", {"sliding_window": 12}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
    # Q/K/V and gate/up fused in the checkpoint; rotary over 3/4 of each head (Phi-4-mini);
    # no sliding window (it would cap the context)
    "phi3": ("Phi3Config", {"sliding_window": None, "partial_rotary_factor": 0.75}),
    # the second layer without rotary embedding
    "smollm3": ("SmolLM3Config", {"no_rope_layers": [1, 0]}),
    # Local layers with a 12-token window (prompts run to 100 tokens), a global one;
    # local rope base != global, linear scaling on the global layer only; QK norm;
    # query_pre_attn_scalar != head_dim; tied embeddings as the real models have.
    "gemma3": (
        "Gemma3TextConfig",
        {
            "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "sliding_window": 12,
            "head_dim": 32,
            "query_pre_attn_scalar": 24,
            "rope_theta": 50000.0,
            "rope_local_base_freq": 500.0,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0},
            "tie_word_embeddings": True,
        },
    ),
    # Alternating local/global layers, window 12, scores and logits soft-capped low
    # enough to bite on random weights.
    "gemma2": (
        "Gemma2Config",
        {
            "num_hidden_layers": 3,
            "sliding_window": 12,
            "head_dim": 32,
            "query_pre_attn_scalar": 40,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
            "tie_word_embeddings": True,
        },
    ),
}
# Architectures whose norms multiply by (1 + w) with w initialised to 0: their norm
# weights are randomised, so that a missing or doubled + 1 cannot hide behind w = 0.
RANDOM_NORMS = {"gemma2", "gemma3"}


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build_tiny_model(
    arch: str, root: Path, seed: int = 0, name: str | None = None, **overrides
) -> Path:
    """Save a random model of ``arch`` with a trained BPE tokenizer to ``root / (name or arch)``.

    By default 2 layers, hidden 64; ``overrides`` replace or add config fields (for
    example ``hidden_size=256, intermediate_size=512`` for K-quant-sized rows).
    """
    import json

    import transformers

    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    cls_name, extra = ARCHS[arch]
    fields = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(extra)
    fields.update(overrides)
    config = getattr(transformers, cls_name)(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Wide weights make logits far apart, so greedy choices are not near-ties
        # that float rounding could flip.
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.25)
        if arch in RANDOM_NORMS:
            for param_name, p in model.named_parameters():
                if param_name.endswith("norm.weight"):
                    p.uniform_(-0.5, 0.5)
    path = root / (name or arch)
    model.save_pretrained(path, safe_serialization=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "bos_token": None, "add_bos_token": False})
    )
    return path
