"""CUDA graphs for decode steps: captured once per batch-size bucket, replayed each step.

A decode step of a small model is mostly launch overhead on a GPU (a few
hundred small kernels); a captured graph replays them in one call. A graph
fixes every address and shape, so ``DecodeGraphs`` owns static input buffers
sized for the largest bucket, and a batch of n decodes replays the smallest
bucket >= n with its padding rows made inert: slot -1 stores nothing, length
0 reads nothing (the triton kernels' contract). Only the decoder layers are
captured; logits are computed eagerly for the real rows, so a bucket costs
hidden-state buffers, not [bucket, vocab] logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from candle_agents.engine.attention import AttentionMetadata
from candle_agents.engine.layers.decoder import ForwardContext
from candle_agents.errors import ConfigError

HiddenStates = tuple[torch.Tensor, torch.Tensor]


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16, up to and including ``max_batch``."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += range(16, max_batch, 16)
    return [*sizes, max_batch]


class CudaGraph:
    """One captured CUDA graph; ``capture`` warms ``fn`` up on a side stream first."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], HiddenStates]) -> HiddenStates:
        # The warm-up compiles triton kernels and settles the allocator, so
        # that nothing is allocated outside the pool during capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(self.graph, pool=self.pool):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()


class DecodeGraphs:
    """Decode-only steps through captured graphs, one per batch-size bucket.

    ``graph_cls`` builds one graph from the shared memory pool; tests pass a
    stand-in that re-runs the function, to check the buffer handling on CPU.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        backend: Any,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        max_batch: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        graph_cls: Callable[[Any], Any] = CudaGraph,
    ) -> None:
        windows = getattr(model.spec, "layer_windows", None)
        if windows is not None and any(w is not None for w in windows):
            # A graph captures one metadata for every layer; sliding-window layers
            # need their own (window, and their pool's tables and slots).
            raise ConfigError(
                "enable_cuda_graph: CUDA graphs do not support models with sliding-window "
                "layers yet; set enable_cuda_graph=False to decode them eagerly",
                field="enable_cuda_graph",
            )
        self.model, self.backend, self.kv_caches = model, backend, kv_caches
        self.max_model_len, self.block_size = max_model_len, block_size
        self.buckets = batch_buckets(max_batch)
        self.graph_cls = graph_cls
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        rows = self.buckets[-1]
        width = -(-max_model_len // block_size)
        long = {"dtype": torch.long, "device": device}
        self.input_ids = torch.zeros(rows, **long)
        self.positions = torch.zeros(rows, **long)
        self.slots = torch.full((rows,), -1, **long)
        self.seq_lens = torch.zeros(rows, **long)
        self.block_tables = torch.zeros(rows, width, **long)
        self.graphs: dict[int, tuple[Any, HiddenStates]] = {}

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def capture(self) -> None:
        """Capture every bucket, largest first, so smaller ones reuse its pool memory."""
        with torch.inference_mode():
            for b in reversed(self.buckets):
                self.graphs[b] = self._capture(b)

    def _capture(self, b: int) -> tuple[Any, HiddenStates]:
        spec = self.model.spec
        meta = AttentionMetadata(
            num_decodes=b,
            num_decode_tokens=b,
            slot_mapping=self.slots[:b],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            seq_lens_cpu=[self.max_model_len] * b,
            query_lens_cpu=[1] * b,
            query_start_cpu=list(range(b + 1)),
            # Splits sized for the longest context, since any may come.
            max_decode_seq_len=self.max_model_len,
            block_size=self.block_size,
        )
        self.backend.prepare(meta, spec.num_kv_heads, spec.head_dim)
        ctx = ForwardContext(
            meta,
            self.backend,
            self.kv_caches,
            self.positions[:b],
            self.model.rotary,
            self.backend.ops,
        )
        graph = self.graph_cls(self.pool)
        out = graph.capture(lambda: self.model.hidden_states(self.input_ids[:b], ctx))
        return graph, out

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
    ) -> HiddenStates:
        """One decode token per sequence (n <= ``max_batch``): hidden states of the n rows."""
        n = input_ids.shape[0]
        b = next(size for size in self.buckets if size >= n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slots[:n].copy_(slots, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        # Rows past n keep old ids and positions (valid indices, results unused)
        # but must neither store nor read the cache.
        self.slots[n:b].fill_(-1)
        self.seq_lens[n:b].zero_()
        # Table entries past a sequence's length are never read: no need to clear.
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        graph, (x, residual) = self.graphs[b]
        graph.replay()
        return x[:n], residual[:n]
