"""Reasoning parsers: a reasoning model's thinking apart from its answer, whole or streamed.

``base`` (the interface and the shared streaming split), one module per
convention (``think``: ``<think>`` blocks; ``harmony``: gpt-oss channels) and
``registry`` (names, detection from the chat template).
"""

from candle_agents.openai.reasoning.base import ReasoningParser, ReasoningStep, ReasoningStream
from candle_agents.openai.reasoning.harmony import HarmonyReasoningParser
from candle_agents.openai.reasoning.registry import (
    REASONING_PARSERS,
    detect_reasoning_parser,
    get_reasoning_parser,
)
from candle_agents.openai.reasoning.think import ThinkReasoningParser

__all__ = [
    "REASONING_PARSERS",
    "HarmonyReasoningParser",
    "ReasoningParser",
    "ReasoningStep",
    "ReasoningStream",
    "ThinkReasoningParser",
    "detect_reasoning_parser",
    "get_reasoning_parser",
]
