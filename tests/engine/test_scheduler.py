"""The scheduler on its own: budgets, chunking, decode order, preemption, prefix hits.

No model: a step is schedule() -> postprocess() -> one token appended to every
sequence whose prompt and outputs are all computed, which is what the engine
loop does around its forward pass.
"""

from __future__ import annotations

import pytest

from candle_agents.engine.block_manager import BlockManager
from candle_agents.engine.params import GenerationParams
from candle_agents.engine.scheduler import ScheduledBatch, Scheduler
from candle_agents.engine.sequence import Sequence, Status

BLOCK = 4


def make_seq(name: str, prompt_len: int, first: int = 0) -> Sequence:
    return Sequence(
        request_id=name,
        prompt_token_ids=list(range(first, first + prompt_len)),
        params=GenerationParams(max_tokens=64),
        eos_token_ids=frozenset(),
        max_total_tokens=prompt_len + 64,
        detokenizer=None,  # the scheduler never reads text
    )


def make_scheduler(
    num_blocks: int = 64,
    max_num_seqs: int = 8,
    budget: int = 32,
    chunk: int = 8,
    chunked: bool = True,
    prefix_caching: bool = True,
) -> Scheduler:
    blocks = BlockManager(num_blocks, BLOCK, prefix_caching)
    return Scheduler(blocks, max_num_seqs, budget, chunk, chunked)


def step(sched: Scheduler) -> ScheduledBatch:
    """One engine step without a model: every sequence that is caught up samples 100 + i."""
    batch = sched.schedule()
    sched.postprocess(batch)
    for seq in batch.seqs:
        if seq.num_computed_tokens == seq.num_tokens:
            seq.output_token_ids.append(100 + len(seq.output_token_ids))
    return batch


def plan(batch: ScheduledBatch) -> list[tuple[str, int]]:
    return [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)]


def blocks_in_use(sched: Scheduler) -> int:
    return sched.blocks.num_blocks - sched.blocks.num_free_blocks


def test_a_long_prompt_is_chunked_and_then_decodes():
    sched = make_scheduler(budget=32, chunk=8)
    seq = make_seq("a", 20)
    sched.add(seq)
    assert [plan(step(sched)) for _ in range(4)] == [[("a", 8)], [("a", 8)], [("a", 4)], [("a", 1)]]
    # the third step finished the prompt and sampled; the fourth is a decode
    assert seq.output_token_ids == [100, 101]
    assert seq.num_computed_tokens == 21
    assert len(seq.block_table) == -(-21 // BLOCK)


def test_the_token_budget_is_shared_running_first():
    sched = make_scheduler(budget=12, chunk=8)
    a, b, c = make_seq("a", 10), make_seq("b", 10, first=50), make_seq("c", 10, first=90)
    for s in (a, b, c):
        sched.add(s)
    assert plan(step(sched)) == [("a", 8), ("b", 4)]
    # running sequences go first; c waits until the budget allows
    assert plan(step(sched)) == [("a", 2), ("b", 6), ("c", 4)]
    assert [s.request_id for s in sched.running] == ["a", "b", "c"]


def test_decodes_come_first_in_the_batch():
    sched = make_scheduler(budget=32, chunk=8)
    a = make_seq("a", 4)
    sched.add(a)
    step(sched)  # a's whole prompt, then its first token
    sched.add(make_seq("b", 12, first=40))
    batch = step(sched)
    assert plan(batch) == [("a", 1), ("b", 8)]
    assert batch.num_decodes == 1


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_num_seqs=2, budget=64)
    for i in range(3):
        sched.add(make_seq(f"s{i}", 4, first=10 * i))
    assert [s for s, _ in plan(step(sched))] == ["s0", "s1"]
    assert [s.request_id for s in sched.waiting] == ["s2"]
    sched.finish(sched.running[0])
    assert [s for s, _ in plan(step(sched))] == ["s1", "s2"]


def test_without_chunking_a_prompt_waits_for_a_whole_budget_in_order():
    sched = make_scheduler(budget=16, chunk=8, chunked=False)
    a, big, small = make_seq("a", 10), make_seq("big", 12, first=40), make_seq("s", 2, first=80)
    for s in (a, big, small):
        sched.add(s)
    assert plan(step(sched)) == [("a", 10)]  # big does not fit beside it; small waits behind
    assert plan(step(sched)) == [("a", 1), ("big", 12), ("s", 2)]


