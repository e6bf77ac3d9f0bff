"""Block manager: reference counts, prefix hits, LRU eviction, collisions."""

from __future__ import annotations

from candle_agents.engine.block_manager import BlockManager
from candle_agents.engine.params import GenerationParams
from candle_agents.engine.sequence import Sequence


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", list(tokens), GenerationParams(), frozenset(), 10_000, detokenizer=None)


def run_prefill(bm: BlockManager, s: Sequence) -> int:
    hit = bm.match_prefix(s)
    s.num_computed_tokens = hit
    assert bm.allocate(s, s.num_tokens - hit)
    s.num_computed_tokens = s.num_tokens
    bm.register_computed(s)
    return hit


def test_shared_prefix_is_reused_and_ref_counted():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))  # blocks: [0-3] [4-7] [8,9]
    assert run_prefill(bm, a) == 0
    b = seq([*range(8), 42, 43, 44])
    assert run_prefill(bm, b) == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.release(a)
    bm.release(b)
    assert bm.num_free_blocks == 8


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(num_blocks=8, block_size=4)
    run_prefill(bm, seq(list(range(8))))
    again = seq(list(range(8)))
    assert bm.match_prefix(again) == 4  # the second block holds the last token


def test_unreferenced_cached_blocks_are_evicted_oldest_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    old, new = seq([1, 2, 3]), seq([7, 8, 9])
    run_prefill(bm, old)
    bm.release(old)
    run_prefill(bm, new)
    bm.release(new)
    # Both prefixes are cached; a 6-token request needs 3 fresh blocks and
    # must take the never-cached tails and then the oldest cached block.
    big = seq([20, 21, 22, 23, 24, 25])
    run_prefill(bm, big)
    assert bm.match_prefix(seq([7, 8, 9])) == 2  # the newer prefix survived
    assert bm.match_prefix(seq([1, 2, 3])) == 0  # the older one was evicted


def test_a_hash_collision_is_not_a_hit(monkeypatch):
    bm = BlockManager(num_blocks=8, block_size=2)
    monkeypatch.setattr(bm, "_chain_hash", lambda parent, tokens: 1)  # everything collides
    run_prefill(bm, seq([1, 2, 3]))
    assert bm.match_prefix(seq([5, 6, 7])) == 0


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    run_prefill(bm, seq([1, 2, 3]))
    assert bm.match_prefix(seq([1, 2, 3])) == 0
