"""OpenAI's Responses API and an agent loop with MCP servers as tools.

``ResponsesSession`` runs conversations in-process; ``ResponsesAPI`` is the
request-level API that ``candle-agents serve`` exposes at ``/v1/responses``.
"""

from candle_agents.responses.protocol import Response, ResponseEvent, ResponsesRequest
from candle_agents.responses.service import ResponsesAPI
from candle_agents.responses.session import (
    ConversationOptions,
    ConversationResult,
    ResponsesSession,
    ToolCallRecord,
)
from candle_agents.responses.store import ResponseStore

__all__ = [
    "ConversationOptions",
    "ConversationResult",
    "Response",
    "ResponseEvent",
    "ResponseStore",
    "ResponsesAPI",
    "ResponsesRequest",
    "ResponsesSession",
    "ToolCallRecord",
]
