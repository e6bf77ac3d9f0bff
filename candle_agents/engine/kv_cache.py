"""The KV cache's memory: one pool of blocks per group of layers that share a window.

Most models have one group (every layer global). Models with sliding-window
layers (Gemma 2 and 3, Mistral v0.1) get a group per window size besides the
global one; ``block_manager`` frees a window group's blocks once they fall
out of the window, so such a group needs only about ``window + step`` tokens
of blocks per sequence, and the memory budget is split by what each group
uses when a sequence runs at full length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from candle_agents.errors import ModelLoadError


@dataclass
class KVGroup:
    """Layers sharing one block pool: their window (None: global) and their caches."""

    window: int | None
    layers: list[int]
    num_blocks: int = 0
    buffer: torch.Tensor | None = field(default=None, repr=False)  # [2, layers, *block shape]


def group_layers(windows: tuple[int | None, ...] | None, num_layers: int) -> list[KVGroup]:
    """Groups in a fixed order: the global layers first, then each window, smallest first."""
    per_layer = windows or (None,) * num_layers
    keys = sorted(set(per_layer), key=lambda w: (w is not None, w or 0))
    return [KVGroup(w, [i for i, lw in enumerate(per_layer) if lw == w]) for w in keys]


def window_blocks_per_seq(window: int, step_tokens: int, block_size: int) -> int:
    """Blocks a window group holds for one sequence at most: its window plus one step."""
    return -(-(window - 1 + step_tokens) // block_size) + 1


def blocks_per_seq(
    window: int | None, max_model_len: int, step_tokens: int, block_size: int
) -> int:
    """The most blocks one sequence holds in a group: all of it, or its window and a step."""
    full = -(-max_model_len // block_size)
    return (
        full
        if window is None
        else min(full, window_blocks_per_seq(window, step_tokens, block_size))
    )


def size_groups(
    groups: list[KVGroup],
    budget: int,
    bytes_per_layer_block: int,
    block_size: int,
    max_model_len: int,
    max_num_seqs: int,
    step_tokens: int,
) -> None:
    """Set each group's ``num_blocks`` from a byte budget.

    A window group gets the share of the budget its layers take when a
    sequence runs at ``max_model_len``, but never more than ``max_num_seqs``
    sequences can hold at once; the global group gets the rest (and at most
    twice what every sequence at full length could use, as before).
    """
    need = [blocks_per_seq(g.window, max_model_len, step_tokens, block_size) for g in groups]
    weight = sum(len(g.layers) * n for g, n in zip(groups, need))
    left = budget
    # Window groups first: the global group takes what they leave.
    for g, n in sorted(zip(groups, need), key=lambda p: p[0].window is None):
        per_block = bytes_per_layer_block * len(g.layers)
        if g.window is None:
            g.num_blocks = min(left // per_block, n * max_num_seqs * 2)
        else:
            share = budget * len(g.layers) * n / weight
            g.num_blocks = min(int(share // per_block), n * max_num_seqs)
            left -= g.num_blocks * per_block
        if g.num_blocks < 2:
            raise ModelLoadError(
                f"kv_cache_memory={budget} leaves room for {g.num_blocks} KV block(s) of "
                f"{per_block} bytes for {_what(g)}; give it at least {2 * per_block} bytes"
            )


def longest_fitting(
    groups: list[KVGroup], block_size: int, max_model_len: int, step_tokens: int
) -> int:
    """The longest sequence every group can hold alone, or it could never finish.

    A window group that can hold a sequence's window plus one step bounds nothing.
    """
    for g in groups:
        if g.num_blocks < blocks_per_seq(g.window, max_model_len, step_tokens, block_size):
            max_model_len = min(max_model_len, g.num_blocks * block_size)
    return max_model_len


def allocate_groups(
    groups: list[KVGroup],
    block_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each group's buffer, and every layer's (K, V) cache views in layer order.

    ``block_shape`` is one layer's cache shape with the block axis first, for
    one block. The buffers are left uninitialised (touching gigabytes up front
    costs seconds of page faults); blocks are zeroed on first use, and block 0,
    which pads block tables, now.
    """
    caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for g in groups:
        shape = (2, len(g.layers), g.num_blocks, *block_shape[1:])
        g.buffer = torch.empty(shape, dtype=dtype, device=device)
        g.buffer[:, :, 0].zero_()
        for j, layer in enumerate(g.layers):
            caches[layer] = (g.buffer[0, j], g.buffer[1, j])
    return [caches[i] for i in range(len(caches))]


def _what(g: KVGroup) -> str:
    n = len(g.layers)
    return f"{n} global layer(s)" if g.window is None else f"{n} layer(s) with window {g.window}"
