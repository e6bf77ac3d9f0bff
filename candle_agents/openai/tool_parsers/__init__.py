"""Tool-call parsers: read the calls a model writes in its own markup, whole or streamed.

Layout: ``calls`` (public result types), ``json_reader`` (incremental JSON and call objects),
``streams`` (``ToolCallStream`` and the shared stream shapes), ``grammar`` (prompt, rendering and
lark helpers), ``base`` (the ``ToolParser`` interface and shared policies), one module per
format (``hermes``, ``mistral``, ``llama3_json``, ``pythonic``, ``qwen3_coder``, ``deepseek_v3``,
``phi4_mini``, ``granite``, ``gemma``) and ``registry`` (names, detection).
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
from candle_agents.openai.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from candle_agents.openai.tool_parsers.gemma import GemmaToolParser
from candle_agents.openai.tool_parsers.granite import GraniteToolParser
from candle_agents.openai.tool_parsers.hermes import HermesToolParser
from candle_agents.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from candle_agents.openai.tool_parsers.mistral import MistralToolParser
from candle_agents.openai.tool_parsers.phi4_mini import Phi4MiniToolParser
from candle_agents.openai.tool_parsers.pythonic import PythonicToolParser
from candle_agents.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser
from candle_agents.openai.tool_parsers.registry import (
    TOOL_PARSERS,
    detect_tool_parser,
    get_tool_parser,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream

__all__ = [
    "TOOL_PARSERS",
    "DeepSeekV3ToolParser",
    "GemmaToolParser",
    "GraniteToolParser",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "ParsedMessage",
    "Phi4MiniToolParser",
    "PythonicToolParser",
    "Qwen3CoderToolParser",
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
