"""The registry: tool-call formats by name, and which one a chat template calls for.

Adding a format is one new module (its ``ToolParser`` subclass, with ``matches_template`` if
templates can be recognised) and one entry in ``_FORMATS`` below.
"""

from __future__ import annotations

from candle_agents.errors import ConfigError
from candle_agents.openai.tool_parsers.base import ToolParser
from candle_agents.openai.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from candle_agents.openai.tool_parsers.gemma import GemmaToolParser
from candle_agents.openai.tool_parsers.granite import GraniteToolParser
from candle_agents.openai.tool_parsers.hermes import HermesToolParser
from candle_agents.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from candle_agents.openai.tool_parsers.mistral import MistralToolParser
from candle_agents.openai.tool_parsers.phi4_mini import Phi4MiniToolParser
from candle_agents.openai.tool_parsers.pythonic import PythonicToolParser
from candle_agents.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser

# Every format, in the order detect_tool_parser() asks them about a chat template: put a format
# before any whose template test could also match its templates (pythonic Llama templates also
# mention "ipython" and "parameters", which llama3_json looks for; Phi-4-mini's "<|tool|>"
# before Granite's "<|tool_call|>"). Newer formats come after the older ones, so that no
# template changes parser when a format is added.
_FORMATS: tuple[type[ToolParser], ...] = (
    MistralToolParser,
    PythonicToolParser,
    Llama3JsonToolParser,
    DeepSeekV3ToolParser,
    Qwen3CoderToolParser,
    Phi4MiniToolParser,
    GraniteToolParser,
    GemmaToolParser,
    HermesToolParser,
)

# Hermes is the ChatML convention and the default: SmolLM2's template has no tool support.
_DEFAULT: type[ToolParser] = HermesToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    cls.name: cls for cls in sorted(_FORMATS, key=lambda cls: cls.name)
}


def get_tool_parser(name: str) -> ToolParser:
    """A parser by name ("llama3-json" and other spellings with dashes/case accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in TOOL_PARSERS:
        known = ", ".join(sorted(TOOL_PARSERS))
        raise ConfigError(
            f"unknown tool parser {name!r}; known tool parsers: {known}", field="tool_parser"
        )
    return TOOL_PARSERS[key]()


def detect_tool_parser(chat_template: str | None) -> str:
    """The parser a chat template's tool convention calls for; "hermes" when it shows none."""
    template = chat_template or ""
    for cls in _FORMATS:
        if cls.matches_template(template):
            return cls.name
    return _DEFAULT.name
