"""Engine counters read by metrics endpoints and benchmarks."""

from __future__ import annotations

from candle_agents.engine.outputs import Usage
from candle_agents.engine.sequence import Sequence


class EngineStats:
    """Totals since the engine started (written by the engine thread; read lock-free)."""

    def __init__(self) -> None:
        self.steps = 0
        self.step_time = 0.0  # whole steps: scheduling, forward, sampling, detokenizing
        self.forward_time = 0.0  # the model's forward pass alone
        self.tokens_computed = 0
        self.tokens_generated = 0
        self.requests_finished = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.time_to_first_token = 0.0  # summed over finished requests

    def record_step(self, computed: int, generated: int, seconds: float) -> None:
        self.steps += 1
        self.step_time += seconds
        self.tokens_computed += computed
        self.tokens_generated += generated

    def record_finish(self, seq: Sequence, usage: Usage) -> None:
        self.requests_finished += 1
        if seq.first_token_time is not None:
            self.time_to_first_token += seq.first_token_time - seq.arrival_time
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.cached_tokens
