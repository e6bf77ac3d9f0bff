"""Llama-family causal LM (SmolLM, TinyLlama, Llama 2/3); the base of the other families."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from candle_agents.engine.layers.decoder import DecoderLayer, DecoderSpec, ForwardContext
from candle_agents.engine.layers.norm import RMSNorm
from candle_agents.engine.layers.ops import TorchOps
from candle_agents.engine.layers.rotary import RotaryEmbedding
from candle_agents.errors import ModelLoadError

# HF checkpoint name suffix -> (our fused parameter, which slice of it)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


def layer_windows(c: dict[str, Any]) -> tuple[int | None, ...] | None:
    """Each layer's sliding window from an HF config (None: no layer has one).

    ``layer_types`` names the local layers where the config has it; otherwise
    a ``sliding_window`` applies to every layer (from ``max_window_layers`` on,
    for Qwen2) unless ``use_sliding_window`` turns it off (Qwen2's and
    SmolLM3's configs carry one that is off).
    """
    window = c.get("sliding_window")
    if not window or not c.get("use_sliding_window", True):
        return None
    layers = int(c["num_hidden_layers"])
    types = c.get("layer_types")
    if types:
        windows = tuple(int(window) if t == "sliding_attention" else None for t in types)
    else:
        # Qwen2: layers from max_window_layers on are local (transformers' default).
        first = int(c.get("max_window_layers") or 0)
        windows = tuple(int(window) if i >= first else None for i in range(layers))
    return windows if any(w is not None for w in windows) else None


def rope_settings(
    c: dict[str, Any], default_theta: float = 10000.0
) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from a config's flat rope keys or ``rope_parameters``.

    Scaling is None where there is none or its type is "default".
    """
    params = c.get("rope_parameters") or {}
    theta = float(c.get("rope_theta") or params.get("rope_theta") or default_theta)
    scaling = c.get("rope_scaling") or (params if params.get("rope_type") else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return theta, scaling


class LlamaForCausalLM(nn.Module):
    """A decoder-only transformer over a flattened batch of tokens.

    Subclasses only change ``spec_from_config`` (biases, QK-norm, head_dim).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.spec = self.spec_from_config(config)
        self.num_layers = int(config["num_hidden_layers"])
        self.vocab_size = int(config["vocab_size"])
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        # An explicit weight skips nn.Embedding's random init: on the meta device
        # that init goes through torch._refs, which imports torch._dynamo, triton
        # and sympy (85 MiB of resident memory, for nothing).
        shape = (self.vocab_size, self.spec.hidden_size)
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape))
        self.layers = nn.ModuleList(DecoderLayer(self.spec, i) for i in range(self.num_layers))
        self.norm = RMSNorm(self.spec.hidden_size, self.spec.rms_norm_eps)
        self.lm_head = nn.Linear(self.spec.hidden_size, self.vocab_size, bias=False)
        self.tie_weights()
        self.rotary: RotaryEmbedding | None = None

    def tie_weights(self) -> None:
        """Share the embedding with the output head (again after device moves untie it).

        Float layers share a parameter; quantized ones share blocks, tied at load
        (``quant.apply.finish_quantized``)."""
        if self.tie_word_embeddings and isinstance(self.embed_tokens, nn.Embedding):
            self.lm_head.weight = self.embed_tokens.weight

    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        heads = int(c["num_attention_heads"])
        return DecoderSpec(
            hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(c.get("attention_bias", False)),
            layer_windows=layer_windows(c),
        )

    def init_rotary(self, max_positions: int, device: torch.device) -> None:
        """Build the cos/sin table (outside any meta-device context)."""
        c = self.config
        params = c.get("rope_parameters") or {}
        theta, scaling = rope_settings(c)
        if scaling and c.get("original_max_position_embeddings"):
            # Phi-3/4 keep it at the top level; it wins there, as in transformers.
            scaling = {
                **scaling,
                "original_max_position_embeddings": c["original_max_position_embeddings"],
            }
        trained = c.get("max_position_embeddings")
        # Partial rotary (Phi-4-mini): only the first part of each head turns.
        partial = float(c.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)))
        width = int(self.spec.head_dim * partial)
        self.rotary = RotaryEmbedding(
            width, max_positions, theta, scaling, int(trained) if trained else None
        ).to(device)

    def forward(
        self,
        input_ids: torch.Tensor,
        ctx: ForwardContext,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Run the flattened batch; return float32 logits for ``logits_indices`` rows only."""
        x, residual = self.hidden_states(input_ids, ctx)
        return self.logits(x, residual, logits_indices, ctx.ops)

    def hidden_states(
        self, input_ids: torch.Tensor, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's output and the residual stream, for every token."""
        x, residual = self.embed(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, ctx)
        return x, residual

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def logits(
        self, x: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor, ops: TorchOps
    ) -> torch.Tensor:
        """float32 logits of ``rows`` (kept apart so a CUDA graph can stop before them)."""
        # The last residual add and the final norm, fused like the layers' pairs.
        h, _ = ops.add_rms_norm(x[rows], residual[rows], self.norm.weight, self.norm.eps)
        return self.lm_head(h).float()

    # -- weights ------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (partly fused) parameters; check none is missing."""
        params = dict(self.named_parameters())
        # Quantized layers (engine.quant) take their weight rows as blocks.
        blocks = {
            f"{path}.weight": m for path, m in self.named_modules() if hasattr(m, "load_rows")
        }
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if name.startswith("rotary_emb") or name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            target, part = self._map_name(name)
            if target in blocks:
                start = 0 if part is None else self._bounds(target, part)[0]
                try:
                    blocks[target].load_rows(start, tensor)
                except ValueError as exc:
                    raise ModelLoadError(f"checkpoint tensor {hf_name!r}: {exc}") from exc
                loaded.add(target if part is None else f"{target}#{part}")
                continue
            if target not in params:
                raise ModelLoadError(f"checkpoint tensor {hf_name!r} has no place in the model")
            param = params[target]
            dest = param.data if part is None else self._slice(target, param.data, part)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(target if part is None else f"{target}#{part}")
        expected = set()
        tied_head = {"lm_head.weight"} if self.tie_word_embeddings else set()
        for name in [*params, *(set(blocks) - tied_head)]:
            parts = self._num_parts(name)
            expected.update([name] if parts == 0 else (f"{name}#{i}" for i in range(parts)))
        missing = sorted(expected - loaded)
        if missing:
            raise ModelLoadError(
                f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}: "
                "is it complete and of the right architecture?"
            )

    @staticmethod
    def _map_name(name: str) -> tuple[str, int | None]:
        for hf, (ours, part) in _FUSED.items():
            if f".{hf}." in f".{name}":
                return name.replace(hf, ours), part
        return name, None

    def _num_parts(self, name: str) -> int:
        if "qkv_proj" in name:
            return 3
        if "gate_up_proj" in name:
            return 2
        return 0

    def _bounds(self, target: str, part: int) -> tuple[int, int]:
        """The rows of fused parameter ``target`` that checkpoint part ``part`` fills."""
        s = self.spec
        if "qkv_proj" in target:
            q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
            return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][part]
        i = s.intermediate_size
        return [(0, i), (i, 2 * i)][part]

    def _slice(self, target: str, data: torch.Tensor, part: int) -> torch.Tensor:
        lo, hi = self._bounds(target, part)
        return data[lo:hi]
