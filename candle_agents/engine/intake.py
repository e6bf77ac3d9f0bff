"""Checking a request on the caller's thread and turning it into a Sequence.

Everything that can be wrong with a request (its params, an empty or too long
prompt, token ids or a logit bias outside the vocabulary, a grammar that does
not compile) fails here, as a typed error in the caller's thread, before
anything is queued.
"""

from __future__ import annotations

import uuid

import torch

from candle_agents.engine.detokenizer import IncrementalDetokenizer
from candle_agents.engine.grammar import LazyGrammarCompiler
from candle_agents.engine.params import GenerationParams
from candle_agents.engine.sequence import Sequence
from candle_agents.engine.tokenizer import TextTokenizer
from candle_agents.errors import ConfigError, ContextLengthError, TokenizationError

Prompt = str | list[int]


class Intake:
    """Builds validated Sequences for one engine's tokenizer, vocabulary and context."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        eos_token_ids: frozenset[int],
        vocab_size: int,
        max_model_len: int,
        device: torch.device,
        grammars: LazyGrammarCompiler,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.device = device
        self.grammars = grammars

    def sequence(
        self, prompt: Prompt, params: GenerationParams | None, request_id: str | None
    ) -> Sequence:
        """A new Sequence for ``prompt``; ConfigError or TokenizationError when it is bad."""
        params = params or GenerationParams()
        params.validate()
        ids = self.prompt_ids(prompt)
        if len(ids) >= self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens but this engine's max_model_len is "
                f"{self.max_model_len} (prompt plus at least one new token): shorten it",
                num_tokens=len(ids),
                limit=self.max_model_len,
            )
        bad = [t for t in params.logit_bias if t >= self.vocab_size]
        if bad:
            raise ConfigError(
                f"logit_bias names token id {bad[0]}, outside the vocabulary "
                f"[0, {self.vocab_size})",
                field="logit_bias",
            )
        seq = Sequence(
            request_id=request_id or f"req-{uuid.uuid4().hex[:16]}",
            prompt_token_ids=ids,
            params=params,
            eos_token_ids=self.eos_token_ids,
            max_total_tokens=min(self.max_model_len, len(ids) + params.max_tokens),
            detokenizer=IncrementalDetokenizer(
                self.tokenizer.tokenizer,
                params.stop,
                params.skip_special_tokens,
                self.tokenizer.byte_token_ids,
            ),
        )
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if params.grammar is not None:
            # Compiled (or found in the cache) here, so a bad grammar fails in
            # the caller's thread and nothing is queued.
            seq.matcher = self.grammars.get().compile(params.grammar)
        if params.reasoning is not None:
            self._start_reasoning(seq, params)
        return seq

    def _start_reasoning(self, seq: Sequence, params: GenerationParams) -> None:
        control = params.reasoning
        bad = [t for t in (*control.open_ids, *control.close_ids) if not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(
                f"reasoning token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})",
                field="reasoning",
            )
        if params.grammar is not None and not control.open_at_start and not control.open_ids:
            # Undecided, the first tokens would be neither the block's nor the grammar's.
            raise ConfigError(
                "a grammar after a reasoning block the prompt does not open needs open_ids "
                "(the tokens that open the block)",
                field="reasoning",
            )
        seq.reasoning_state = "open" if control.open_at_start else "pending"
        seq.forced = list(control.open_ids)
        # The grammar constrains what follows the block: it waits until then.
        seq.deferred_matcher, seq.matcher = seq.matcher, None

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The prompt's ids: a str encoded, or a list of ids checked against the vocabulary."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise TokenizationError(
                    f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})"
                )
        else:
            raise TokenizationError(
                f"prompt must be a str or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise TokenizationError("the prompt is empty: give at least one token")
        return ids
