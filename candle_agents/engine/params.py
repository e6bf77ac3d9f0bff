"""Per-request sampling and stopping parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from candle_agents.engine.grammar import Grammar
from candle_agents.errors import ConfigError

# Below this a temperature is taken as 0 (greedy), as vLLM does.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class ReasoningControl:
    """How the engine follows a reasoning block (``<think>`` ... ``</think>``) in the output.

    While the block is open its tokens are counted (``Usage.reasoning_tokens``) and the
    request's grammar waits: it constrains what follows the block. After ``budget``
    reasoning tokens the engine writes ``close_ids`` itself. ``open_ids`` are written
    first, when the prompt leaves opening the block to the model but a grammar must
    know where the block ends (``open_at_start``: the prompt already opened it).
    """

    start: str
    end: str
    open_at_start: bool = False
    budget: int | None = None
    open_ids: tuple[int, ...] = ()
    close_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        if not self.start or not self.end:
            raise ConfigError("reasoning start and end markers must be non-empty", "reasoning")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ConfigError(f"reasoning budget={self.budget!r} must be >= 1", "reasoning")
        if self.budget is not None and not self.close_ids:
            raise ConfigError("a reasoning budget needs close_ids to end the block", "reasoning")


@dataclass
class GenerationParams:
    """What to sample and when to stop.

    ``temperature=0`` is greedy decoding. ``seed`` makes a sampled request
    reproducible whatever else shares its batch. ``stop`` strings are never
    part of the returned text. ``logit_bias`` adds to the logits of the given
    token ids before sampling (-100 bans, +100 forces). ``grammar`` constrains
    the output (JSON schema, Lark, regex); the request stops with
    finish_reason "stop" once it is complete.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None
    reasoning: ReasoningControl | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, (int, float)) and 0 < self.temperature < MIN_TEMPERATURE:
            # Dividing logits by a vanishing temperature overflows to inf and
            # NaN; the distribution it stands for is the greedy one anyway.
            self.temperature = 0.0
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens={self.max_tokens!r} must be >= 1", field="max_tokens")
        if not 0.0 <= self.temperature <= 100.0:
            raise ConfigError(
                f"temperature={self.temperature} must be in [0, 100]", field="temperature"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]", field="top_p")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(
                f"top_k={self.top_k!r} must be an int >= 0 (0 disables it)", field="top_k"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"min_p={self.min_p} must be in [0, 1]", field="min_p")
        if not 0.01 <= self.repetition_penalty <= 100.0:
            raise ConfigError(
                f"repetition_penalty={self.repetition_penalty} must be in [0.01, 100]",
                field="repetition_penalty",
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [-2, 2]", field=name)
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ConfigError(f"min_tokens={self.min_tokens!r} must be >= 0", field="min_tokens")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= 20:
            raise ConfigError(
                f"top_logprobs={self.top_logprobs!r} must be in [0, 20]", field="top_logprobs"
            )
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ConfigError("stop_token_ids must be non-negative ints", field="stop_token_ids")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError(f"seed={self.seed!r} must be an int", field="seed")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ConfigError(
                f"seed={self.seed} must fit in 64 bits: [-2**63, 2**64)", field="seed"
            )
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ConfigError(
                    f"logit_bias keys must be token ids (ints >= 0), got {token!r}",
                    field="logit_bias",
                )
            if not -100.0 <= bias <= 100.0:
                raise ConfigError(
                    f"logit_bias[{token}]={bias} must be in [-100, 100]", field="logit_bias"
                )
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise ConfigError(
                f"grammar must be a Grammar (Grammar.json_schema(...), .json_object(), "
                f".lark(...), .regex(...)), got {type(self.grammar).__name__}",
                field="grammar",
            )

        if self.reasoning is not None:
            if not isinstance(self.reasoning, ReasoningControl):
                raise ConfigError(
                    f"reasoning must be a ReasoningControl, got {type(self.reasoning).__name__}",
                    field="reasoning",
                )
            self.reasoning.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    @property
    def needs_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0
