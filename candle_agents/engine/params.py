"""Per-request sampling and stopping parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from candle_agents.errors import ConfigError


@dataclass
class GenerationParams:
    """What to sample and when to stop.

    ``temperature=0`` is greedy decoding. ``seed`` makes a sampled request
    reproducible whatever else shares its batch. ``stop`` strings are never
    part of the returned text.
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

    def __post_init__(self) -> None:
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
        if self.repetition_penalty <= 0.0:
            raise ConfigError(
                f"repetition_penalty={self.repetition_penalty} must be > 0",
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
