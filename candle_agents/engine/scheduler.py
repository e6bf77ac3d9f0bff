"""Continuous batching under one token budget per step.

There are no separate prefill and decode phases: each scheduled sequence
moves its computed-token count toward its token count, running sequences
first (FCFS), then waiting ones while budget, slots and blocks last. A long
prompt takes at most ``prefill_chunk_size`` tokens a step, so decodes keep
flowing beside it. When blocks run out, the most recently arrived running
sequence is preempted by recompute: its blocks are freed and it goes back to
the front of the waiting queue, outputs kept. After the forward pass,
``postprocess`` advances each scheduled sequence past what it computed and
offers its now-full blocks to the prefix cache; sliding-window groups free
the blocks that fell out of the window.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

from candle_agents.engine.block_manager import BlockManager
from candle_agents.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    """Sequences and how many new tokens each computes this step (decodes first).

    ``fresh_blocks`` (one list per KV group) were newly taken from the free
    pools this step: the runner zeroes them before the forward pass writes into them.
    """

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_decodes: int = 0
    preempted: list[Sequence] = field(default_factory=list)
    fresh_blocks: list[list[int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.seqs


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefill_chunk_size: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunk = prefill_chunk_size if enable_chunked_prefill else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk_len(seq, budget)
            while not self.blocks.allocate(seq, n):
                victim = self.running.pop()  # latest arrival loses its blocks
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                scheduled.append((seq, n))
                budget -= n
                i += 1
                continue
            break  # seq preempted itself: nothing after it can run either

        while (
            self.waiting and budget > 0 and not preempted and len(self.running) < self.max_num_seqs
        ):
            seq = self.waiting[0]
            if not seq.block_tables and seq.num_computed_tokens == 0:
                hit = self.blocks.match_prefix(seq)
                seq.num_computed_tokens = hit
                if seq.cached_tokens is None:
                    seq.cached_tokens = hit
            remaining = seq.num_tokens - seq.num_computed_tokens
            if self.chunk is None and remaining > budget:
                break
            n = self._chunk_len(seq, budget)
            if not self.blocks.allocate(seq, n):
                # Give its prefix hit back (the blocks stay cached): held by a
                # waiting sequence, they could starve the preempted ones that
                # go back in front of it, and nothing would ever run.
                self.blocks.release(seq)
                seq.num_computed_tokens = 0
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n

        # Decodes (one new token that completes the sequence) go first in the batch.
        scheduled.sort(key=lambda p: p[1] != 1)
        batch = ScheduledBatch(
            seqs=[s for s, _ in scheduled],
            num_new_tokens=[n for _, n in scheduled],
            num_decodes=sum(1 for _, n in scheduled if n == 1),
            preempted=preempted,
            fresh_blocks=self.blocks.take_fresh(),
        )
        return batch

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Record a finished forward pass: each sequence's new tokens are now in the cache."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.blocks.register_computed(seq)
            self.blocks.slide_windows(seq, n)

    def _chunk_len(self, seq: Sequence, budget: int) -> int:
        n = min(seq.num_tokens - seq.num_computed_tokens, budget)
        return min(n, self.chunk) if self.chunk is not None else n

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence from the queues and free its blocks."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED
