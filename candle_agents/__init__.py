"""candle-agents: a local LLM toolkit for agent builders.

Importing this package is cheap: the engine's names (and torch) load on first
use, so ``candle_agents.mcp`` or ``candle_agents.errors`` alone never import
torch. Servers and framework adapters live in optional subpackages.
"""

from typing import TYPE_CHECKING

from candle_agents._lazy import lazy_exports
from candle_agents.engine import __all__ as _engine_names
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

if TYPE_CHECKING:
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

# The engine package's own names (it resolves them lazily too).
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_engine_names, "candle_agents.engine"))
