"""LangChain chat model on the in-process engine: :class:`ChatCandle`.

``ChatCandle`` is a ``BaseChatModel`` that sends OpenAI-shaped chat requests to
:class:`~candle_agents.openai.OpenAIAdapter`, so tool calls, forced tool choice and
structured output are enforced by constrained decoding, as in the HTTP server.

Sync methods (``invoke``, ``stream``, ``batch``) run on the process's background
event loop (``candle_agents._loop``), so they also work where a loop is already
running (Jupyter); async methods (``ainvoke``, ``astream``, ``abatch``) await the
engine on the caller's loop. Concurrent calls are batched by the engine.

Modules: ``chat_model`` (ChatCandle), ``messages`` (LangChain <-> OpenAI messages and
results), ``tools`` (tools and output schemas in OpenAI's form), ``errors``.

Needs ``pip install "candle-agents[langchain]"``.
"""

from candle_agents.integrations._engine import DEFAULT_MODEL
from candle_agents.integrations.langchain.chat_model import ChatCandle
from candle_agents.integrations.langchain.errors import (
    CandleAPIError,
    CandleContextOverflowError,
    CandleInvalidRequestError,
    CandleModelNotFoundError,
    CandleTimeoutError,
)
from candle_agents.integrations.langchain.messages import PROVIDER, convert_messages

__all__ = [
    "DEFAULT_MODEL",
    "PROVIDER",
    "CandleAPIError",
    "CandleContextOverflowError",
    "CandleInvalidRequestError",
    "CandleModelNotFoundError",
    "CandleTimeoutError",
    "ChatCandle",
    "convert_messages",
]
