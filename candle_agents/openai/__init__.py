"""OpenAI's chat protocol on the engine: wire types, chat templates, tool calls,
structured output and :class:`OpenAIAdapter` for embedding without a server."""

from candle_agents.openai.adapter import OpenAIAdapter
from candle_agents.openai.errors import OpenAIError
from candle_agents.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from candle_agents.openai.tool_parsers import get_tool_parser

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionRequest",
    "CompletionResponse",
    "ModelList",
    "OpenAIAdapter",
    "OpenAIError",
    "get_tool_parser",
]
