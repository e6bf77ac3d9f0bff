"""Attention backends: the torch reference everywhere, triton kernels on CUDA (later)."""

from candle_agents.engine.attention.base import AttentionBackend, AttentionMetadata
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend

__all__ = ["AttentionBackend", "AttentionMetadata", "TorchAttentionBackend", "get_backend"]


def get_backend(name: str = "torch") -> AttentionBackend:
    if name == "torch":
        return TorchAttentionBackend()
    from candle_agents.errors import ConfigError

    raise ConfigError(f"unknown attention backend {name!r}; available: torch", field="attention")
