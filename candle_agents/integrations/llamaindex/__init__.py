"""LlamaIndex LLM on the in-process engine: :class:`CandleLLM`.

``CandleLLM`` is a ``FunctionCallingLLM``: query engines, chat engines,
``FunctionAgent`` and structured outputs work with a local model and no
network. Requests go through :class:`~candle_agents.openai.OpenAIAdapter`, so
forced tool calls (``tool_required`` or a named ``tool_choice``) and
structured outputs are enforced by constrained decoding.

Modules: ``llm`` (CandleLLM) and ``messages`` (LlamaIndex <-> OpenAI messages and
responses).

Needs ``pip install "candle-agents[llamaindex]"``.
"""

from candle_agents.integrations._engine import DEFAULT_MODEL
from candle_agents.integrations.llamaindex.llm import CandleLLM
from candle_agents.integrations.llamaindex.messages import to_openai_messages

__all__ = ["DEFAULT_MODEL", "CandleLLM", "to_openai_messages"]
