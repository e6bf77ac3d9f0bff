"""CPU decode steps in one C call (``cpu_kernels/decode_stack.c``).

A decode step of a small model is mostly overhead when each layer's dozen
kernels are called from Python: on SmolLM2-135M (30 layers, 2 vCPUs) 9 of a
step's 21 ms went between the kernels. ``DecodeStack`` describes the model to
C once (weights, norms, caches), and each decode-only step then runs every
layer in one call, on the same kernels in the same order as the per-layer
path: the logits are bit for bit the same.

It applies to the Llama family (Llama, Mistral with or without its sliding
window, Qwen2, Qwen3, SmolLM3, Phi-3; not Gemma, whose local and global layers
read different block pools and whose blocks differ) on the CPU attention
backend with float32 activations, when every projection is either quantized
(``QuantLinear``) or float32 packed into panels (``PackedLinear``);
anything else keeps the per-layer path, as do steps with prefill tokens.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import nn

from candle_agents.engine import cpu_kernels
from candle_agents.engine.layers.decoder import DecoderLayer
from candle_agents.engine.layers.linear import PANEL_MAX_ROWS, PackedLinear
from candle_agents.engine.quant.layers import PREFILL_MIN_ROWS, QuantLinear

logger = logging.getLogger(__name__)

_MAX_PARTS = 4  # decode_stack.c: STACK_MAX_PARTS
_QUANT, _PANELS = 0, 1
_i32, _i64, _ptr, _f32 = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


class _Part(ctypes.Structure):
    _fields_ = [
        ("qtype", _i32),
        ("_pad", _i32),
        ("w", _ptr),
        ("rows", _i64),
        ("col", _i64),
        ("bias", _ptr),
    ]


class _Linear(ctypes.Structure):
    _fields_ = [
        ("kind", _i32),
        ("nparts", _i32),
        ("fast", _i32),
        ("_pad", _i32),
        ("in_", _i64),
        ("out", _i64),
        ("panels", _ptr),
        ("bias", _ptr),
        ("parts", _Part * _MAX_PARTS),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("norm1", _ptr),
        ("norm2", _ptr),
        ("q_norm", _ptr),
        ("k_norm", _ptr),
        ("k_cache", _ptr),
        ("v_cache", _ptr),
        ("qkv", _Linear),
        ("o", _Linear),
        ("gate_up", _Linear),
        ("down", _Linear),
        ("rope", _i32),
        ("_pad", _i32),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", _i32),
        ("hidden", _i32),
        ("inter", _i32),
        ("heads", _i32),
        ("kv_heads", _i32),
        ("head_dim", _i32),
        ("block_size", _i32),
        ("ctype", _i32),
        ("eps", _f32),
        ("scale", _f32),
        ("rot_dim", _i32),
        ("window", _i32),
        ("cos", _ptr),
        ("sin", _ptr),
        ("layer", ctypes.POINTER(_Layer)),
    ]


class Unsupported(ValueError):
    """The model (or its placement) has something the C step does not run."""


def _f32_ptr(t: torch.Tensor | None, what: str) -> int | None:
    if t is None:
        return None
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise Unsupported(f"{what} is not a contiguous float32 CPU tensor")
    return t.data_ptr()


def _linear(module: nn.Module, what: str) -> tuple[_Linear, int]:
    """The C description of one projection, and the most rows its decode path takes."""
    d = _Linear(in_=module.in_features, out=module.out_features)
    if isinstance(module, QuantLinear):
        if not module._calls or len(module._calls) > _MAX_PARTS:
            raise Unsupported(f"{what} has {len(module._calls)} weight parts")
        d.kind, d.nparts, d.fast = _QUANT, len(module._calls), module.fast
        for i, (qtype, w_ptr, rows, offset, bias_ptr) in enumerate(module._calls):
            d.parts[i] = _Part(qtype=qtype, w=w_ptr, rows=rows, col=offset // 4, bias=bias_ptr)
        return d, PREFILL_MIN_ROWS - 1
    if isinstance(module, PackedLinear) and module.panels is not None:
        d.kind = _PANELS
        d.panels = module.panels.data_ptr()
        d.bias = _f32_ptr(module.linear.bias, f"{what}.bias")
        return d, PANEL_MAX_ROWS
    raise Unsupported(f"{what} is a {type(module).__name__}")


class DecodeStack:
    """A model's decode steps as one C call each; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
    ) -> None:
        spec = model.spec
        layers = list(model.layers)
        if not layers or not all(type(layer) is DecoderLayer for layer in layers):
            raise Unsupported("the model is not made of DecoderLayers")
        windows = set(spec.layer_windows or (None,))
        if len(windows) > 1:
            # Local and global layers read different block pools (kv_cache.py).
            raise Unsupported("layers with different sliding windows")
        (window,) = windows
        k0 = kv_caches[0][0]
        if k0.dtype not in cpu_kernels.CACHE_TYPES:
            raise Unsupported(f"KV cache dtype {k0.dtype}")
        if spec.head_dim > cpu_kernels.MAX_HEAD_DIM:
            raise Unsupported(f"head_dim {spec.head_dim}")
        rotary = model.rotary
        self.model = model
        self.max_rows = PREFILL_MIN_ROWS - 1
        structs = (_Layer * len(layers))()
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(layers, kv_caches)):
            attn, mlp = layer.self_attn, layer.mlp
            if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
                raise Unsupported("the KV cache is not contiguous")
            s = structs[i]
            s.norm1 = _f32_ptr(layer.input_layernorm.weight, "input_layernorm")
            s.norm2 = _f32_ptr(layer.post_attention_layernorm.weight, "post_attention_layernorm")
            s.q_norm = _f32_ptr(attn.q_norm.weight if attn.q_norm else None, "q_norm")
            s.k_norm = _f32_ptr(attn.k_norm.weight if attn.k_norm else None, "k_norm")
            s.k_cache, s.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
            s.rope = int(attn.use_rope)
            for name, module in (
                ("qkv", attn.qkv_proj),
                ("o", attn.o_proj),
                ("gate_up", mlp.gate_up_proj),
                ("down", mlp.down_proj),
            ):
                desc, rows = _linear(module, f"layers.{i}.{name}")
                setattr(s, name, desc)
                self.max_rows = min(self.max_rows, rows)
        self._layers = structs  # the C struct points into it
        self._model = _Model(
            layers=len(layers),
            hidden=spec.hidden_size,
            inter=spec.intermediate_size,
            heads=spec.num_heads,
            kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            block_size=block_size,
            ctype=cpu_kernels.CACHE_TYPES[k0.dtype],
            eps=spec.rms_norm_eps,
            scale=layers[0].self_attn.scale,
            rot_dim=rotary.cos.shape[-1],
            window=window or 0,
            cos=_f32_ptr(rotary.cos, "rotary cos"),
            sin=_f32_ptr(rotary.sin, "rotary sin"),
            layer=structs,
        )
        self._ref = ctypes.byref(self._model)
        # Sized once for the most rows a step takes (pages are touched on use).
        self._scratch = torch.empty(cpu_kernels.decode_stack_scratch(self._ref, self.max_rows) // 4)

    @classmethod
    def build(cls, model, kv_caches, block_size: int) -> DecodeStack | None:
        """The stack for ``model``, or None (logged) where some part is not supported."""
        if not cpu_kernels.available():
            return None
        try:
            return cls(model, kv_caches, block_size)
        except (Unsupported, AttributeError) as exc:
            logger.info("decode steps run layer by layer: %s", exc)
            return None

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode token per sequence (at most ``max_rows``): (last layer's output,
        residual stream). Index tensors are int64 and contiguous, as the model runner
        builds them.
        """
        x = self.model.embed_tokens(input_ids).float().contiguous()
        residual = torch.empty_like(x)
        rc = cpu_kernels.decode_stack(
            self._ref,
            input_ids.shape[0],
            x.data_ptr(),
            residual.data_ptr(),
            self._scratch.data_ptr(),
            positions.data_ptr(),
            slots.data_ptr(),
            block_tables.data_ptr(),
            block_tables.shape[1],
            seq_lens.data_ptr(),
            cpu_kernels.num_threads(),
        )
        if rc != 0:
            raise MemoryError("decode_stack: out of memory for attention scores")
        return x, residual
