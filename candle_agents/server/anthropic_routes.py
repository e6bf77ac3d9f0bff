"""``/v1/messages``: Anthropic's Messages API over HTTP, with its SSE events when streaming.

Errors on these routes, request validation included, take Anthropic's shape;
the API key is read from ``x-api-key`` (what Anthropic's clients send) or
``Authorization: Bearer``. The ``anthropic-version`` and ``anthropic-beta``
headers are accepted and not needed: there is one version of this API here.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from candle_agents.anthropic import (
    AnthropicAdapter,
    AnthropicError,
    CountTokensRequest,
    MessagesRequest,
    TokenCount,
)
from candle_agents.anthropic.protocol import ContentBlockDeltaEvent, ErrorResponse, Message
from candle_agents.errors import CandleError
from candle_agents.server.common import close_stream, unless_disconnected
from candle_agents.server.metrics import ServerMetrics, StreamTimer

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the message names the field)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    529: {"model": ErrorResponse, "description": "Too many requests waiting; retry later"},
}


def is_anthropic_path(path: str) -> bool:
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def add_anthropic_routes(app: FastAPI, api: AnthropicAdapter, metrics: ServerMetrics) -> None:
    router = APIRouter(route_class=_AnthropicRoute, tags=["Anthropic"])

    @router.post(
        MESSAGES_PATH,
        response_model=None,
        responses={
            200: {
                "model": Message,
                "description": 'The message, or with `"stream": true` server-sent events '
                "(`event: <type>` and `data: {event}`) from message_start to message_stop",
                "content": {"text/event-stream": {}},
            },
            **_ERROR_DOCS,
        },
    )
    async def create_message(body: MessagesRequest, request: Request) -> Response:
        """Create a message (Anthropic's `POST /v1/messages`)."""
        if body.stream:
            events = api.messages_stream(body)  # request errors raise here, before any event
            return _event_stream(events, metrics.stream_timer(MESSAGES_PATH, time.perf_counter()))
        result = await unless_disconnected(request, api.messages(body))
        if result is None:  # the client hung up; nobody reads this
            return Response(status_code=499)
        return Response(result.model_dump_json(), media_type="application/json")

    @router.post(COUNT_TOKENS_PATH, response_model=TokenCount, responses=_ERROR_DOCS)
    async def count_tokens(body: CountTokensRequest) -> TokenCount:
        """Count a request's input tokens (Anthropic's `POST /v1/messages/count_tokens`)."""
        return await api.count_tokens(body)

    app.include_router(router)


def _event_stream(events: AsyncIterator[Any], timer: StreamTimer) -> EventSourceResponse:
    """SSE in Anthropic's framing: ``event: <type>`` and ``data: <json>`` per event."""

    async def frames() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in events:
                if isinstance(event, ContentBlockDeltaEvent):
                    timer.observe((0,))
                yield {"event": event.type, "data": event.model_dump_json()}
        except Exception as exc:
            # The 200 is sent: report the failure as an `error` event, which the official
            # clients raise as an APIStatusError.
            yield {"event": "error", "data": json.dumps(_as_error(exc).to_dict())}
        finally:
            await close_stream(events)

    # Pings while the prompt is prefilled keep proxies and clients from timing out; in
    # Anthropic's own form, which clients skip.
    return EventSourceResponse(
        frames(),
        sep="\n",
        ping_message_factory=lambda: ServerSentEvent(json.dumps({"type": "ping"}), event="ping"),
        background=BackgroundTask(close_stream, events),
    )


class _AnthropicRoute(APIRoute):
    """A route whose errors, request validation included, are in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                err = AnthropicError.from_error_details(exc.errors(), exc.body)
            except HTTPException as exc:  # FastAPI's own refusals (a body it cannot decode)
                err = AnthropicError(f"request body: {exc.detail}", exc.status_code)
            except Exception as exc:
                err = _as_error(exc)
                if err.status_code == 499 and not request.app.state.engine.is_alive:
                    # "Cancelled" because the engine is gone: the service is down.
                    err = AnthropicError(
                        "the engine has shut down; this server cannot generate any more", 503
                    )
            return JSONResponse(err.to_dict(), status_code=err.status_code)

        return handle


def _as_error(exc: BaseException) -> AnthropicError:
    if isinstance(exc, CandleError):
        return AnthropicError.from_exception(exc)
    logger.error("unexpected error while serving a Messages request", exc_info=exc)
    return AnthropicError(f"internal server error ({type(exc).__name__}); see the server log", 500)


class AnthropicKeyAuth:
    """Requires the API key on the Messages routes, as ``x-api-key`` or a bearer token
    (pure ASGI, streams untouched)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and is_anthropic_path(scope["path"])
            and scope["method"] != "OPTIONS"
        ):
            problem = self._check(scope)
            if problem is not None:
                err = AnthropicError(problem, 401)
                await JSONResponse(err.to_dict(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> str | None:
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key")
        if key is None:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            key = token if scheme.lower() == b"bearer" else None
        if key is None:
            return "missing API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'"
        # compare_digest: the time taken must not tell how much of the key matched.
        if not hmac.compare_digest(key.strip(), self._key):
            return "invalid x-api-key"
        return None
