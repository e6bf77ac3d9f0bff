"""``<think>`` ... ``</think>`` before the answer: Qwen3, DeepSeek-R1 and its distills, SmolLM3.

Qwen3 and SmolLM3 templates take ``enable_thinking``; with it off they write an
empty block into the prompt. DeepSeek-R1's template opens the block in the
prompt, so the model's output starts inside it.
"""

from __future__ import annotations

from typing import Any

from candle_agents.openai.reasoning.base import ReasoningParser


class ThinkReasoningParser(ReasoningParser):
    name = "think"
    start = "<think>"
    end = "</think>"

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return cls.end in chat_template

    def template_kwargs(self, enabled: bool | None, effort: str | None) -> dict[str, Any]:
        return {} if enabled is None else {"enable_thinking": enabled}
