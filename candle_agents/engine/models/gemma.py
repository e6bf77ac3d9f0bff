"""Gemma 2 and Gemma 3 (text): Llama's fused projections with Gemma's block.

What differs from Llama, and how it maps onto the shared layers:

- local (sliding-window) and global layers interleave (``layer_types``); local
  layers read their window from their own attention metadata and, on Gemma 3,
  their own rope table (``local_rotary``, a different base and no scaling);
- a norm before and after both attention and MLP. The post-norms apply to the
  branch output before the residual add, so each layer returns the normed
  branch and the residual stream, and the next norm adds them (``add_rms_norm``):
  the same float operations as transformers, in the same order;
- RMSNorm multiplies by ``1 + w``: the ``+ 1`` is folded into the weights at
  load (the GGUF loader takes off the one llama.cpp's converter folded in, as
  transformers does), so the shared ``x_normed * w`` ops apply;
- embeddings times sqrt(hidden) (a tensor in the model dtype, as transformers
  rounds it), attention scale ``query_pre_attn_scalar ** -0.5``, GeGLU with
  tanh GELU, per-head QK norm (Gemma 3), score and final-logit soft-capping
  (Gemma 2; Gemma 3 configs may set them too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from candle_agents.engine.layers.decoder import (
    Attention,
    DecoderSpec,
    ForwardContext,
    GatedMLP,
)
from candle_agents.engine.layers.norm import RMSNorm
from candle_agents.engine.layers.ops import TorchOps
from candle_agents.engine.layers.rotary import RotaryEmbedding
from candle_agents.engine.models.llama import LlamaForCausalLM, rope_settings
from candle_agents.errors import ModelLoadError

LOCAL, GLOBAL = "sliding_attention", "full_attention"

# transformers' config defaults: saved configs omit fields equal to them, and the
# text_config of Gemma 3 multimodal checkpoints lists only a few fields.
_COMMON_DEFAULTS: dict[str, Any] = {
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}
GEMMA2_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "vocab_size": 256000,
    "max_position_embeddings": 8192,
    "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0,
}
GEMMA3_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "vocab_size": 262208,
    "max_position_embeddings": 131072,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}
_GEMMA3_THETA = {GLOBAL: 1_000_000.0, LOCAL: 10_000.0}
# tanh-approximated GELU under its transformers names (the python one is not
# bit-identical to torch's, but the same function).
_GELU_TANH = {"gelu_pytorch_tanh", "gelu_python_tanh", "gelu_new", "gelu_fast"}
# Checkpoint name prefixes of Gemma 3 multimodal checkpoints -> ours; and the
# vision parts, which the text model skips.
_TEXT_PREFIXES = {
    "model.language_model.": "model.",
    "language_model.model.": "model.",
    "language_model.": "",
}
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def gemma2_layer_types(num_layers: int) -> list[str]:
    """transformers' default for Gemma 2: alternating, the first layer local."""
    return [LOCAL if (i + 1) % 2 else GLOBAL for i in range(num_layers)]


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> list[str]:
    """transformers' default for Gemma 3: every ``pattern``-th layer global, the rest local."""
    return [LOCAL if (i + 1) % pattern else GLOBAL for i in range(num_layers)]


class GemmaAttention(Attention):
    """Attention with Gemma's scale and soft-cap; local layers use the local rope table."""

    def __init__(self, spec: DecoderSpec, layer_idx: int, local: bool, scale: float, softcap):
        super().__init__(spec, layer_idx)
        self.local = local
        self.scale = scale
        self.softcap = softcap
        self.window = spec.layer_windows[layer_idx] if spec.layer_windows else None

    def rope_table(self, ctx: ForwardContext) -> RotaryEmbedding:
        meta = ctx.meta_for(self.layer_idx)
        rotary = ctx.local_rotary if self.local else ctx.rotary
        # A context built without per-layer metadata or the local table would
        # attend globally or rotate wrongly, silently: fail loudly instead.
        if meta.window != self.window or rotary is None:
            raise RuntimeError(
                f"layer {self.layer_idx} needs window {self.window} and the "
                f"{'local' if self.local else 'global'} rope table; the forward context "
                f"gives window {meta.window} and {'no' if rotary is None else 'a'} table"
            )
        return rotary


