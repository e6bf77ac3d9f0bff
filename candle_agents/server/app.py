"""The FastAPI app: OpenAI routes over an :class:`OpenAIAdapter`, health, metrics, chat UI.

The adapter does the OpenAI work (validation, prompts, tool calls, chunks);
this module is only HTTP: status codes and error JSON, SSE framing, API-key
checks, disconnects, and metrics.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candle_agents import __version__
from candle_agents.anthropic import AnthropicAdapter
from candle_agents.engine import Engine
from candle_agents.errors import CandleError, ConfigError
from candle_agents.mcp import load_mcp_config
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.errors import OpenAIError
from candle_agents.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from candle_agents.responses import ResponsesAPI, ResponseStore
from candle_agents.responses.runner import DEFAULT_MAX_TURNS
from candle_agents.server.anthropic_routes import (
    AnthropicKeyAuth,
    add_anthropic_routes,
    is_anthropic_path,
)
from candle_agents.server.common import as_openai_error, close_stream, unless_disconnected
from candle_agents.server.metrics import ServerMetrics, StreamTimer
from candle_agents.server.responses_routes import RESPONSES_PATH, add_responses_routes

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# Routes whose body must be a JSON object.
_BODY_PATHS = (CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH)
_ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the field is in `param`)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    503: {"model": ErrorResponse, "description": "Too many requests waiting; retry later"},
}


def create_app(
    engine: Engine | None = None,
    *,
    model: str | None = None,
    served_model_name: str | list[str] | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_waiting: int | None = None,
    tool_parser: str | None = None,
    reasoning_parser: str | None = None,
    mcp_config: str | Path | dict[str, Any] | None = None,
    mcp_allow_urls: Sequence[str] = (),
    mcp_call_timeout: float | None = None,
    responses_db: str | Path | None = None,
    max_turns: int = DEFAULT_MAX_TURNS,
    **engine_config: Any,
) -> FastAPI:
    """Build the server app for ``engine``, or for a new engine loaded from ``model``.

    An engine built here (from ``model`` and ``engine_config``, see
    :class:`~candle_agents.EngineConfig`) belongs to the app, which shuts it
    down when the app stops; a given engine is left running for its owner.
    ``api_key`` protects ``/v1/*`` with ``Authorization: Bearer <key>``;
    ``max_waiting`` bounds the engine's queue (503 beyond it).

    ``/v1/responses``: ``mcp_config`` names the MCP servers requests may use by
    label (a ``{"mcpServers": ...}`` file or dict; the only way to get stdio
    servers); a request's ``server_url`` is used only when it starts with one
    of ``mcp_allow_urls``. Responses are stored in ``responses_db`` (a SQLite
    file, by default in the user's data directory; ``":memory:"`` keeps them
    for the app's life).
    """
    if engine is not None and (model is not None or engine_config):
        given = ["model"] * (model is not None) + sorted(engine_config)
        raise ConfigError(
            f"create_app got an engine and also {', '.join(given)}: engine settings apply "
            "only when the app loads its own engine; pass one or the other",
            field=given[0],
        )
    owns_engine = engine is None
    if engine is None:
        engine = Engine.from_pretrained(model, **engine_config)
    try:
        adapter = OpenAIAdapter(
            engine,
            served_model_name=served_model_name,
            tool_parser=tool_parser,
            reasoning_parser=reasoning_parser,
            max_waiting=max_waiting,
        )
        metrics = ServerMetrics(engine, adapter.model_names[0])
        servers = load_mcp_config(mcp_config) if mcp_config is not None else {}
        if mcp_call_timeout is not None:
            servers = {k: replace(v, call_timeout=mcp_call_timeout) for k, v in servers.items()}
        responses = ResponsesAPI(
            adapter,
            store=ResponseStore(responses_db),
            mcp_servers=servers,
            allow_urls=mcp_allow_urls,
            max_turns=max_turns,
            mcp_call_timeout=mcp_call_timeout,
        )
    except BaseException:
        if owns_engine:
            engine.shutdown()
        raise

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await responses.aclose()  # MCP sessions; stdio servers exit
            responses.store.close()
            if owns_engine:
                # shutdown() joins the engine thread: keep the event loop free meanwhile.
                await anyio.to_thread.run_sync(engine.shutdown)

    app = FastAPI(
        title="candle-agents",
        version=__version__,
        summary="OpenAI-compatible chat and completions served by a local engine.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.adapter = adapter
    app.state.metrics = metrics
    app.state.responses = responses
    app.state.owns_engine = owns_engine
    _install_error_handlers(app)
    _add_api_routes(app, adapter, metrics)
    add_responses_routes(app, responses, _ERROR_DOCS)
    add_anthropic_routes(app, AnthropicAdapter(adapter), metrics)
    _add_service_routes(app, engine, metrics)
    # add_middleware puts each new one outside the previous: auth runs innermost,
    # so its 401s are counted by the metrics and carry CORS headers.
    if api_key:
        # The Messages API takes the key in Anthropic's header too, and answers in its shape.
        app.add_middleware(BearerAuth, api_key=api_key, skip=is_anthropic_path)
        app.add_middleware(AnthropicKeyAuth, api_key=api_key)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.router.routes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


# -- routes ------------------------------------------------------------------------------


def _add_api_routes(app: FastAPI, adapter: OpenAIAdapter, metrics: ServerMetrics) -> None:
    def stream_docs(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
        return {
            200: {
                "model": model,
                "description": 'The response, or with `"stream": true` server-sent events: '
                "`data: {chunk}` lines ending with `data: [DONE]`",
                "content": {"text/event-stream": {}},
            },
            **_ERROR_DOCS,
        }

    @app.post(
        CHAT_PATH,
        response_model=None,
        responses=stream_docs(ChatCompletionResponse),
        tags=["OpenAI"],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Create a chat completion (OpenAI's `POST /v1/chat/completions`)."""
        if body.stream:
            stream = adapter.chat_completion_stream(body)  # errors raise here, before any event
            return _event_stream(stream, metrics.stream_timer(CHAT_PATH, time.perf_counter()))
        result = await unless_disconnected(request, adapter.chat_completion(body))
        return _json(result)

    @app.post(
        COMPLETIONS_PATH,
        response_model=None,
        responses=stream_docs(CompletionResponse),
        tags=["OpenAI"],
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Create a text completion (OpenAI's legacy `POST /v1/completions`)."""
        if body.stream:
            stream = adapter.completion_stream(body)
            return _event_stream(
                stream, metrics.stream_timer(COMPLETIONS_PATH, time.perf_counter())
            )
        result = await unless_disconnected(request, adapter.completion(body))
        return _json(result)

    @app.get("/v1/models", response_model=ModelList, tags=["OpenAI"])
    async def list_models() -> ModelList:
        """The model names this server answers to."""
        return adapter.models()

    @app.get(
        "/v1/models/{model_id:path}",
        response_model=ModelCard,
        responses={404: _ERROR_DOCS[404]},
        tags=["OpenAI"],
    )
    async def get_model(model_id: str) -> ModelCard:
        """One served model."""
        for card in adapter.models().data:
            if card.id == model_id:
                return card
        raise OpenAIError(
            f"The model {model_id!r} does not exist here; this server serves: "
            f"{', '.join(adapter.model_names)}",
            status_code=404,
            param="model",
            code="model_not_found",
        )


def _add_service_routes(app: FastAPI, engine: Engine, metrics: ServerMetrics) -> None:
    @app.get("/health", tags=["Service"])
    async def health() -> JSONResponse:
        """200 while the engine loop runs, 503 once it has stopped."""
        if engine.is_alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            {"status": "unavailable", "detail": "the engine loop is not running"}, 503
        )

    @app.get("/metrics", tags=["Service"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def chat_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# -- responses ---------------------------------------------------------------------------


def _json(result: BaseModel | None) -> Response:
    if result is None:  # the client hung up; nobody reads this
        return Response(status_code=499)
    return Response(result.model_dump_json(), media_type="application/json")


def _chunk_json(chunk: BaseModel) -> str:
    data = chunk.model_dump(mode="json", exclude_none=True)
    for choice in data.get("choices", ()):
        # OpenAI sends an explicit null until the end; JS clients test `!== null`.
        choice.setdefault("finish_reason", None)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _token_choices(chunk: Any) -> list[int]:
    """Indices of the choices this chunk carries generated tokens for (chat or text)."""
    out = []
    for choice in getattr(chunk, "choices", ()):
        delta = getattr(choice, "delta", None)
        if delta is not None:
            if delta.content or delta.tool_calls:
                out.append(choice.index)
        elif getattr(choice, "text", None):
            out.append(choice.index)
    return out


def _event_stream(stream: AsyncIterator[BaseModel], timer: StreamTimer) -> EventSourceResponse:
    """SSE of the adapter's chunks: ``data: {json}`` events, then ``data: [DONE]``."""

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for chunk in stream:
                indices = _token_choices(chunk)
                if indices:
                    timer.observe(indices)
                yield {"data": _chunk_json(chunk)}
            yield {"data": "[DONE]"}
        except Exception as exc:
            # The 200 and its headers are sent: report the failure as an event, in
            # OpenAI's error shape, which the official clients raise as APIError.
            err = as_openai_error(exc)
            yield {"data": json.dumps(err.to_dict())}
        finally:
            await close_stream(stream)

    # The background task also closes the adapter's iterator when the response ends
    # before `events` ever ran (a client gone at once), so the engine requests it
    # holds are released with the response instead of whenever the garbage is collected.
    return EventSourceResponse(events(), sep="\n", background=BackgroundTask(close_stream, stream))


# -- errors ------------------------------------------------------------------------------


def _error_response(err: OpenAIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_request_error(request, exc))

    @app.exception_handler(CandleError)
    async def candle_error(request: Request, exc: CandleError) -> JSONResponse:
        err = as_openai_error(exc)
        if err.status_code == 499 and not request.app.state.engine.is_alive:
            # "Cancelled" because the engine is gone: the service is down, not the request.
            err = OpenAIError(
                "the engine has shut down; this server cannot generate any more",
                503,
                type="server_error",
                code="engine_stopped",
            )
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, path = exc.status_code, request.url.path
        if status == 404:
            message = f"no route {request.method} {path}: see /docs for this server's API"
        elif status == 405:
            message = f"{request.method} is not allowed on {path}: see /docs"
        else:
            message = str(exc.detail)
        err = OpenAIError(
            message, status, type="invalid_request_error" if status < 500 else "server_error"
        )
        return _error_response(err, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(as_openai_error(exc))


def _request_error(request: Request, exc: RequestValidationError) -> OpenAIError:
    """A 400 naming the first bad field, worded as the adapter words its own checks."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        detail = (first.get("ctx") or {}).get("error", "malformed JSON")
        return OpenAIError(
            f"the request body is not valid JSON ({detail}{where}): send a JSON object",
            code="invalid_json",
        )
    body = exc.body
    if loc == ("body",) and body is None:
        return OpenAIError("the request body is missing: send a JSON object", code="missing_body")
    if request.url.path in _BODY_PATHS and not isinstance(body, dict):
        if isinstance(body, bytes | str) and not _is_json(request):
            return OpenAIError(
                "the request body must be JSON: send it with 'Content-Type: application/json'",
                code="invalid_body",
            )
        return OpenAIError(
            f"the request body must be a JSON object, got {_json_kind(body)}",
            code="invalid_body",
        )
    # A field of the body (named as the adapter names it), or a query or path parameter.
    return OpenAIError.from_error_details(errors)


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "application/json").lower()
    return "json" in content_type


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, int | float) else "bytes")


# -- middleware ---------------------------------------------------------------------------


class BearerAuth:
    """Requires ``Authorization: Bearer <api_key>`` on ``/v1/*`` (pure ASGI, streams untouched)."""

    def __init__(
        self, app: ASGIApp, api_key: str, skip: Callable[[str], bool] = lambda path: False
    ) -> None:
        self.app = app
        self._key = api_key.encode()
        self._skip = skip  # paths another middleware checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and _is_api_path(scope)
            and not self._skip(scope["path"])
            and scope["method"] != "OPTIONS"
        ):
            problem = self._check(scope)
            if problem is not None:
                err = OpenAIError(problem, 401, code="invalid_api_key")
                await _error_response(err, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> str | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return "missing API key: send it as 'Authorization: Bearer <key>'"
        scheme, _, token = header.partition(b" ")
        # compare_digest: the time taken must not tell how much of the key matched.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            return "incorrect API key provided"
        return None


def _is_api_path(scope: Scope) -> bool:
    path: str = scope["path"]
    return path == "/v1" or path.startswith("/v1/")


class RequestMetrics:
    """Counts responses by route and status; times ``/v1`` requests to their last byte."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            status = status or 500
            raise
        finally:
            endpoint = self._endpoint(scope)
            self.metrics.requests.labels(endpoint, str(status or 499)).inc()
            if endpoint.startswith("/v1/"):
                self.metrics.e2e_latency.labels(endpoint).observe(time.perf_counter() - start)

    def _endpoint(self, scope: Scope) -> str:
        """The route's template, not the raw path: scanners must not mint a label per URL."""
        route = scope.get("route")  # set by the router when it got that far
        if route is None:  # answered before routing (a 401): match it ourselves
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"
