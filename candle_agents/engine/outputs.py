"""What callers receive: final results and streamed deltas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # completion tokens inside a reasoning block

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and, if asked, the top alternatives."""

    token_id: int
    token: str
    logprob: float
    top_logprobs: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class StreamDelta:
    """One step of a streamed request; the last one carries finish_reason and usage."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    stop_reason: str | int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GenerationResult:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None
    prompt_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_deltas(
        cls, request_id: str, deltas: list[StreamDelta], prompt_token_ids: list[int]
    ) -> GenerationResult:
        """The whole result of a request streamed as ``deltas`` (the last one finished)."""
        last = deltas[-1]
        has_lp = any(d.logprobs for d in deltas)
        return cls(
            request_id=request_id,
            text="".join(d.text for d in deltas),
            token_ids=[t for d in deltas for t in d.token_ids],
            finish_reason=last.finish_reason or "abort",
            usage=last.usage or Usage(),
            logprobs=[lp for d in deltas for lp in (d.logprobs or [])] if has_lp else None,
            stop_reason=last.stop_reason,
            prompt_token_ids=prompt_token_ids,
        )