class GemmaMLP(GatedMLP):
    """GeGLU: the gate through tanh-approximated GELU, times up."""

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.down_proj(ctx.ops.gelu_tanh_and_mul(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    """norm -> attention -> norm, + residual; norm -> MLP -> norm, + residual."""

    def __init__(self, spec: DecoderSpec, layer_idx: int, local: bool, scale: float, softcap):
        super().__init__()
        size, eps = spec.hidden_size, spec.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps)
        self.self_attn = GemmaAttention(spec, layer_idx, local, scale, softcap)
        self.post_attention_layernorm = RMSNorm(size, eps)
        self.pre_feedforward_layernorm = RMSNorm(size, eps)
        self.mlp = GemmaMLP(spec)
        self.post_feedforward_layernorm = RMSNorm(size, eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(previous block's normed output, residual) -> (this block's, residual).

        transformers adds each post-normed branch to the stream before the next
        norm; deferring that add into ``add_rms_norm`` computes the same sum
        (float addition commutes) and lets the pair be one fused op.
        """
        ops = ctx.ops
        norm = self.input_layernorm
        if residual is None:
            residual, h = x, ops.rms_norm(x, norm.weight, norm.eps)
        else:
            h, residual = ops.add_rms_norm(x, residual, norm.weight, norm.eps)
        h = self.self_attn(h, ctx)
        norm = self.post_attention_layernorm
        h = ops.rms_norm(h, norm.weight, norm.eps)
        norm = self.pre_feedforward_layernorm
        h, residual = ops.add_rms_norm(h, residual, norm.weight, norm.eps)
        h = self.mlp(h, ctx)
        norm = self.post_feedforward_layernorm
        return ops.rms_norm(h, norm.weight, norm.eps), residual


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Gemma 2: alternating local/global layers, soft-capped scores and logits."""

    defaults = GEMMA2_DEFAULTS
    qk_norm = False

    def __init__(self, config: dict[str, Any]) -> None:
        config = self.text_config(config)
        nn.Module.__init__(self)
        self.config = config
        self.layer_types = self.resolve_layer_types(config)
        self.spec = self.spec_from_config(config)
        self.num_layers = int(config["num_hidden_layers"])
        self.vocab_size = int(config["vocab_size"])
        self.tie_word_embeddings = bool(config["tie_word_embeddings"])
        cap = config.get("final_logit_softcapping")
        self.final_softcap = float(cap) if cap else None
        act = config.get("hidden_activation") or config.get("hidden_act")
        if act not in _GELU_TANH:
            raise ModelLoadError(
                f"{type(self).__name__}: hidden_activation {act!r} is not supported "
                f"(supported: {', '.join(sorted(_GELU_TANH))})"
            )
        if config.get("use_bidirectional_attention"):
            raise ModelLoadError(
                f"{type(self).__name__}: use_bidirectional_attention (an embedding model) "
                "is not supported; this engine generates causally"
            )
        shape = (self.vocab_size, self.spec.hidden_size)
        # An explicit weight skips nn.Embedding's random init (see LlamaForCausalLM).
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape))
        scale = float(config["query_pre_attn_scalar"]) ** -0.5
        softcap = config.get("attn_logit_softcapping")
        softcap = float(softcap) if softcap else None
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(self.spec, i, t == LOCAL, scale, softcap)
            for i, t in enumerate(self.layer_types)
        )
        self.norm = RMSNorm(self.spec.hidden_size, self.spec.rms_norm_eps)
        self.lm_head = nn.Linear(self.spec.hidden_size, self.vocab_size, bias=False)
        self.tie_weights()
        self.rotary: RotaryEmbedding | None = None
        self.local_rotary: RotaryEmbedding | None = None
        self.embed_scale: torch.Tensor | None = None

    # -- config -------------------------------------------------------------------

    @classmethod
    def text_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The config with transformers' defaults filled in where a field is absent."""
        return {**cls.defaults, **config}

    @classmethod
    def resolve_layer_types(cls, c: dict[str, Any]) -> list[str]:
        layers = int(c["num_hidden_layers"])
        types = c.get("layer_types") or cls.default_layer_types(c)
        if len(types) != layers or set(types) - {LOCAL, GLOBAL}:
            raise ModelLoadError(
                f"layer_types must name {layers} layers, each {LOCAL!r} or {GLOBAL!r}; "
                f"got {types!r}"
            )
        return list(types)

    @classmethod
    def default_layer_types(cls, c: dict[str, Any]) -> list[str]:
        return gemma2_layer_types(int(c["num_hidden_layers"]))

    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        c = cls.text_config(c)
        spec = super().spec_from_config({**c, "layer_types": cls.resolve_layer_types(c)})
        spec.qk_norm = cls.qk_norm
        return spec

    def rope_parameters(self) -> dict[str, tuple[float, dict[str, Any] | None]]:
        """(theta, scaling) of the global and the local layers' rope tables."""
        settings = rope_settings(self.config)
        return {GLOBAL: settings, LOCAL: settings}

    def init_rotary(self, max_positions: int, device: torch.device) -> None:
        """Build the global and local cos/sin tables and the embedding scale (not on meta)."""
        trained = self.config.get("max_position_embeddings")
        trained = int(trained) if trained else None
        tables: dict[tuple, RotaryEmbedding] = {}
        for kind, (theta, scaling) in self.rope_parameters().items():
            if scaling and (scaling.get("rope_type") or scaling.get("type")) == "default":
                scaling = None
            key = (theta, repr(sorted((scaling or {}).items())))
            if key not in tables:  # Gemma 2's layers share one table
                tables[key] = RotaryEmbedding(
                    self.spec.head_dim, max_positions, theta, scaling, trained
                ).to(device)
            setattr(self, "rotary" if kind == GLOBAL else "local_rotary", tables[key])
        # float32, cast to the activations' dtype at use, as transformers rounds it.
        self.embed_scale = torch.tensor(self.spec.hidden_size**0.5, device=device)

    # -- forward ------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        return x * self.embed_scale.to(x.dtype)

    def logits(
        self, x: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor, ops: TorchOps
    ) -> torch.Tensor:
        logits = super().logits(x, residual, rows, ops)
        if self.final_softcap is not None:
            cap = self.final_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- weights ------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors: text-model names, ``1 + w`` norms."""
        super().load_weights(self._gemma_weights(weights))

    def _gemma_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if name.startswith(_VISION_PREFIXES):
                continue
            for prefix, ours in _TEXT_PREFIXES.items():
                if name.startswith(prefix):
                    name = ours + name[len(prefix) :]
                    break
            if name.endswith("norm.weight"):
                # transformers computes (1 + w) in float32: the same sum, once.
                tensor = 1.0 + tensor.float()
            yield name, tensor


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3 text: 5 local layers to 1 global, QK norm, a local rope base.

    Also loads the text part of ``Gemma3ForConditionalGeneration`` checkpoints
    (``text_config``; vision tensors are skipped).
    """

    defaults = GEMMA3_DEFAULTS
    qk_norm = True

    @classmethod
    def text_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        if "text_config" in config:  # a multimodal checkpoint: its language model
            text = dict(config["text_config"] or {})
            if "tie_word_embeddings" in config and "tie_word_embeddings" not in text:
                text["tie_word_embeddings"] = config["tie_word_embeddings"]
            config = text
        return super().text_config(config)

    @classmethod
    def default_layer_types(cls, c: dict[str, Any]) -> list[str]:
        return gemma3_layer_types(
            int(c["num_hidden_layers"]), int(c.get("sliding_window_pattern") or 6)
        )

    def rope_parameters(self) -> dict[str, tuple[float, dict[str, Any] | None]]:
        """Nested ``rope_parameters`` (transformers 5) or the older flat keys.

        Scaling (``rope_scaling``, e.g. linear x8 on 4B and up) is the global
        layers'; local layers turn at ``rope_local_base_freq``, unscaled.
        """
        c = self.config
        params = c.get("rope_parameters") or {}
        if GLOBAL in params or LOCAL in params:
            out = {}
            for kind in (GLOBAL, LOCAL):
                p = dict(params.get(kind) or {})
                theta = float(p.get("rope_theta") or _GEMMA3_THETA[kind])
                out[kind] = (theta, p if p.get("rope_type", p.get("type")) else None)
            return out
        theta, scaling = rope_settings(c, _GEMMA3_THETA[GLOBAL])
        local = float(c.get("rope_local_base_freq") or _GEMMA3_THETA[LOCAL])
        return {GLOBAL: (theta, scaling), LOCAL: (local, None)}
