"""Rotary position embeddings: the precomputed cos/sin tables.

The tables are built in float32 exactly as the HF models build theirs per
call (an outer product of positions and inverse frequencies), so results
match bit for bit; ``ops.rotary`` applies them by position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from candle_agents.errors import ModelLoadError


def inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
    trained_positions: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The inverse frequencies and the factor cos/sin are scaled by (YaRN's; 1 otherwise).

    ``trained_positions``: the config's ``max_position_embeddings``, YaRN's default for
    the context it was trained on.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn_frequencies(head_dim, theta, scaling, trained_positions)
    raise ModelLoadError(
        f"rope scaling type {kind!r} is not supported yet "
        "(supported: default, linear, llama3, yarn)"
    )


def _llama3_frequencies(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    # Llama 3.x: long wavelengths are slowed by `factor`, short ones kept, and
    # the band between the two is interpolated smoothly.
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_len = float(s.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_frequencies(
    head_dim: int, theta: float, s: dict[str, Any], trained_positions: int | None
) -> tuple[torch.Tensor, float]:
    # YaRN: frequencies that turn fast enough within the original context keep their
    # value (extrapolation), slow ones are divided by `factor` (interpolation), and a
    # linear ramp over dimensions blends the band between; cos/sin are scaled up a little
    # to keep attention's entropy (the paper's mscale).
    original = s.get("original_max_position_embeddings") or trained_positions
    if original is None:
        raise ModelLoadError("yarn rope scaling needs original_max_position_embeddings")
    factor = s.get("factor")
    factor = float(factor) if factor is not None else float(trained_positions) / original
    scale = s.get("attention_factor")
    if scale is None:
        mscale, all_dim = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and all_dim:
            scale = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, all_dim)
        else:
            scale = _yarn_mscale(factor)
    fast, slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def dim_for(rotations: float) -> float:  # the dimension that turns `rotations` times
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for(fast), dim_for(slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep), 0: interpolate (divide by factor)
    base = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    inv_freq = (1.0 / (factor * base)) * (1 - keep) + (1.0 / base) * keep
    return inv_freq, float(scale)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None = None,
        trained_positions: int | None = None,
    ) -> None:
        super().__init__()
        inv_freq, scale = inverse_frequencies(head_dim, theta, scaling, trained_positions)
        positions = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scale, persistent=False)
        self.register_buffer("sin", emb.sin() * scale, persistent=False)
