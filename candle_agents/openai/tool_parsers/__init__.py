"""Tool-call parsers: read the calls a model writes in its own markup, whole or streamed.

Layout: ``calls`` (public result types), ``json_reader`` (incremental JSON and call objects),
``streams`` (``ToolCallStream`` and the shared stream shapes), ``grammar`` (prompt, rendering and
lark helpers), ``base`` (the ``ToolParser`` interface and shared policies), one module per
format (``hermes``, ``mistral``, ``llama3_json``, ``pythonic``) and ``registry`` (names, detection).
"""

from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.calls import (
    ParsedMessage,
    StreamStep,
    ToolCall,
    ToolCallDelta,
    make_call_id,
    merge_steps,
)
from candle_agents.openai.tool_parsers.hermes import HermesToolParser
from candle_agents.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from candle_agents.openai.tool_parsers.mistral import MistralToolParser
from candle_agents.openai.tool_parsers.pythonic import PythonicToolParser
from candle_agents.openai.tool_parsers.registry import (
    TOOL_PARSERS,
    detect_tool_parser,
    get_tool_parser,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream

__all__ = [
    "TOOL_PARSERS",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "ParsedMessage",
    "PythonicToolParser",
    "StreamStep",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStream",
    "ToolParser",
    "detect_tool_parser",
    "get_tool_parser",
    "make_call_id",
    "merge_steps",
]
