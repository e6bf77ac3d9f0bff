"""Errors in OpenAI's shape: an HTTP status and ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
from candle_agents.openai.protocol import ErrorInfo, ErrorResponse

R = TypeVar("R", bound=BaseModel)


class OpenAIError(CandleError):
    """An error the OpenAI layer reports to its caller, with what HTTP would say."""

    def __init__(
        self,
        message: str,
        status_code: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def to_dict(self) -> dict[str, Any]:
        return self.to_response().model_dump()

    @classmethod
    def from_exception(cls, exc: BaseException) -> OpenAIError:
        """Map any error of ours (or a pydantic ValidationError) to its OpenAI form."""
        if isinstance(exc, OpenAIError):
            return exc
        if isinstance(exc, ValidationError):
            return cls.from_validation_error(exc)
        if isinstance(exc, ConfigError):
            return cls(str(exc), 400, param=exc.field)
        if isinstance(exc, ContextLengthError):
            return cls(str(exc), 400, param="messages", code="context_length_exceeded")
        if isinstance(exc, TokenizationError):
            return cls(str(exc), 400, param="messages")
        if isinstance(exc, RequestCancelled):
            return cls(str(exc), 499, type="request_cancelled")
        if isinstance(exc, (GenerationError, DeviceError, ModelLoadError)):
            return cls(str(exc), 500, type="server_error")
        return cls(f"internal error: {exc!r}", 500, type="server_error")

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> OpenAIError:
        return cls.from_error_details(exc.errors(include_url=False))

    @classmethod
    def from_error_details(cls, errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
        """A 400 naming the first bad field of pydantic's (or FastAPI's) error list."""
        first = errors[0] if errors else {}
        param = _param_path(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        where = f"{param}: " if param else ""
        return cls(f"{where}{msg}", 400, param=param or None)


def _param_path(loc: tuple[Any, ...]) -> str:
    """("body", "messages", 0, "content") -> "messages[0].content"; union tags dropped."""
    parts: list[str] = []
    for item in loc:
        if item in ("body", "query", "path", "header") and not parts:
            continue  # where FastAPI found the value, not part of its name
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and (
            item in {"system", "user", "assistant", "tool", "developer"}
            or item.startswith(("function-", "literal[", "list[", "str", "int", "float"))
            or item[:1].isupper()
        ):
            continue  # pydantic's union member labels, not fields
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def parse_request(model: type[R], request: R | dict[str, Any]) -> R:
    """``request`` as a ``model``; a dict that does not validate is a 400 naming the field."""
    if isinstance(request, model):
        return request
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise OpenAIError.from_validation_error(exc) from exc
