"""Batched sampling: penalties, grammars, temperature, top-k/top-p/min-p, seeds, logprobs.

Rows are processed together wherever their parameters allow; work that only
some rows need (penalties, grammar masks, seeded draws, logprobs) touches only
those rows.
A seeded request draws from its own generator, one uniform number per token,
so its text does not depend on what else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from candle_agents.engine.grammar import TokenMasks, apply_token_masks
from candle_agents.engine.sequence import Sequence


@dataclass
class SampleOutput:
    token_ids: list[int]
    # Per row: (chosen logprob, [(token_id, logprob), ...]) or None when not asked for.
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


class Sampler:
    def __init__(self, device: torch.device, seed: int | None = None) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    @torch.inference_mode()
    def __call__(
        self, logits: torch.Tensor, seqs: list[Sequence], masks: TokenMasks | None = None
    ) -> SampleOutput:
        """``logits``: float32 [len(seqs), vocab], the sampler's to modify in place.

        ``masks`` holds one row per sequence with a grammar matcher, in order.
        Logprobs are those of the raw distribution, before any of this.
        """
        n = len(seqs)
        want_lp = [i for i, s in enumerate(seqs) if s.params.needs_logprobs]
        raw_logprobs = torch.log_softmax(logits[want_lp], dim=-1) if want_lp else None

        logits = self._apply_penalties(logits, seqs)
        self._apply_logit_bias(logits, seqs)
        logits = self._block_early_stop(logits, seqs)
        if masks is not None:
            self._apply_grammars(logits, seqs, masks)

        temps = [s.params.temperature for s in seqs]
        greedy_rows = [i for i, t in enumerate(temps) if t == 0.0]
        sampled_rows = [i for i, t in enumerate(temps) if t > 0.0]
        tokens = torch.empty(n, dtype=torch.long, device=logits.device)
        if greedy_rows:
            if len(greedy_rows) == n:
                tokens = logits.argmax(dim=-1)
            else:
                tokens[greedy_rows] = logits[greedy_rows].argmax(dim=-1)
        if sampled_rows:
            sub = [seqs[i] for i in sampled_rows]
            tokens[sampled_rows] = self._sample(logits[sampled_rows], sub)

        token_list = tokens.tolist()
        lp_out: list[tuple[float, list[tuple[int, float]]] | None] = [None] * n
        if raw_logprobs is not None:
            chosen = raw_logprobs.gather(1, tokens[want_lp, None]).squeeze(1).tolist()
            k = max(seqs[i].params.top_logprobs for i in want_lp)
            top_v, top_i = (
                raw_logprobs.topk(k, dim=-1) if k else (raw_logprobs[:, :0], raw_logprobs[:, :0])
            )
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for row, i in enumerate(want_lp):
                kk = seqs[i].params.top_logprobs
                alts = list(zip(top_i[row][:kk], top_v[row][:kk]))
                lp_out[i] = (chosen[row], alts)
        return SampleOutput(token_list, lp_out)

    # -- logits processors ------------------------------------------------------------

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, s in enumerate(seqs) if s.params.needs_penalties]
        if not rows:
            return logits
        vocab = logits.shape[1]
        for i in rows:
            p = seqs[i].params
            row = logits[i]
            out_ids = torch.tensor(seqs[i].output_token_ids, dtype=torch.long, device=row.device)
            out_ids = out_ids[out_ids < vocab]
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(seqs[i].token_ids(), dtype=torch.long, device=row.device)
                seen = seen[seen < vocab].unique()
                vals = row[seen]
                row[seen] = torch.where(
                    vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
                )
            if out_ids.numel() and (p.frequency_penalty or p.presence_penalty):
                counts = torch.zeros(vocab, dtype=row.dtype, device=row.device)
                counts.scatter_add_(0, out_ids, torch.ones_like(out_ids, dtype=row.dtype))
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(
                    row.dtype
                )
        return logits

    def _apply_logit_bias(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for i, s in enumerate(seqs):
            for token, bias in s.params.logit_bias.items():
                rows.append(i)
                cols.append(token)
                vals.append(bias)
        if rows:
            logits[rows, cols] += torch.tensor(vals, dtype=logits.dtype, device=logits.device)

    def _block_early_stop(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Forbid end-of-sequence tokens until ``min_tokens`` (or always, with ignore_eos)."""
        rows: list[int] = []
        cols: list[int] = []
        vocab = logits.shape[1]
        for i, s in enumerate(seqs):
            p = s.params
            banned: set[int] = set()
            if p.ignore_eos or len(s.output_token_ids) < p.min_tokens:
                banned |= s.eos_token_ids
            if len(s.output_token_ids) < p.min_tokens:
                banned |= set(p.stop_token_ids)
            for t in banned:
                if t < vocab:
                    rows.append(i)
                    cols.append(t)
        if not rows:
            return logits
        logits[rows, cols] = float("-inf")
        return logits

    def _apply_grammars(
        self, logits: torch.Tensor, seqs: list[Sequence], masks: TokenMasks
    ) -> None:
        rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if len(rows) != masks.bitmask.shape[0]:
            raise RuntimeError(f"{masks.bitmask.shape[0]} grammar masks for {len(rows)} rows")
        if not rows:
            return
        apply_token_masks(logits, rows, masks)
        # A row left with no token at all would sample garbage. Only two things
        # can do that: the grammar allows nothing, or min_tokens / ignore_eos
        # forbade the only tokens it allows (EOS, stop tokens). Check just those
        # rows; where it happened the grammar wins, its tokens equally likely
        # (or EOS where it allows none: the request then ends).
        empty = (masks.bitmask == 0).all(dim=1).tolist()
        suspects = [
            j
            for j, i in enumerate(rows)
            if empty[j]
            or seqs[i].params.ignore_eos
            or len(seqs[i].output_token_ids) < seqs[i].params.min_tokens
        ]
        if not suspects:
            return
        best = logits[[rows[j] for j in suspects]].amax(dim=-1).tolist()
        for j, b in zip(suspects, best):
            if b != float("-inf"):
                continue
            i = rows[j]
            row = torch.zeros_like(logits[i : i + 1])
            if empty[j]:
                row[0, [t for t in seqs[i].eos_token_ids if t < row.shape[1]]] = 1e9
            else:
                apply_token_masks(row, [0], masks._replace(bitmask=masks.bitmask[j : j + 1]))
            logits[i] = row[0]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temps = torch.tensor(
            [s.params.temperature for s in seqs], dtype=logits.dtype, device=logits.device
        )
        logits = logits / temps[:, None]
        top_ks = [s.params.top_k for s in seqs]
        top_ps = [s.params.top_p for s in seqs]
        if any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps):
            logits = _top_k_top_p(logits, top_ks, top_ps)
        probs = torch.softmax(logits, dim=-1)
        min_ps = [s.params.min_p for s in seqs]
        if any(m > 0 for m in min_ps):
            m = torch.tensor(min_ps, dtype=probs.dtype, device=probs.device)
            floor = probs.max(dim=-1, keepdim=True).values * m[:, None]
            probs = probs.masked_fill(probs < floor, 0.0)
        # Inverse CDF: one uniform per row, looked up in the cumulative mass.
        # (An exponential race over the whole vocabulary costs ~30 ms a step at
        # batch 32 on CPU, for the noise alone; this costs ~1 ms.)
        u = torch.empty(len(seqs), dtype=probs.dtype, device=probs.device)
        unseeded = [i for i, s in enumerate(seqs) if s.generator is None]
        if unseeded:
            u[unseeded] = torch.rand(
                len(unseeded), dtype=probs.dtype, device=probs.device, generator=self.generator
            )
        for i, s in enumerate(seqs):
            if s.generator is not None:
                u[i] = torch.rand(1, dtype=probs.dtype, device=probs.device, generator=s.generator)
        cdf = probs.cumsum(dim=-1)
        total = cdf[:, -1:]
        # Strictly below the total, so the pick is a token with mass; right=True
        # skips tokens of zero mass (a flat stretch of the CDF).
        target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _top_k_top_p(logits: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=logits.device)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= k[:, None]
    p = torch.tensor(top_ps, dtype=logits.dtype, device=logits.device)
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # Keep the smallest set whose mass reaches p: a token goes if the mass before it does.
    before = probs.cumsum(dim=-1) - probs
    drop |= before >= p[:, None]
    drop[:, 0] = False  # the most likely token always stays (top_p may round to 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
