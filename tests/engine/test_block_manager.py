"""Block manager: reference counts, prefix hits, LRU eviction, collisions."""

from __future__ import annotations

from candle_agents.engine.block_manager import DROPPED, BlockManager
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


# -- sliding-window groups ---------------------------------------------------------


def run_in_steps(bm: BlockManager, s: Sequence, step: int) -> list[list[int]]:
    """Compute ``s`` ``step`` tokens at a time; the blocks it holds per group after each step."""
    held = []
    while s.num_computed_tokens < s.num_tokens:
        n = min(step, s.num_tokens - s.num_computed_tokens)
        assert bm.allocate(s, n)
        s.num_computed_tokens += n
        bm.register_computed(s)
        bm.slide_windows(s, n)
        held.append(bm.held_blocks(s))
    return held


def test_a_window_group_holds_only_its_window():
    # window 6, blocks of 4: the next query at position p sees p-5..p, so at most
    # the blocks of the last 5 computed tokens and of one 4-token step are held.
    bm = BlockManager([32, 32], block_size=4, windows=[None, 6])
    s = seq(list(range(60)))
    held = run_in_steps(bm, s, step=4)
    assert [g for g, _ in held] == [-(-4 * (i + 1) // 4) for i in range(15)]  # global: all
    assert max(w for _, w in held) <= 3
    assert held[-1][1] == 2  # positions 55..59 span blocks 13 and 14
    assert s.block_tables[1][:13] == [DROPPED] * 13
    bm.release(s)
    assert bm.num_free_blocks == 64


def test_window_blocks_serve_prefix_hits_and_only_they_are_needed():
    bm = BlockManager([32, 32], block_size=4, windows=[None, 6])
    a = seq(list(range(30)))
    run_in_steps(bm, a, step=8)
    bm.release(a)
    b = seq([*range(30), 99])
    assert bm.match_prefix(b) == 28  # 7 full blocks; the last token is computed anew
    # The token at 28 sees 23..28: blocks 5 and 6 in the window group, all 7 globally.
    assert b.block_tables[1][:5] == [DROPPED] * 5
    assert all(x != DROPPED for x in b.block_tables[1][5:]) and len(b.block_tables[1]) == 7
    assert len(b.block_tables[0]) == 7 and DROPPED not in b.block_tables[0]
    b.num_computed_tokens = 28
    run_in_steps(bm, b, step=8)
    bm.release(b)
    assert bm.num_free_blocks == 64


def test_a_prefix_hit_stops_where_window_blocks_were_reused():
    bm = BlockManager([32, 4], block_size=4, windows=[None, 6])
    a = seq(list(range(30)))
    run_in_steps(bm, a, step=4)
    bm.release(a)
    # Another sequence takes every window block, so a's window blocks are gone,
    # while its global blocks are still cached.
    other = seq(list(range(100, 112)))
    assert bm.allocate(other, 12) and bm.allocate(seq(list(range(200, 204))), 4)
    assert bm.match_prefix(seq(list(range(30)))) == 0


def test_all_window_groups_drop_placeholders_once():
    # Every layer windowed (Mistral v0.1): one group, no global pool at all.
    bm = BlockManager(8, block_size=4, windows=[5])
    s = seq(list(range(40)))
    held = run_in_steps(bm, s, step=1)
    assert max(w for (w,) in held) <= 3
    bm.release(s)
    assert bm.num_free_blocks == 8
    assert bm.ref_counts == [0] * 8
