"""Attention backends: the torch reference everywhere, C kernels on CPU, triton on CUDA."""

from __future__ import annotations

import torch

from candle_agents.engine.attention.base import AttentionBackend, AttentionMetadata
from candle_agents.engine.attention.cpu import CpuAttentionBackend
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend
from candle_agents.engine.attention.triton_backend import TritonAttentionBackend
from candle_agents.engine.config import ATTENTION_BACKENDS
from candle_agents.engine.platform import triton_available
from candle_agents.errors import ConfigError

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "CpuAttentionBackend",
    "TorchAttentionBackend",
    "TritonAttentionBackend",
    "get_backend",
]


def get_backend(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    kv_dtype: torch.dtype | None = None,
) -> AttentionBackend:
    """The backend called ``name``; "auto" picks the fastest one that runs here.

    ``kv_dtype`` is the KV cache's dtype (the model's ``dtype`` when None)."""
    kv_dtype = kv_dtype or dtype
    if name == "auto":
        if device.type == "cuda" and TritonAttentionBackend.supports(device, dtype, head_dim):
            return TritonAttentionBackend(device)
        if CpuAttentionBackend.supports(device, kv_dtype, head_dim):
            return CpuAttentionBackend()
        return TorchAttentionBackend()
    if name == "torch":
        return TorchAttentionBackend()
    if name == "cpu":
        if not CpuAttentionBackend.supports(device, kv_dtype, head_dim):
            raise ConfigError(
                f"attention_backend='cpu' needs device cpu, a float32, bfloat16 or float16 "
                f"KV cache, head_dim <= 256 and a working C compiler (got {device}, {kv_dtype}, "
                f"head_dim {head_dim}; see the log for the compiler's output)",
                field="attention_backend",
            )
        return CpuAttentionBackend()
    if name == "triton":
        if not TritonAttentionBackend.supports(device, dtype, head_dim):
            raise ConfigError(
                "attention_backend='triton' needs the triton package, device cuda (or cpu "
                "with TRITON_INTERPRET=1, for tests), dtype float16, bfloat16 or float32 and "
                f"head_dim <= 256 (got {device}, {dtype}, head_dim {head_dim}, triton "
                f"{'installed' if triton_available() else 'not installed'})",
                field="attention_backend",
            )
        return TritonAttentionBackend(device)
    raise ConfigError(
        f"attention_backend={name!r} is not supported: use one of {', '.join(ATTENTION_BACKENDS)}",
        field="attention_backend",
    )
