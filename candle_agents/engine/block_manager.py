"""Paged KV-cache blocks: allocation, reference counts and prefix caching.

A full block is identified by a hash chained over every token before it and
its own tokens, so equal hashes mean equal prefixes (a token comparison on
each hit guards against collisions). Blocks whose reference count drops to
zero stay in the hash table and sit in an LRU free list; they are handed out
again, oldest first, only when no never-used block is left.
"""

from __future__ import annotations

from collections import OrderedDict

from candle_agents.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        # Blocks with ref count 0, least recently freed first; O(1) removal from the middle.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # The cache memory starts uninitialised; a block's first user gets it zeroed
        # (see take_fresh), so that masked-out slots never hold NaN bit patterns.
        self._never_used = bytearray([1]) * num_blocks
        self._fresh: list[int] = []
        self.hits = 0
        self.queries = 0

    # -- accounting ----------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self.free)

    # -- prefix cache --------------------------------------------------------------

    def _chain_hash(self, parent: int | None, tokens: tuple[int, ...]) -> int:
        return hash((parent, tokens))

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for the longest cached prefix; return its token count.

        The last token is never taken from the cache: its logits are needed.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        bs = self.block_size
        tokens = seq.token_ids()
        max_blocks = (len(tokens) - 1) // bs
        parent: int | None = None
        hashes: list[int] = []
        for i in range(max_blocks):
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            h = self._chain_hash(parent, chunk)
            block = self.cached.get(h)
            if block is None or self.block_tokens[block] != chunk:
                break
            hashes.append(h)
            parent = h
        self.queries += max_blocks
        self.hits += len(hashes)
        for h in hashes:
            block = self.cached[h]
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
        seq.block_hashes = hashes
        seq.num_hashed_blocks = len(hashes)
        return len(hashes) * bs

    def register_computed(self, seq: Sequence) -> None:
        """Hash the sequence's blocks that are now full and written (after a step)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        if full <= seq.num_hashed_blocks:
            return
        tokens = seq.token_ids()
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(seq.num_hashed_blocks, full):
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            h = self._chain_hash(parent, chunk)
            block = seq.block_table[i]
            if h not in self.cached and self.block_hash[block] is None:
                self.cached[h] = block
                self.block_hash[block] = h
                self.block_tokens[block] = chunk
            seq.block_hashes.append(h)
            parent = h
        seq.num_hashed_blocks = full

    # -- allocation ----------------------------------------------------------------

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give ``seq`` enough blocks for ``num_new_tokens`` more tokens, or nothing."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            block, _ = self.free.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:
                # Reused for other tokens: its old content is no longer findable.
                if self.cached.get(old) == block:
                    del self.cached[old]
                self.block_hash[block] = None
                self.block_tokens[block] = None
            self.ref_counts[block] = 1
            if self._never_used[block]:
                self._never_used[block] = 0
                self._fresh.append(block)
            seq.block_table.append(block)
        return True

    def take_fresh(self) -> list[int]:
        """Blocks handed out for the first time since the last call: zero them before use."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's references; its full blocks stay cached for reuse."""
        # Tail blocks go to the free list first, so they are evicted before the
        # shared prefix blocks that other requests are more likely to reuse.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is None:
                    # Uncached blocks are worthless: hand them out first.
                    self.free[block] = None
                    self.free.move_to_end(block, last=False)
                else:
                    self.free[block] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> None:
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.block_hash[block] = None
                self.block_tokens[block] = None
