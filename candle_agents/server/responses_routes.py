"""``/v1/responses``: OpenAI's Responses API over HTTP, with SSE events when streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response as HTTPResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from candle_agents.openai.errors import OpenAIError
from candle_agents.responses import ResponseEvent, ResponsesAPI, ResponsesRequest
from candle_agents.responses.protocol import Response
from candle_agents.server.common import as_openai_error, close_stream, unless_disconnected

RESPONSES_PATH = "/v1/responses"


def add_responses_routes(
    app: FastAPI, api: ResponsesAPI, errors: dict[int | str, dict[str, Any]]
) -> None:
    @app.post(
        RESPONSES_PATH,
        response_model=None,
        responses={
            200: {
                "model": Response,
                "description": 'The response, or with `"stream": true` server-sent events '
                "(`event: <type>` and `data: {event}`) ending with response.completed, "
                "response.incomplete or response.failed",
                "content": {"text/event-stream": {}},
            },
            424: {
                "model": errors[400]["model"],
                "description": "An MCP server could not be reached or listed",
            },
            **errors,
        },
        tags=["OpenAI"],
    )
    async def create_response(body: ResponsesRequest, request: Request) -> HTTPResponse:
        """Create a model response (OpenAI's `POST /v1/responses`), running MCP tools."""
        handle = api.open(body)  # request errors raise here, before any event
        if body.stream:
            return _event_stream(handle.events())
        result = await unless_disconnected(request, handle.result())
        if result is None:
            return HTTPResponse(status_code=499)
        if result.status == "failed" and result.error and result.error.code == "mcp_server_error":
            # As OpenAI answers when it cannot list an MCP server's tools.
            raise OpenAIError(
                result.error.message, 424, type="external_connector_error", param="tools"
            )
        return HTTPResponse(result.model_dump_json(), media_type="application/json")

    @app.get(RESPONSES_PATH + "/{response_id}", response_model=Response, tags=["OpenAI"])
    async def get_response(response_id: str) -> HTTPResponse:
        """A stored response."""
        found = api.retrieve(response_id)
        return HTTPResponse(found.model_dump_json(), media_type="application/json")

    @app.delete(RESPONSES_PATH + "/{response_id}", tags=["OpenAI"])
    async def delete_response(response_id: str) -> dict[str, Any]:
        """Delete a stored response (chains through it can no longer continue)."""
        api.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @app.get(RESPONSES_PATH + "/{response_id}/input_items", tags=["OpenAI"])
    async def list_input_items(response_id: str) -> dict[str, Any]:
        """The input items of a stored response."""
        items = api.input_items(response_id)
        return {
            "object": "list",
            "data": items,
            "first_id": items[0].get("id") if items else None,
            "last_id": items[-1].get("id") if items else None,
            "has_more": False,
        }


def _event_stream(events: AsyncIterator[ResponseEvent]) -> EventSourceResponse:
    """SSE in OpenAI's framing: ``event: <type>`` and ``data: <json>`` per event."""
    last = 0

    async def frames() -> AsyncIterator[dict[str, str]]:
        nonlocal last
        try:
            async for event in events:
                last = event.sequence_number
                data = event.model_dump(mode="json")
                yield {"event": event.type, "data": json.dumps(data, ensure_ascii=False)}
        except Exception as exc:
            err = as_openai_error(exc).to_dict()["error"]
            data = {"type": "error", "sequence_number": last + 1, **err}
            yield {"event": "error", "data": json.dumps(data)}
        finally:
            await close_stream(events)

    return EventSourceResponse(frames(), sep="\n", background=BackgroundTask(close_stream, events))
