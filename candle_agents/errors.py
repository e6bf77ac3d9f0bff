"""One error hierarchy for the whole toolkit.

Every message names what was wrong and what to do about it; adapters map these
to their own formats (OpenAI error JSON over HTTP, LangChain exceptions).
"""

from __future__ import annotations


class CandleError(Exception):
    """Base class of every error raised by candle-agents."""


class ConfigError(CandleError, ValueError):
    """An invalid configuration or request parameter; ``field`` names it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelLoadError(CandleError):
    """A model could not be found or loaded."""


class TokenizationError(CandleError, ValueError):
    """A prompt could not be tokenized or is too long for the model."""


class ContextLengthError(TokenizationError):
    """A prompt leaves no room in the model's context: ``num_tokens`` against ``limit``."""

    def __init__(self, message: str, num_tokens: int, limit: int) -> None:
        super().__init__(message)
        self.num_tokens = num_tokens
        self.limit = limit


class GenerationError(CandleError):
    """Generation failed inside the engine."""


class DeviceError(CandleError):
    """The requested device is unknown or unavailable."""


class RequestCancelled(CandleError):
    """The request was aborted before it finished."""
