"""gpt-oss (OpenAI's harmony format): reasoning in the analysis channel, then the final one.

The model writes ``<|channel|>analysis<|message|>`` reasoning ``<|end|>``, then
``<|start|>assistant<|channel|>final<|message|>`` and the answer. The markers are
special tokens, kept in the text for this parser. The template reads
``reasoning_effort`` (low, medium, high).
"""

from __future__ import annotations

from typing import Any

from candle_agents.openai.reasoning.base import ReasoningParser


class HarmonyReasoningParser(ReasoningParser):
    name = "gpt_oss"
    start = "<|channel|>analysis<|message|>"
    end = "<|end|>"
    # After the block the model writes "<|start|>assistant" and this header; without
    # a block (the prompt ends with "<|start|>assistant") just the header.
    content_start = "<|channel|>final<|message|>"
    needs_special_tokens = True

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        return "<|channel|>" in chat_template

    @property
    def open_text(self) -> str:
        return self.start

    @property
    def close_text(self) -> str:
        return self.end + "<|start|>assistant" + self.content_start

    def off_suffix(self, prompt: str) -> str:
        # gpt-oss always reasons; an empty analysis message is how to skip it.
        return self.start + self.close_text

    def template_kwargs(self, enabled: bool | None, effort: str | None) -> dict[str, Any]:
        return {"reasoning_effort": effort} if effort in ("low", "medium", "high") else {}
