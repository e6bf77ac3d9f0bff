"""The sampler on its own: draws follow the distribution, seeds are per request."""

from __future__ import annotations

import torch

from candle_agents import GenerationParams
from candle_agents.engine.sampler import Sampler
from candle_agents.engine.sequence import Sequence


def seq(params: GenerationParams) -> Sequence:
    s = Sequence("r", [1, 2, 3], params, frozenset(), 64, detokenizer=None)
    if params.seed is not None:
        s.generator = torch.Generator().manual_seed(params.seed)
    return s


def test_draws_follow_the_distribution_and_skip_zero_mass():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    rows = 20000
    logits = probs.log().expand(rows, -1).contiguous()
    params = GenerationParams(temperature=1.0)
    tokens = Sampler(torch.device("cpu"), seed=0)(logits, [seq(params)] * rows).token_ids
    freq = torch.bincount(torch.tensor(tokens), minlength=5).float() / rows
    assert freq[1] == 0 and freq[4] == 0  # zero mass, inside and at the end of the CDF
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.02)


def test_temperature_sharpens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(8000, -1).contiguous()
    sampler = Sampler(torch.device("cpu"), seed=1)

    def share_of_top(t: float) -> float:
        tokens = sampler(logits, [seq(GenerationParams(temperature=t))] * 8000).token_ids
        return tokens.count(0) / len(tokens)

    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, dim=0)[0].item()
    assert abs(share_of_top(0.5) - expected) < 0.02
    assert share_of_top(0.5) > share_of_top(2.0)


def test_a_seeded_row_does_not_depend_on_its_neighbours():
    logits = torch.randn(6, 100)
    seeded = GenerationParams(temperature=1.0, seed=7)

    def draws(position: int, batch: int) -> list[int]:
        sampler = Sampler(torch.device("cpu"))
        s = seq(seeded)
        out = []
        for _ in range(20):
            seqs = [seq(GenerationParams(temperature=1.5)) for _ in range(batch)]
            seqs[position] = s
            rows = logits[:batch].clone()
            rows[position] = logits[0]
            out.append(sampler(rows, seqs).token_ids[position])
        return out

    assert draws(0, 1) == draws(4, 6) == draws(2, 3)
