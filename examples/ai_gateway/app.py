"""A small AI gateway: per-client API keys, model aliases, rate limits and usage accounting
in front of an engine that runs in this process (no second server behind it).

    python examples/ai_gateway/app.py --port 8080
    uvicorn --factory examples.ai_gateway.app:create_app --port 8080

Keys come from the GATEWAY_KEYS environment variable (JSON, shaped like DEMO_KEYS below).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from candle_agents import Engine
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.errors import OpenAIError
from candle_agents.openai.protocol import ChatCompletionRequest, ModelList, StreamOptions


@dataclass(frozen=True)
class Alias:
    """A public model name: its own defaults over a served model."""

    max_tokens: int  # a cap: clients may ask for fewer tokens, never more
    temperature: float | None = None  # forced when set, whatever the client sends


# One engine serves both aliases here; a bigger deployment would map them to different models.
ALIASES = {"fast": Alias(max_tokens=64), "precise": Alias(max_tokens=256, temperature=0.0)}

DEMO_KEYS = {
    "sk-alice": {"name": "alice", "models": ["fast", "precise"], "requests_per_minute": 30},
    "sk-bob": {"name": "bob", "models": ["fast"], "requests_per_minute": 5},
}


@dataclass
class Client:
    name: str
    models: frozenset[str]
    requests_per_minute: int
    usage: dict[str, int] = field(
        default_factory=lambda: dict(requests=0, prompt_tokens=0, completion_tokens=0)
    )
    recent: deque[float] = field(default_factory=deque)  # start times within the last minute

    def admit(self) -> None:
        """Sliding-window rate limit: at most requests_per_minute starts in any 60 s."""
        now = time.monotonic()
        while self.recent and now - self.recent[0] > 60:
            self.recent.popleft()
        if len(self.recent) >= self.requests_per_minute:
            retry = int(61 - (now - self.recent[0]))
            raise OpenAIError(
                f"rate limit of {self.requests_per_minute} requests per minute reached for "
                f"{self.name!r}: retry in {retry} s",
                429,
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
            )
        self.recent.append(now)
        self.usage["requests"] += 1

    def record(self, usage: Any) -> None:
        if usage is not None:
            self.usage["prompt_tokens"] += usage.prompt_tokens
            self.usage["completion_tokens"] += usage.completion_tokens


def authenticate(request: Request) -> Client:
    """The client whose key is in ``Authorization: Bearer <key>``, or a 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    for key, client in request.app.state.clients.items():
        # compare_digest: the time taken must not reveal how much of a key matched.
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode()):
            return client
    raise OpenAIError("invalid API key", 401, code="invalid_api_key")


# Routes that take a `Caller` argument are only reached with a valid key.
Caller = Annotated[Client, Depends(authenticate)]


def load_keys() -> dict[str, dict[str, Any]]:
    raw = os.environ.get("GATEWAY_KEYS")
    return json.loads(raw) if raw else DEMO_KEYS


def create_app(
    engine: Engine | None = None,
    keys: dict[str, dict[str, Any]] | None = None,
    aliases: dict[str, Alias] | None = None,
    **engine_config: Any,
) -> FastAPI:
    """The gateway app; it loads (and later shuts down) its own engine unless given one.

    ``keys`` defaults to GATEWAY_KEYS (or DEMO_KEYS), ``aliases`` to ALIASES.
    """
    aliases = aliases or ALIASES
    owns_engine = engine is None
    engine = engine or Engine.from_pretrained(**engine_config)
    # One adapter per alias, on the same engine: responses then report the alias as `model`.
    adapters = {alias: OpenAIAdapter(engine, served_model_name=alias) for alias in aliases}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_engine:  # shutdown() joins the engine thread: keep the event loop free
            await anyio.to_thread.run_sync(engine.shutdown)

    app = FastAPI(title="candle-agents AI gateway", lifespan=lifespan)
    app.state.clients = {
        key: Client(c["name"], frozenset(c["models"]), c["requests_per_minute"])
        for key, c in (keys or load_keys()).items()
    }

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, err: OpenAIError) -> JSONResponse:
        # OpenAI's error JSON, so that OpenAI clients raise their usual exception classes.
        headers = {"WWW-Authenticate": "Bearer"} if err.status_code == 401 else None
        return JSONResponse(err.to_dict(), err.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            err = OpenAIError("the request body is not valid JSON", code="invalid_json")
        else:  # a 400 that names the first bad field in `param`
            err = OpenAIError.from_error_details(errors)
        return JSONResponse(err.to_dict(), err.status_code)

    @app.get("/v1/models")
    async def models(client: Caller) -> ModelList:
        """Only the aliases this key may use."""
        cards = [adapters[a].models().data[0] for a in aliases if a in client.models]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, client: Caller) -> Any:
        alias = body.model
        if alias not in aliases:
            raise OpenAIError(
                f"unknown model {alias!r}: use one of {', '.join(aliases)}",
                404,
                param="model",
                code="model_not_found",
            )
        if alias not in client.models:
            raise OpenAIError(
                f"{client.name!r} may not use model {alias!r}",
                403,
                param="model",
                code="model_not_allowed",
            )
        client.admit()
        body = apply_alias(body, aliases[alias])
        adapter = adapters[alias]
        if not body.stream:
            result = await adapter.chat_completion(body)
            client.record(result.usage)
            return result
        # Always ask for the usage chunk, to account for it; pass it on only when asked.
        wants_usage = body.stream_options is not None and body.stream_options.include_usage
        body.stream_options = StreamOptions(include_usage=True)
        chunks = adapter.chat_completion_stream(body)  # invalid requests raise here, as a 4xx

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        client.record(chunk.usage)
                        if not wants_usage:
                            continue
                    yield {"data": chunk.model_dump_json()}
                yield {"data": "[DONE]"}
            finally:
                await chunks.aclose()  # a client that hung up: abort and free the KV blocks

        return EventSourceResponse(events(), sep="\n")

    @app.get("/usage")
    async def usage(client: Caller) -> dict[str, Any]:
        """What this key has used so far (a real gateway would persist and bill it)."""
        total = client.usage["prompt_tokens"] + client.usage["completion_tokens"]
        return {"client": client.name, **client.usage, "total_tokens": total}

    return app


def apply_alias(body: ChatCompletionRequest, alias: Alias) -> ChatCompletionRequest:
    """The request as the alias allows it: max_tokens capped, temperature forced if set."""
    asked = body.output_limit()  # max_completion_tokens, or the older max_tokens
    update: dict[str, Any] = {
        "max_tokens": min(asked or alias.max_tokens, alias.max_tokens),
        "max_completion_tokens": None,
    }
    if alias.temperature is not None:
        update["temperature"] = alias.temperature
    return body.model_copy(update=update)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", help="an HF folder or .gguf file (default: SmolLM2-135M)")
    args = parser.parse_args()
    uvicorn.run(create_app(model=args.model), host=args.host, port=args.port)
