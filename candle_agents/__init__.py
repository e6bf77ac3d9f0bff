"""candle-agents: a local LLM toolkit for agent builders.

Importing this package loads only the engine's dependencies (torch,
tokenizers); servers and framework adapters live in optional subpackages.
"""

from candle_agents.engine import (
    Engine,
    EngineConfig,
    GenerationParams,
    GenerationResult,
    Grammar,
    StreamDelta,
    TokenLogprob,
    Usage,
)
from candle_agents.errors import (
    CandleError,
    ConfigError,
    ContextLengthError,
    DeviceError,
    GenerationError,
    ModelLoadError,
    RequestCancelled,
    TokenizationError,
)

__version__ = "0.1.0"

__all__ = [
    "CandleError",
    "ConfigError",
    "ContextLengthError",
    "DeviceError",
    "Engine",
    "EngineConfig",
    "GenerationError",
    "GenerationParams",
    "GenerationResult",
    "Grammar",
    "ModelLoadError",
    "RequestCancelled",
    "StreamDelta",
    "TokenLogprob",
    "TokenizationError",
    "Usage",
    "__version__",
]
