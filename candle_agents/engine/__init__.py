"""The paged-attention inference engine.

Its public names load on first use: importing a light submodule (config,
params, errors) does not start torch's import.
"""

from typing import TYPE_CHECKING

from candle_agents._lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Engine": "candle_agents.engine.engine",
        "EngineConfig": "candle_agents.engine.config",
        "GenerationParams": "candle_agents.engine.params",
        "GenerationResult": "candle_agents.engine.outputs",
        "Grammar": "candle_agents.engine.grammar",
        "StreamDelta": "candle_agents.engine.outputs",
        "TokenLogprob": "candle_agents.engine.outputs",
        "Usage": "candle_agents.engine.outputs",
    },
)
