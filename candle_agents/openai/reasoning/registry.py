"""Reasoning parsers by name, and which one a chat template calls for.

A new convention is one module with a ``ReasoningParser`` subclass and one
entry in ``_FORMATS``.
"""

from __future__ import annotations

from candle_agents.errors import ConfigError
from candle_agents.openai.reasoning.base import ReasoningParser
from candle_agents.openai.reasoning.harmony import HarmonyReasoningParser
from candle_agents.openai.reasoning.think import ThinkReasoningParser

# In the order detect_reasoning_parser() asks them about a template.
_FORMATS: tuple[type[ReasoningParser], ...] = (HarmonyReasoningParser, ThinkReasoningParser)

# Names people use for the same conventions (vLLM's parser names among them).
_ALIASES = {
    "qwen3": "think",
    "deepseek_r1": "think",
    "smollm3": "think",
    "harmony": "gpt_oss",
    "openai_gptoss": "gpt_oss",
}

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {cls.name: cls for cls in _FORMATS}


def get_reasoning_parser(name: str) -> ReasoningParser | None:
    """A parser by name ("none" for no reasoning parsing)."""
    key = str(name).strip().lower().replace("-", "_")
    if key == "none":
        return None
    key = _ALIASES.get(key, key)
    if key not in REASONING_PARSERS:
        known = ", ".join(sorted({*REASONING_PARSERS, *_ALIASES, "none"}))
        raise ConfigError(
            f"unknown reasoning parser {name!r}; known reasoning parsers: {known}",
            field="reasoning_parser",
        )
    return REASONING_PARSERS[key]()


def detect_reasoning_parser(chat_template: str | None) -> str:
    """The parser a chat template's reasoning convention calls for; "none" without one."""
    for cls in _FORMATS:
        if cls.matches_template(chat_template or ""):
            return cls.name
    return "none"
