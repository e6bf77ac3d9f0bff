"""ChatCandle's errors: each is both our OpenAIError (status_code, code, param) and
LangChain's standard model error, so agents and middleware that catch LangChain's types
(for instance the summarization middleware's ContextOverflowError) handle them."""

from __future__ import annotations

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelTimeoutError,
)

from candle_agents.errors import CandleError
from candle_agents.openai import OpenAIError

__all__ = [
    "CandleAPIError",
    "CandleContextOverflowError",
    "CandleInvalidRequestError",
    "CandleModelNotFoundError",
    "CandleTimeoutError",
]


class CandleInvalidRequestError(OpenAIError, ModelInvalidRequestError):
    """The request was refused (HTTP 400 in the server): bad parameters or messages."""


class CandleContextOverflowError(OpenAIError, ContextOverflowError):
    """The prompt does not fit the engine's ``max_model_len``."""


class CandleModelNotFoundError(OpenAIError, ModelNotFoundError):
    """The request named a model the engine does not serve."""


class CandleAPIError(OpenAIError, ModelAPIError):
    """The engine failed or is overloaded (HTTP 5xx in the server); retrying may help."""


class CandleTimeoutError(CandleError, ModelTimeoutError, TimeoutError):
    """No output arrived within ``timeout`` seconds; the request was aborted."""


def as_langchain_error(exc: OpenAIError) -> OpenAIError:
    """``exc`` as the class that also carries LangChain's standard error type."""
    if isinstance(exc, (CandleInvalidRequestError, CandleContextOverflowError)):
        return exc
    if exc.code == "context_length_exceeded":
        cls: type[OpenAIError] = CandleContextOverflowError
    elif exc.status_code == 404:
        cls = CandleModelNotFoundError
    elif exc.status_code >= 500:
        cls = CandleAPIError
    elif 400 <= exc.status_code < 499:
        cls = CandleInvalidRequestError
    else:  # 499: cancelled by the caller
        return exc
    return cls(exc.message, exc.status_code, exc.type, exc.param, exc.code)
