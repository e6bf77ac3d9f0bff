"""The attention backend interface and the per-step metadata it reads.

The model runner flattens a step's batch into one token axis: decode tokens
first (one per sequence), then the prefill chunks. Every layer first stores
its new K/V into the paged cache through ``slot_mapping``, then attends over
the cache. A backend only has to implement those two operations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from candle_agents.engine.layers.ops import TorchOps


@dataclass
class AttentionMetadata:
    """Where each sequence's queries and keys live for one step.

    ``seq_lens`` counts the tokens a sequence can attend to after this step's
    tokens are stored; ``query_lens`` how many of them are new this step.
    ``block_tables[i, j]`` is the cache block holding tokens
    ``[j * block_size, (j + 1) * block_size)`` of sequence ``i`` (padded with 0).

    ``window`` (sliding-window layers): a query at position ``p`` sees the keys
    at positions ``p - window < j <= p`` only. Blocks wholly before the
    window may have been freed and their table entries set to 0, so a backend
    must not let them change the result (the fast ones skip them).
    """

    num_decodes: int
    num_decode_tokens: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    seq_lens: torch.Tensor  # [num_seqs] int64 (on the device)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64
    # Host-side copies, so that backends never synchronise to read shapes.
    seq_lens_cpu: list[int]
    query_lens_cpu: list[int]
    query_start_cpu: list[int]
    max_decode_seq_len: int
    block_size: int
    window: int | None = None
    # Per-step tensors a backend precomputes once for all layers (see ``prepare``).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_prefills(self) -> int:
        return len(self.seq_lens_cpu) - self.num_decodes


class AttentionBackend(ABC):
    """Stores K/V into the paged cache and attends over it.

    ``ops`` is the set of elementwise kernels (norms, activation, rotary)
    that goes with the backend.
    """

    name: str = "base"
    ops: TorchOps = TorchOps()

    def kv_cache_shape(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, ...]:
        """The shape of one layer's K (and V) cache; each backend picks its layout."""
        return (num_blocks, block_size, num_kv_heads, head_dim)

    def prepare(self, meta: AttentionMetadata, num_kv_heads: int, head_dim: int) -> None:  # noqa: B027
        """Precompute per-step indices into ``meta.extra``, once for every layer.

        The default precomputes nothing.
        """

    @abstractmethod
    def store_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        """Write ``key``/``value`` ([tokens, kv_heads, head_dim]) to their slots."""

    @abstractmethod
    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Causal attention for every query token; returns [tokens, heads, head_dim].

        ``softcap`` (Gemma 2) caps the scaled scores: ``softcap * tanh(s / softcap)``.

        ``key``/``value`` are this step's new tokens, already stored in the
        cache; a backend may use them directly where a sequence has no history.
        Caches are shaped as ``kv_cache_shape`` says.
        """
