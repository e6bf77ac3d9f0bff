"""Paged KV-cache blocks: allocation, reference counts, prefix caching, sliding windows.

A full block is identified by a hash chained over every token before it and
its own tokens, so equal hashes mean equal prefixes (a token comparison on
each hit guards against collisions). Blocks whose reference count drops to
zero stay in the hash table and sit in an LRU free list; they are handed out
again, oldest first, only when no never-used block is left.

Models with sliding-window layers keep those layers' KV in pools of their
own, one per window size (a *group*, as in vLLM's hybrid allocator): a
sequence has one block table per group, all of the same length. Once a block
of a window group lies wholly before the window of every query still to come,
it goes back to its pool's free list and its table entry becomes ``DROPPED``;
so a window group holds about ``window / block_size`` blocks per sequence
however long the context grows, and only global layers pay for all of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from candle_agents.engine.sequence import Sequence

DROPPED = -1  # a window group's table entry for a block that fell out of the window


class BlockPool:
    """One group's blocks: reference counts, the LRU free list and the hash table."""

    def __init__(self, num_blocks: int, window: int | None = None) -> None:
        self.num_blocks = num_blocks
        self.window = window
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

    def first_needed(self, num_computed: int, block_size: int) -> int:
        """The first block the next query (at position ``num_computed``) can still see."""
        if self.window is None:
            return 0
        return max(0, num_computed - self.window + 1) // block_size

    def lookup(self, h: int, tokens: tuple[int, ...]) -> int | None:
        block = self.cached.get(h)
        if block is None or self.block_tokens[block] != tokens:
            return None
        return block

    def hold(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def take(self) -> int:
        """A block from the free list (oldest first), its old content forgotten."""
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
        return block

    def drop(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free[block] = None
            if self.block_hash[block] is None:
                # Uncached blocks are worthless: hand them out first.
                self.free.move_to_end(block, last=False)

    def publish(self, block: int, h: int, tokens: tuple[int, ...]) -> None:
        if h not in self.cached and self.block_hash[block] is None:
            self.cached[h] = block
            self.block_hash[block] = h
            self.block_tokens[block] = tokens

    def take_fresh(self) -> list[int]:
        fresh, self._fresh = self._fresh, []
        return fresh

    def reset_prefix_cache(self) -> None:
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.block_hash[block] = None
                self.block_tokens[block] = None


class BlockManager:
    """Every group's blocks for every sequence.

    ``num_blocks`` and ``windows`` have one entry per group (an int and the
    default ``(None,)``: one global group, the usual case).
    """

    def __init__(
        self,
        num_blocks: int | Seq[int],
        block_size: int,
        enable_prefix_caching: bool = True,
        windows: Seq[int | None] = (None,),
    ) -> None:
        sizes = [num_blocks] if isinstance(num_blocks, int) else list(num_blocks)
        if len(sizes) != len(windows):
            raise ValueError(f"{len(sizes)} pool sizes for {len(windows)} groups")
        self.pools = [BlockPool(n, w) for n, w in zip(sizes, windows)]
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hits = 0
        self.queries = 0

    # -- accounting ----------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return sum(p.num_blocks for p in self.pools)

    @property
    def num_free_blocks(self) -> int:
        return sum(len(p.free) for p in self.pools)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def ref_counts(self) -> list[int]:
        """The first group's reference counts (the only group of most models)."""
        return self.pools[0].ref_counts

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New blocks per group (tables of every group have the same length)."""
        total = seq.num_computed_tokens + num_new_tokens
        held = len(seq.block_tables[0]) if seq.block_tables else 0
        return max(0, -(-total // self.block_size) - held)

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.blocks_needed(seq, num_new_tokens)
        return all(needed <= len(p.free) for p in self.pools)

    def held_blocks(self, seq: Sequence) -> list[int]:
        """How many blocks ``seq`` holds in each group (dropped ones not counted)."""
        return [sum(b != DROPPED for b in t) for t in seq.block_tables] or [0] * len(self.pools)

    # -- prefix cache --------------------------------------------------------------

    def _chain_hash(self, parent: int | None, tokens: tuple[int, ...]) -> int:
        return hash((parent, tokens))

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for the longest usable prefix; return its token count.

        Global groups need every block of the prefix; a window group only the
        blocks the first uncached token can still see. The last token is never
        taken from the cache: its logits are needed.
        """
        if not self.enable_prefix_caching or any(seq.block_tables):
            return 0
        bs = self.block_size
        tokens = seq.token_ids()
        max_blocks = (len(tokens) - 1) // bs
        global_pools = [p for p in self.pools if p.window is None]
        hashes: list[int] = []
        chunks: list[tuple[int, ...]] = []
        parent: int | None = None
        for i in range(max_blocks):
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            parent = self._chain_hash(parent, chunk)
            if any(p.lookup(parent, chunk) is None for p in global_pools):
                break  # global layers need the whole prefix: no hit goes further
            hashes.append(parent)
            chunks.append(chunk)
        found = [[p.lookup(h, c) for h, c in zip(hashes, chunks)] for p in self.pools]
        k = len(hashes)
        changed = True
        while changed and k:
            changed = False
            for pool, blocks in zip(self.pools, found):
                while k and any(b is None for b in blocks[pool.first_needed(k * bs, bs) : k]):
                    k -= 1
                    changed = True
        self.queries += max_blocks
        self.hits += k
        seq.block_tables = []
        for pool, blocks in zip(self.pools, found):
            start = pool.first_needed(k * bs, bs)
            table = [DROPPED] * start
            for block in blocks[start:k]:
                pool.hold(block)
                table.append(block)
            seq.block_tables.append(table)
        seq.block_hashes = hashes[:k]
        seq.num_hashed_blocks = k
        return k * bs

    def register_computed(self, seq: Sequence) -> None:
        """Hash the sequence's blocks that are now full and written (after a step)."""
        if not self.enable_prefix_caching or not seq.block_tables:
            return
        bs = self.block_size
        full = min(seq.num_computed_tokens // bs, len(seq.block_tables[0]))
        if full <= seq.num_hashed_blocks:
            return
        tokens = seq.token_ids()
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(seq.num_hashed_blocks, full):
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            parent = self._chain_hash(parent, chunk)
            for pool, table in zip(self.pools, seq.block_tables):
                if table[i] != DROPPED:
                    pool.publish(table[i], parent, chunk)
            seq.block_hashes.append(parent)
        seq.num_hashed_blocks = full

    def slide_windows(self, seq: Sequence, num_new_tokens: int) -> None:
        """Free window-group blocks that the last ``num_new_tokens`` moved out of reach."""
        bs = self.block_size
        now = seq.num_computed_tokens
        for pool, table in zip(self.pools, seq.block_tables):
            if pool.window is None:
                continue
            stop = min(pool.first_needed(now, bs), len(table))
            for i in range(pool.first_needed(now - num_new_tokens, bs), stop):
                if table[i] != DROPPED:
                    pool.drop(table[i])
                    table[i] = DROPPED

    # -- allocation ----------------------------------------------------------------

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give ``seq`` enough blocks for ``num_new_tokens`` more tokens, or nothing."""
        if not seq.block_tables:
            seq.block_tables = [[] for _ in self.pools]
        needed = self.blocks_needed(seq, num_new_tokens)
        if any(needed > len(p.free) for p in self.pools):
            return False
        for pool, table in zip(self.pools, seq.block_tables):
            table.extend(pool.take() for _ in range(needed))
        return True

    def take_fresh(self) -> list[list[int]]:
        """Per group, blocks handed out for the first time since the last call: zero them."""
        return [p.take_fresh() for p in self.pools]

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's references; its full blocks stay cached for reuse."""
        # Tail blocks go to the free list first, so they are evicted before the
        # shared prefix blocks that other requests are more likely to reuse.
        for pool, table in zip(self.pools, seq.block_tables):
            for block in reversed(table):
                if block != DROPPED:
                    pool.drop(block)
        seq.block_tables = []
        seq.block_hashes = []
        seq.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> None:
        for pool in self.pools:
            pool.reset_prefix_cache()
