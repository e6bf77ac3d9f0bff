"""Errors in Anthropic's shape: a status and ``{"type": "error", "error": {type, message}}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from candle_agents.anthropic.protocol import ErrorDetail, ErrorResponse
from candle_agents.errors import CandleError
from candle_agents.openai.errors import OpenAIError

R = TypeVar("R", bound=BaseModel)

# Anthropic's error type for each status it uses.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class AnthropicError(CandleError):
    """An error the Messages API reports to its caller, with what HTTP would say."""

    def __init__(self, message: str, status_code: int = 400, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type or ERROR_TYPES.get(status_code, "api_error")

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(type=self.type, message=self.message))

    def to_dict(self) -> dict[str, Any]:
        return self.to_response().model_dump()

    @classmethod
    def from_exception(cls, exc: BaseException) -> AnthropicError:
        """Any error of ours (the chat layer's included) in Anthropic's form."""
        if isinstance(exc, AnthropicError):
            return exc
        if isinstance(exc, ValidationError):
            return cls.from_error_details(exc.errors(include_url=False))
        err = OpenAIError.from_exception(exc)
        if err.status_code == 503 and err.type == "server_overloaded":
            # The queue is full: Anthropic's "overloaded", which its clients retry.
            return cls(err.message, 529)
        if err.status_code >= 500:
            return cls(err.message, err.status_code, "api_error")
        return cls(err.message, err.status_code)

    @classmethod
    def from_error_details(
        cls, errors: Sequence[Mapping[str, Any]], body: Any = None
    ) -> AnthropicError:
        """A 400 naming the bad field (``messages.0.content.1.text: Field required``).

        Of several errors, the deepest is the most specific: with ``content`` a
        string or a list of blocks, the list's complaint beats "not a string".
        """
        if not errors:
            return cls("invalid request")
        first = max(errors, key=lambda e: len(e.get("loc", ())))
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "malformed JSON")
            return cls(f"the request body is not valid JSON ({detail}): send a JSON object")
        path = field_path(tuple(first.get("loc", ())), body)
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if not path:
            if body is None and first.get("type") == "missing":
                return cls("the request body is missing: send a JSON object")
            return cls(f"request body: {msg}")
        return cls(f"{path}: {msg}")


def field_path(loc: tuple[Any, ...], body: Any) -> str:
    """pydantic's error location as Anthropic names fields, walking the request body.

    The body tells field names from pydantic's union labels: a label is a name the
    data has no key for (``str``, ``list[...]``), or a block's own ``type`` value
    where a tagged union picked its member.
    """
    parts: list[str] = []
    data = body
    items = list(loc)
    if items and items[0] in ("body", "query", "header"):
        items = items[1:]
    tagged: int | None = None  # id() of the dict whose tag label was already skipped
    for i, item in enumerate(items):
        last = i == len(items) - 1
        if isinstance(item, int):
            parts.append(str(item))
            data = data[item] if isinstance(data, list) and 0 <= item < len(data) else None
        elif isinstance(data, dict):
            if not last and data.get("type") == item and tagged != id(data):
                tagged = id(data)  # the union's tag, not a field
                continue
            if item in data or last:
                parts.append(str(item))
                data = data.get(item)
        elif data is None:
            parts.append(str(item))  # lost track of the body: better too much than nothing
        # else: a union label over a list or a scalar
    return ".".join(parts)


def parse_request(model: type[R], request: R | Mapping[str, Any]) -> R:
    """``request`` as a ``model``; a mapping that does not validate is a 400 naming the field."""
    if isinstance(request, model):
        return request
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise AnthropicError.from_error_details(exc.errors(include_url=False), request) from exc