def test_blocks_running_out_preempt_the_latest_arrival():
    # 6 blocks of 4: two 8-token prompts take 2 each; growing both runs out.
    sched = make_scheduler(num_blocks=6, budget=32)
    a, b = make_seq("a", 8), make_seq("b", 8, first=40)
    sched.add(a)
    sched.add(b)
    step(sched)  # both prompts; each sampled one token (needs a third block next step)
    step(sched)  # decodes: 4 + 4 blocks would be 6; fine
    assert blocks_in_use(sched) == 6
    for _ in range(3):
        step(sched)
    batch = step(sched)  # a needs a fourth block: b, the latest arrival, gives its blocks
    assert batch.preempted == [b]
    assert plan(batch) == [("a", 1)]
    assert b.status is Status.WAITING and sched.waiting[0] is b
    assert b.num_computed_tokens == 0 and b.block_table == []
    assert b.output_token_ids  # outputs kept: it resumes by recomputing them
    assert sched.num_preemptions == 1 and b.num_preemptions == 1
    sched.finish(a)
    batch = step(sched)  # b recomputes its prompt and outputs in chunks
    assert plan(batch)[0][0] == "b"
    while b.num_computed_tokens < b.num_tokens - 1:
        step(sched)
    sched.finish(b)
    assert blocks_in_use(sched) == 0


def test_a_sequence_that_cannot_grow_preempts_itself():
    sched = make_scheduler(num_blocks=2, budget=32)
    a = make_seq("a", 8)
    sched.add(a)
    step(sched)
    batch = step(sched)  # the 9th token needs a third block that does not exist
    assert batch.empty and batch.preempted == [a]
    assert a.status is Status.WAITING


def test_postprocess_publishes_full_blocks_to_the_prefix_cache():
    sched = make_scheduler(budget=32, chunk=8)
    first = make_seq("first", 10)
    sched.add(first)
    step(sched)
    assert first.num_hashed_blocks == 2  # 8 of 10 computed: two full blocks
    step(sched)
    sched.finish(first)
    again = make_seq("again", 12)  # the same first 10 tokens, and two more
    sched.add(again)
    batch = step(sched)
    assert again.cached_tokens == 8  # two whole blocks from the cache
    assert plan(batch) == [("again", 4)]
    assert sched.blocks.hits == 2


def test_fresh_blocks_are_reported_once():
    sched = make_scheduler(num_blocks=2, budget=32)
    a = make_seq("a", 8)
    sched.add(a)
    batch = sched.schedule()
    assert [sorted(g) for g in batch.fresh_blocks] == [[0, 1]]  # never used: the runner zeroes them
    sched.postprocess(batch)
    sched.finish(a)
    b = make_seq("b", 8, first=50)
    sched.add(b)
    batch = sched.schedule()
    assert sorted(b.block_table) == [0, 1] and batch.fresh_blocks == [[]]


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_finishing_frees_every_block(prefix_caching):
    sched = make_scheduler(num_blocks=16, budget=16, prefix_caching=prefix_caching)
    seqs = [make_seq(f"s{i}", 6 + i, first=20 * i) for i in range(4)]
    for s in seqs:
        sched.add(s)
    for _ in range(5):
        step(sched)
    waiting = sched.waiting[0] if sched.waiting else None
    for s in seqs:
        sched.finish(s)
        assert s.status is Status.FINISHED
    assert not sched.has_work and waiting not in sched.waiting
    assert blocks_in_use(sched) == 0


def test_a_small_window_pool_under_pressure_always_makes_progress():
    # A global pool and a 4-block window pool (window 6), shared prefixes and
    # constant preemption: a waiting sequence holding a prefix hit it cannot
    # extend once starved the preempted sequences queued in front of it, and
    # the engine stepped on empty batches forever.
    blocks = BlockManager([64, 4], BLOCK, windows=[None, 6])
    sched = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=16, prefill_chunk_size=4)
    seqs = [make_seq(f"s{i}", 10 + 3 * (i % 4), first=i % 2) for i in range(8)]
    for seq in seqs:
        sched.add(seq)
    for _ in range(2000):
        if not sched.has_work:
            break
        batch = step(sched)
        assert not batch.empty, "a step scheduled nothing while work was waiting"
        for seq in list(sched.running):
            if len(seq.output_token_ids) >= 5:
                sched.finish(seq)
        for seq in batch.seqs:
            assert blocks.held_blocks(seq)[1] <= 3  # window 6 + one 4-token step
    assert not sched.has_work and sched.num_preemptions > 0
    assert blocks.num_free_blocks == blocks.num_blocks
