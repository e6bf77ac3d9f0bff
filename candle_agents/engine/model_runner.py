"""Owns the model and the KV cache; turns a scheduled batch into one forward pass."""

from __future__ import annotations

import logging
import sys

import numpy as np
import torch

from candle_agents.engine.attention import AttentionMetadata, get_backend
from candle_agents.engine.config import EngineConfig
from candle_agents.engine.cuda_graph import CudaGraph, DecodeGraphs
from candle_agents.engine.decode_stack import DecodeStack
from candle_agents.engine.kv_cache import (
    allocate_groups,
    group_layers,
    longest_fitting,
    size_groups,
)
from candle_agents.engine.layers.decoder import ForwardContext
from candle_agents.engine.layers.linear import pack_linears
from candle_agents.engine.loader import Checkpoint
from candle_agents.engine.models import model_class
from candle_agents.engine.platform import available_memory, resolve_device, resolve_dtype
from candle_agents.engine.quant.apply import finish_quantized, plan_quantized, weight_bytes
from candle_agents.engine.scheduler import ScheduledBatch
from candle_agents.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, checkpoint: Checkpoint, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.quantized = False  # set by _load
        self.model = self._load(checkpoint)
        self.kv_dtype = self._kv_dtype()
        self.block_size = config.block_size
        self.backend = get_backend(
            config.attention_backend,
            self.device,
            self.dtype,
            self.model.spec.head_dim,
            kv_dtype=self.kv_dtype,
        )
        self.max_model_len = self._max_model_len()
        self.kv_caches = self._allocate_kv_cache()
        self.model.init_rotary(self.max_model_len + 1, self.device)
        # Decode-only steps on the CPU backend: all layers in one C call.
        self.decode_stack: DecodeStack | None = None
        if self.backend.name == "cpu" and self.dtype == torch.float32:
            self.decode_stack = DecodeStack.build(self.model, self.kv_caches, self.block_size)
        self.graphs: DecodeGraphs | None = None
        if config.enable_cuda_graph:
            if self.device.type == "cuda" and self.backend.name == "triton":
                try:
                    self.enable_decode_graphs()
                except (RuntimeError, ConfigError) as exc:  # OOM; sliding windows (ConfigError)
                    # Eager decoding is slower, never wrong: serve rather than fail.
                    logger.warning("CUDA graph capture failed, decoding eagerly: %s", exc)
            else:
                logger.warning(
                    "enable_cuda_graph is ignored: CUDA graphs need device cuda and the "
                    "triton attention backend (this engine has %s and %s)",
                    self.device,
                    self.backend.name,
                )

    # -- setup ---------------------------------------------------------------------

    def _load(self, ckpt: Checkpoint) -> torch.nn.Module:
        cls = model_class(ckpt.config)
        try:
            with torch.device("meta"):
                model = cls(ckpt.config)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"{ckpt.path}: config.json is missing or has bad fields: {exc}"
            ) from exc
        plan = plan_quantized(
            model,
            ckpt,
            self.device,
            dequantize=self.config.dequantize,
            quantize=self.config.quantize,
            int8_activations=self.config.quantized_matmul == "int8",
        )
        model = model.to_empty(device=self.device).to(self.dtype)
        model.tie_weights()
        model.requires_grad_(False)
        weights = ckpt.weights(keep_quantized=plan.keep if plan else ())
        if sys.stderr.isatty():
            from tqdm import tqdm

            weights = tqdm(weights, total=ckpt.num_weights, desc=f"loading {ckpt.name}")
        with torch.no_grad():
            model.load_weights(weights)
        if plan is not None:
            finish_quantized(model, plan)
            self.quantized = True
        if self.device.type == "cpu" and self._room_for_packed_copy(model):
            pack_linears(model)
        self.weight_bytes = weight_bytes(model)
        logger.info("model weights: %.1f MiB", self.weight_bytes / 2**20)
        return model.eval()

    def _kv_dtype(self) -> torch.dtype:
        name = self.config.kv_cache_dtype
        if name != "auto":
            return resolve_dtype(name, self.device)
        if self.quantized and self.config.quantized_matmul == "int8":
            # llama.cpp's default too: half the cache, and its rounding (2^-11
            # relative) is far below what int8 activations already move.
            return torch.float16
        return self.dtype

    def _room_for_packed_copy(self, model: torch.nn.Module) -> bool:
        # Packed weights are a second copy: only worth it while memory is plentiful.
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        return size < 0.15 * available_memory(self.device)

    def _max_model_len(self) -> int:
        c = self.model.config  # a multimodal checkpoint's text part, where the model took it
        limit = int(c.get("max_position_embeddings") or 2048)
        if self.config.max_model_len is not None:
            limit = self.config.max_model_len
        return limit

    def _allocate_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.model.spec
        self.kv_groups = group_layers(spec.layer_windows, self.model.num_layers)
        per_layer_block = (
            2 * self.block_size * spec.num_kv_heads * spec.head_dim * self.kv_dtype.itemsize
        )
        mem = self.config.kv_cache_memory
        free = available_memory(self.device)
        if mem is None:
            budget = int(0.9 * free) if self.device.type == "cuda" else min(free // 10, 2 << 30)
        elif isinstance(mem, float):
            budget = int(mem * free)
        else:
            budget = mem
        c = self.config
        step = min(c.prefill_chunk_size, c.max_num_batched_tokens)
        if not c.enable_chunked_prefill:
            step = self.max_model_len
        size_groups(
            self.kv_groups,
            budget,
            per_layer_block,
            self.block_size,
            self.max_model_len,
            c.max_num_seqs,
            step,
        )
        shape = self.backend.kv_cache_shape(1, self.block_size, spec.num_kv_heads, spec.head_dim)
        caches = allocate_groups(self.kv_groups, shape, self.kv_dtype, self.device)
        for g in self.kv_groups:
            logger.info(
                "KV cache for %d %s layer(s): %d blocks of %d tokens (%.1f MiB)",
                len(g.layers),
                "global" if g.window is None else f"window-{g.window}",
                g.num_blocks,
                self.block_size,
                g.num_blocks * len(g.layers) * per_layer_block / 2**20,
            )
        self.max_model_len = longest_fitting(
            self.kv_groups, self.block_size, self.max_model_len, step
        )
        return caches

    def enable_decode_graphs(self, graph_cls=CudaGraph) -> None:
        """Capture decode steps per batch-size bucket; later decode-only steps replay them.

        ``graph_cls`` is for tests (a stand-in graph that re-runs the step on CPU).
        """
        if self.backend.name != "triton":
            raise ConfigError(
                "CUDA graphs need the triton attention backend, whose decode kernels "
                f"take padded batches (this engine uses {self.backend.name!r})",
                field="enable_cuda_graph",
            )
        max_batch = min(self.config.cuda_graph_max_batch, self.config.max_num_seqs)
        graphs = DecodeGraphs(
            self.model,
            self.backend,
            self.kv_caches,
            max_batch=max_batch,
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            device=self.device,
            graph_cls=graph_cls,
        )
        graphs.capture()
        self.graphs = graphs
        logger.info("CUDA graphs captured for decode batches of %s", graphs.buckets)

    def release(self) -> None:
        """Drop the KV cache and the captured graphs: the engine has stopped."""
        self.graphs = None
        self.decode_stack = None  # it points into the cache
        self.kv_caches = []
        self.kv_groups = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _layer_metas(self, metas: list[AttentionMetadata]) -> list[AttentionMetadata] | None:
        if len(metas) == 1:
            return None  # every layer reads ctx.meta
        per_layer: dict[int, AttentionMetadata] = {}
        for group, meta in zip(self.kv_groups, metas):
            per_layer.update(dict.fromkeys(group.layers, meta))
        return [per_layer[i] for i in range(len(per_layer))]

    def _tables_and_slots(
        self, batch: ScheduledBatch, group: int, seq_idx: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One group's block tables (dropped blocks read as block 0) and this step's slots."""
        bs = self.block_size
        width = max(len(s.block_tables[group]) for s in batch.seqs)
        tables = np.zeros((len(batch.seqs), width), dtype=np.int64)  # padded with block 0
        for i, s in enumerate(batch.seqs):
            table = s.block_tables[group]
            tables[i, : len(table)] = table
        if self.kv_groups[group].window is not None:
            np.maximum(tables, 0, out=tables)  # DROPPED (-1): out of every window
        tables_t = torch.from_numpy(tables)
        slots = tables_t[seq_idx, positions // bs] * bs + positions % bs
        return tables_t, slots

    # -- one step ------------------------------------------------------------------

    @property
    def group_blocks(self) -> list[int]:
        return [g.num_blocks for g in self.kv_groups]

    @property
    def group_windows(self) -> list[int | None]:
        return [g.window for g in self.kv_groups]

    def zero_blocks(self, fresh: list[list[int]]) -> None:
        """Zero each group's newly used blocks (one list per group)."""
        for group, blocks in zip(self.kv_groups, fresh):
            if blocks:
                ids = torch.tensor(blocks, dtype=torch.long, device=self.device)
                group.buffer.index_fill_(2, ids, 0)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[int]]:
        """Run the batch; return logits for the sequences that sample, and their indices."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        seq_idx: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        logits_rows: list[int] = []
        sampling: list[int] = []
        # Host-side work here is per step and per sequence: at a few hundred
        # decodes it rivals a GPU's forward pass, so nothing is O(context).
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            end = start + n
            prompt = seq.prompt_token_ids
            np_ = len(prompt)
            if end <= np_:
                input_ids.extend(prompt[start:end])
            elif start >= np_:
                input_ids.extend(seq.output_token_ids[start - np_ : end - np_])
            else:
                input_ids.extend(prompt[start:])
                input_ids.extend(seq.output_token_ids[: end - np_])
            positions.extend(range(start, end))
            seq_idx.extend([i] * n)
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if end == seq.num_tokens:
                logits_rows.append(query_start[-1] - 1)
                sampling.append(i)
        dev = self.device
        ids_t = torch.tensor(input_ids, dtype=torch.long)
        pos_t = torch.tensor(positions, dtype=torch.long)
        seq_idx_t = torch.tensor(seq_idx, dtype=torch.long)
        groups = range(len(self.kv_groups))
        tables_t, slots = zip(*(self._tables_and_slots(batch, g, seq_idx_t, pos_t) for g in groups))
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.long)
        rows_t = torch.tensor(logits_rows, dtype=torch.long)
        if dev.type != "cpu":
            ids_t, pos_t, seq_lens_t, rows_t = (
                t.to(dev, non_blocking=True) for t in (ids_t, pos_t, seq_lens_t, rows_t)
            )
            tables_t = [t.to(dev, non_blocking=True) for t in tables_t]
            slots = [t.to(dev, non_blocking=True) for t in slots]
        nd = batch.num_decodes
        if self.graphs is not None and nd == len(batch.seqs) and nd <= self.graphs.max_batch:
            x, residual = self.graphs.run(ids_t, pos_t, slots[0], seq_lens_t, tables_t[0])
            return self.model.logits(x, residual, rows_t, self.backend.ops), sampling
        stack = self.decode_stack
        if stack is not None and nd == len(batch.seqs) and nd <= stack.max_rows:
            x, residual = stack.run(ids_t, pos_t, slots[0], tables_t[0], seq_lens_t)
            return self.model.logits(x, residual, rows_t, self.backend.ops), sampling
        metas = [
            AttentionMetadata(
                num_decodes=nd,
                num_decode_tokens=nd,
                slot_mapping=slots[g],
                seq_lens=seq_lens_t,
                block_tables=tables_t[g],
                seq_lens_cpu=seq_lens,
                query_lens_cpu=batch.num_new_tokens,
                query_start_cpu=query_start,
                max_decode_seq_len=max(seq_lens[:nd], default=0),
                block_size=bs,
                window=group.window,
            )
            for g, group in enumerate(self.kv_groups)
        ]
        spec = self.model.spec
        for meta in metas:
            self.backend.prepare(meta, spec.num_kv_heads, spec.head_dim)
        ctx = ForwardContext(
            metas[0],
            self.backend,
            self.kv_caches,
            pos_t,
            self.model.rotary,
            self.backend.ops,
            layer_metas=self._layer_metas(metas),
            local_rotary=getattr(self.model, "local_rotary", None),
        )
        logits = self.model(ids_t, ctx, rows_t)
        return logits, sampling
