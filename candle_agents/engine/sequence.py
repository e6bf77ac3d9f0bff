"""A request's state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from candle_agents.engine.params import GenerationParams

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from candle_agents.engine.detokenizer import IncrementalDetokenizer


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request: its tokens, its progress and where its KV cache lives.

    ``num_computed_tokens`` counts tokens whose KV is in the cache. Each step
    brings it closer to ``num_tokens``; when it reaches it, a token is sampled.
    Preemption resets it to 0 and frees ``block_tables`` (one per KV group,
    see ``block_manager``); outputs are kept, so the request resumes where it
    was (and ``matcher``, which has consumed exactly the outputs, stays valid).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: GenerationParams
    eos_token_ids: frozenset[int]
    max_total_tokens: int
    detokenizer: IncrementalDetokenizer
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    # One block table per KV group (see block_manager); empty while it holds no blocks.
    block_tables: list[list[int]] = field(default_factory=list)
    num_hashed_blocks: int = 0
    block_hashes: list[int] = field(default_factory=list)
    cached_tokens: int | None = None  # prefix-cache hit of the first scheduling
    num_preemptions: int = 0
    generator: torch.Generator | None = None
    matcher: LLMatcher | None = None  # the grammar's state, for constrained requests
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # Reasoning (params.reasoning): "pending" until the block opens or the output shows
    # there is none, "open" inside it, "done" after. The grammar's matcher waits in
    # ``deferred_matcher`` until the block is done; ``forced`` tokens replace samples.
    reasoning_state: str | None = None
    reasoning_tokens: int = 0
    reasoning_from: int = 0  # where in the decoded text the end marker is looked for
    forced: list[int] = field(default_factory=list)
    deferred_matcher: LLMatcher | None = None

    @property
    def block_table(self) -> list[int]:
        """The first group's block table (the only group of most models)."""
        return self.block_tables[0] if self.block_tables else []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED
