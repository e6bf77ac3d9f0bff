"""The paged-attention inference engine."""

from candle_agents.engine.config import EngineConfig
from candle_agents.engine.engine import Engine
from candle_agents.engine.grammar import Grammar
from candle_agents.engine.outputs import GenerationResult, StreamDelta, TokenLogprob, Usage
from candle_agents.engine.params import GenerationParams

__all__ = [
    "Engine",
    "EngineConfig",
    "GenerationParams",
    "GenerationResult",
    "Grammar",
    "StreamDelta",
    "TokenLogprob",
    "Usage",
]
