"""Rotary position embeddings: the precomputed cos/sin tables.

The tables are built in float32 exactly as the HF models build theirs per
call (an outer product of positions and inverse frequencies), so results
match bit for bit; ``ops.rotary`` applies them by position.

LongRoPE (Phi-3 128k, Phi-4-mini) has two sets of frequencies, and the table
holds the short set for positions below ``original_max_position_embeddings``
and the long set from there on (see ``RotaryEmbedding``).
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
    kind = scaling_kind(scaling)
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn_frequencies(head_dim, theta, scaling, trained_positions)
    if kind == "longrope":
        raise ModelLoadError(
            "longrope has one set of frequencies per position range: "
            "use longrope_frequencies (or RotaryEmbedding)"
        )
    raise ModelLoadError(
        f"rope scaling type {kind!r} is not supported yet "
        "(supported: default, linear, llama3, yarn, longrope)"
    )


def scaling_kind(scaling: dict[str, Any] | None) -> str:
    """The scaling's type (``rope_type``, or the older ``type``); "su" is LongRoPE's old name."""
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    return "longrope" if kind == "su" else kind


def longrope_frequencies(
    head_dim: int,
    theta: float,
    s: dict[str, Any],
    trained_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """LongRoPE: short and long inverse frequencies, the original length, the cos/sin factor.

    Each set is ``1 / (factor_i * theta ** (2i / head_dim))`` with the config's
    ``short_factor`` or ``long_factor`` (``head_dim / 2`` entries each, ``head_dim`` being
    the rotated width under a partial rotary factor). The cos/sin factor is the config's
    ``attention_factor`` if given, else ``sqrt(1 + ln(f) / ln(original))`` with ``f`` the
    scaling's ``factor`` or ``trained_positions / original`` (1 when ``f <= 1``).
    ``original``: ``original_max_position_embeddings`` (the caller puts a top-level
    config value into ``s``), else ``trained_positions``.
    """
    original = s.get("original_max_position_embeddings") or trained_positions
    if original is None:
        raise ModelLoadError("longrope rope scaling needs original_max_position_embeddings")
    original = int(original)
    sets = []
    for name in ("short_factor", "long_factor"):
        factors = s.get(name)
        if not isinstance(factors, (list, tuple)) or len(factors) != head_dim // 2:
            raise ModelLoadError(
                f"longrope rope scaling needs {name} as a list of {head_dim // 2} numbers "
                f"(half the rotated width {head_dim}), got {factors!r}"
            )
        sets.append(torch.tensor([float(f) for f in factors], dtype=torch.float32))
    shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    short, long = (1.0 / (factors * theta**shape) for factors in sets)
    scale = s.get("attention_factor")
    if scale is None:
        factor = s.get("factor")
        if factor is None:
            factor = float(trained_positions) / original if trained_positions else 1.0
        factor = float(factor)
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return short, long, original, float(scale)


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
    """cos/sin of every position below ``max_positions``, ``head_dim`` wide, scaled as configured.

    LongRoPE picks its frequencies by POSITION: rows below ``original_max_position_embeddings``
    use the short factors, rows at and after it the long ones (both times the same cos/sin
    factor). transformers instead picks one set per forward pass, long when that pass's
    largest position + 1 exceeds the original length. An engine that batches, chunks and
    caches prefixes cannot follow a per-pass rule; per position, a token's rotation depends
    only on where it sits, so prefix caching, chunked prefill and batching cannot change it.
    This agrees with transformers' rotary run one forward per token over a kept cache
    whenever the prompt fits the original length: the prefill and the steps up to the
    original length use the short set, each step past it the long set, as our rows do.
    Two cases differ. A prompt longer than the original length: transformers rotates all of
    it (and every later token) with the long set, our rows below it stay short. And Phi-3's
    ``generate`` in transformers drops its KV cache when the sequence first grows past the
    original length and re-encodes everything with the long set, so its tokens from there on
    differ too (a cache reset no paged engine does; vLLM instead uses the long set for every
    position whenever its max_model_len exceeds the original length).
    """

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None = None,
        trained_positions: int | None = None,
    ) -> None:
        super().__init__()
        positions = torch.arange(max_positions, dtype=torch.int64).float()
        if scaling_kind(scaling) == "longrope":
            short, long, original, scale = longrope_frequencies(
                head_dim, theta, scaling, trained_positions
            )
            head, tail = positions[:original], positions[original:]
            freqs = torch.cat((head[:, None] * short[None, :], tail[:, None] * long[None, :]))
        else:
            inv_freq, scale = inverse_frequencies(head_dim, theta, scaling, trained_positions)
            freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scale, persistent=False)
        self.register_buffer("sin", emb.sin() * scale, persistent=False)
