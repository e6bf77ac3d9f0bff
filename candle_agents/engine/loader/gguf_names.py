"""What differs between the GGUF architectures the loader reads: HF class names, tensor
names, which tensors llama.cpp's converter changed, and the config keys only some have.

What llama.cpp's converter (convert_hf_to_gguf.py) does per family, and so what the
loader undoes or derives:

- llama, mistral, smollm3 (LlamaModel subclasses): Q and K rows permuted
  (rotate-half -> interleaved pairs); every other family is stored as in HF.
- phi3: Q/K/V kept fused (``attn_qkv``) and gate/up fused in ``ffn_up``, gate first;
  ``rope.dimension_count`` is the rotated width (``partial_rotary_factor``); LongRoPE
  factors are tensors (``rope_factors_long``/``rope_factors_short``);
  ``attention.sliding_window`` 0 means none.
- smollm3: nothing says which layers skip rope; llama.cpp hard-codes every fourth
  (``n_no_rope_layer_step = 4``), transformers' default too.
- gemma2, gemma3: ``1`` added to every ``*norm.weight`` (Gemma's ``x * (1 + w)``);
  attention scale ``1/sqrt(key_length)`` (``hidden/heads`` on the 27B models); local
  layers every layer but each ``pattern``-th (2 on Gemma 2, 6 on Gemma 3, unless
  ``attention.sliding_window_pattern`` says otherwise); Gemma 3's local rope base
  ``rope.freq_base_swa`` (10000 when absent), Gemma 2's the global one.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from gguf.gguf_reader import ReaderTensor

from candle_agents.errors import ModelLoadError

# GGUF architecture -> (HF architecture class, HF model_type).
HF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "smollm3": ("SmolLM3ForCausalLM", "smollm3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
SUPPORTED_ARCHITECTURES = tuple(HF_ARCHITECTURES)

# llama.cpp's converter interleaves the rotary halves of Q and K rows for these.
PERMUTED_QK = {"llama", "mistral", "smollm3"}
# ... and adds 1 to the norm weights of these (their RMSNorm multiplies by 1 + w).
NORM_PLUS_ONE = {"gemma2", "gemma3"}

GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GEMMA_TENSORS = {
    **_LAYER_TENSORS,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
LAYER_TENSORS = {
    "phi3": {**_LAYER_TENSORS, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
    "gemma2": _GEMMA_TENSORS,
    "gemma3": _GEMMA_TENSORS,
}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors llama.cpp writes that HF models compute instead of storing (Phi-3's LongRoPE
# factors become config, read by ``arch_config``).
SKIPPED_TENSOR = re.compile(
    r"rope_freqs\.weight|rope_factors_(long|short)\.weight|blk\.\d+\.attn_rot_embd(\.weight)?"
)


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The HF parameter name of a GGUF tensor; None for tensors HF does not store."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    if SKIPPED_TENSOR.fullmatch(gguf_name):
        return None
    names = LAYER_TENSORS.get(arch, _LAYER_TENSORS)
    match = LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in names:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{names[part]}.{kind}"
    raise ModelLoadError(
        f"GGUF tensor {gguf_name!r} has no counterpart in the supported architectures "
        f"({', '.join(SUPPORTED_ARCHITECTURES)}): is this a fused or MoE variant?"
    )


def arch_config(
    arch: str, meta: Any, config: dict[str, Any], tensors: dict[str, ReaderTensor]
) -> dict[str, Any]:
    """The config keys only ``arch`` has; ``meta(key, default)`` reads ``{arch}.{key}``."""
    layers = config["num_hidden_layers"]
    if arch == "phi3":
        return _phi3_config(meta, config, tensors)
    if arch == "smollm3":
        # llama.cpp: layer i turns rope unless (i + 1) % 4 == 0 (n_no_rope_layer_step).
        return {
            "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(layers)],
            "no_rope_layer_interval": 4,
            "use_sliding_window": False,
        }
    if arch in ("gemma2", "gemma3"):
        return _gemma_config(arch, meta, config)
    return {}


def _phi3_config(meta: Any, config: dict[str, Any], tensors: dict[str, ReaderTensor]):
    out: dict[str, Any] = {}
    rotated = meta("rope.dimension_count")
    if rotated is not None and int(rotated) != config["head_dim"]:
        out["partial_rotary_factor"] = int(rotated) / config["head_dim"]
    original = meta("rope.scaling.original_context_length")
    if original is not None:
        out["original_max_position_embeddings"] = int(original)
    long, short = tensors.get("rope_factors_long.weight"), tensors.get("rope_factors_short.weight")
    if long is not None and short is not None:
        out["rope_scaling"] = {
            "rope_type": "longrope",
            "type": "longrope",
            "long_factor": np.asarray(long.data, dtype=np.float32).reshape(-1).tolist(),
            "short_factor": np.asarray(short.data, dtype=np.float32).reshape(-1).tolist(),
        }
        if original is not None:
            out["rope_scaling"]["original_max_position_embeddings"] = int(original)
    return out


# Layer counts of the models whose attention scale llama.cpp takes from hidden/heads.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _gemma_config(arch: str, meta: Any, config: dict[str, Any]) -> dict[str, Any]:
    layers, head_dim = config["num_hidden_layers"], config["head_dim"]
    scalar = head_dim
    if layers == _GEMMA_27B_LAYERS[arch]:
        scalar = config["hidden_size"] // config["num_attention_heads"]
    window = meta("attention.sliding_window")
    if arch == "gemma2" and not window:
        window = 4096  # llama.cpp's default for Gemma 2
    out: dict[str, Any] = {
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": scalar,
        "final_logit_softcapping": _float_or_none(meta("final_logit_softcapping")),
        "attn_logit_softcapping": _float_or_none(meta("attn_logit_softcapping")),
    }
    if window:
        out["sliding_window"] = int(window)
        types = _local_layers(meta("attention.sliding_window_pattern"), layers, arch)
        out["layer_types"] = ["sliding_attention" if t else "full_attention" for t in types]
    else:  # no window: every layer global
        out["sliding_window"] = None
        out["layer_types"] = ["full_attention"] * layers
    theta = config["rope_theta"]
    local_theta = meta("rope.freq_base_swa")
    if arch == "gemma3":
        out["rope_local_base_freq"] = float(local_theta if local_theta is not None else 10000.0)
    elif local_theta is not None and float(local_theta) != theta:
        raise ModelLoadError(
            "a Gemma 2 GGUF file with its own local rope base (rope.freq_base_swa) is not supported"
        )
    return out


def _local_layers(pattern: Any, layers: int, arch: str) -> list[bool]:
    """Which layers are local: a per-layer list in the file, or every layer but each n-th."""
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise ModelLoadError(
                f"attention.sliding_window_pattern lists {len(pattern)} layers for {layers}"
            )
        return [bool(p) for p in pattern]
    every = int(pattern) if pattern is not None else (2 if arch == "gemma2" else 6)
    return [every == 0 or i % every < every - 1 for i in range(layers)]


def _float_or_none(value: Any) -> float | None:
    return float(value) if value else None
