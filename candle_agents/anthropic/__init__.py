"""Anthropic's Messages API on the chat pipeline: wire types, the translation to and from
chat requests, stream events, and :class:`AnthropicAdapter` for embedding without a server."""

from candle_agents.anthropic.adapter import AnthropicAdapter
from candle_agents.anthropic.errors import AnthropicError
from candle_agents.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    StreamEvent,
    TokenCount,
)

__all__ = [
    "AnthropicAdapter",
    "AnthropicError",
    "CountTokensRequest",
    "Message",
    "MessagesRequest",
    "StreamEvent",
    "TokenCount",
]
