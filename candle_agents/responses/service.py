"""The Responses API in-process: requests to runs, MCP servers, stored chains.

:class:`ResponsesAPI` is what both the HTTP route and :class:`ResponsesSession`
call. It resolves a request's MCP tools (the operator's servers by label, or a
``server_url`` the operator allowed), continues ``previous_response_id``
chains from the store, and stores finished responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from candle_agents.mcp import McpClient, McpServerConfig
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.errors import OpenAIError, parse_request
from candle_agents.responses.protocol import McpToolParam, Response, ResponseEvent, ResponsesRequest
from candle_agents.responses.runner import DEFAULT_MAX_TURNS, ResponseRun
from candle_agents.responses.store import ResponseStore
from candle_agents.responses.tools import McpBinding

_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class McpPool:
    """Connected clients of the operator's MCP servers, shared by every response."""

    def __init__(self) -> None:
        self._clients: dict[str, McpClient] = {}
        self._lock = asyncio.Lock()

    async def get(self, config: McpServerConfig) -> McpClient:
        async with self._lock:
            client = self._clients.get(config.name)
            if client is None or client.config != config:
                if client is not None:
                    await client.aclose()
                client = self._clients[config.name] = McpClient(config)
        # connect() is idempotent and raises McpConnectionError when the server is down;
        # the next response tries again.
        await client.connect()
        return client

    async def aclose(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


class ResponseHandle:
    """A validated request, ready to run: iterate :meth:`events` once."""

    def __init__(self, api: ResponsesAPI, run: ResponseRun, owned: list[McpClient]) -> None:
        self.api = api
        self.run = run
        self._owned = owned

    @property
    def response(self) -> Response:
        return self.run.response

    async def events(self) -> AsyncIterator[ResponseEvent]:
        try:
            async for event in self.run.events():
                if event.type in _FINAL_EVENTS:
                    self.api._save(self.run)  # before the last event: a client may GET at once
                yield event
        finally:
            # Servers reached through a request's server_url live as long as its response.
            await asyncio.gather(*(c.aclose() for c in self._owned), return_exceptions=True)

    async def result(self) -> Response:
        async for _ in self.events():
            pass
        return self.run.response


class ResponsesAPI:
    """OpenAI's Responses API over an :class:`OpenAIAdapter`.

    ``mcp_servers``: the operator's servers, by label (any transport: stdio
    servers come only from here). ``allow_urls``: URL prefixes a request's
    ``server_url`` may start with; others are refused. ``store``: where
    responses are kept (None: not kept, ``previous_response_id`` refused).
    """

    def __init__(
        self,
        adapter: OpenAIAdapter,
        *,
        store: ResponseStore | None = None,
        mcp_servers: Mapping[str, McpServerConfig] | None = None,
        allow_urls: Sequence[str] = (),
        max_turns: int = DEFAULT_MAX_TURNS,
        mcp_call_timeout: float | None = None,
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.mcp_servers: dict[str, McpServerConfig] = dict(mcp_servers or {})
        self.allow_urls = list(allow_urls)
        self.max_turns = max_turns
        self.mcp_call_timeout = mcp_call_timeout
        self.pool = McpPool()

    async def create(self, request: ResponsesRequest | dict[str, Any]) -> Response:
        """Run a request to its end and return the response."""
        return await self.open(request).result()

    def stream(self, request: ResponsesRequest | dict[str, Any]) -> AsyncIterator[ResponseEvent]:
        """Validate now (errors raise here), then yield the response's events."""
        return self.open(request).events()

    def open(
        self, request: ResponsesRequest | dict[str, Any], max_turns: int | None = None
    ) -> ResponseHandle:
        """Validate ``request`` and prepare its run; raises :class:`OpenAIError`.

        ``max_turns`` bounds the model turns of this response (default: the API's).
        """
        req = parse_request(ResponsesRequest, request)
        if req.background:
            raise OpenAIError(
                "background responses are not supported here; leave background unset",
                param="background",
            )
        history = self._history(req)
        bindings, owned = self._bindings(req)
        run = ResponseRun(
            self.adapter,
            req,
            history=history,
            mcp=bindings,
            max_turns=max_turns or self.max_turns,
        )
        return ResponseHandle(self, run, owned)

    def retrieve(self, response_id: str) -> Response:
        found = self.store.get(response_id) if self.store else None
        if found is None:
            raise _not_found(response_id)
        return found

    def input_items(self, response_id: str) -> list[dict[str, Any]]:
        found = self.store.input_items(response_id) if self.store else None
        if found is None:
            raise _not_found(response_id)
        return found

    def delete(self, response_id: str) -> None:
        if not (self.store and self.store.delete(response_id)):
            raise _not_found(response_id)

    async def aclose(self) -> None:
        await self.pool.aclose()

    # -- internals ------------------------------------------------------------------------

    def _history(self, req: ResponsesRequest) -> list[dict[str, Any]]:
        if req.previous_response_id is None:
            return []
        if self.store is None:
            raise OpenAIError(
                "previous_response_id needs stored responses, and this server keeps none",
                param="previous_response_id",
            )
        found = self.store.conversation(req.previous_response_id)
        if found is None:
            raise OpenAIError(
                f"previous response {req.previous_response_id!r} not found (it was never "
                "stored, was created with store=false, or was deleted)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return found

    def _bindings(self, req: ResponsesRequest) -> tuple[list[McpBinding], list[McpClient]]:
        bindings: list[McpBinding] = []
        owned: list[McpClient] = []
        for i, tool in enumerate(req.tools or ()):
            if not isinstance(tool, McpToolParam):
                continue
            label = tool.server_label
            if any(b.param.server_label == label for b in bindings):
                raise OpenAIError(
                    f"tools[{i}].server_label: {label!r} is used by two mcp tools; "
                    "labels must be unique",
                    param=f"tools[{i}].server_label",
                )
            if tool.server_url is None:
                config = self.mcp_servers.get(label)
                if config is None:
                    configured = ", ".join(sorted(self.mcp_servers)) or "none"
                    raise OpenAIError(
                        f"tools[{i}]: MCP server {label!r} has no server_url and is not one of "
                        f"this server's configured MCP servers ({configured}; see --mcp-config)",
                        param=f"tools[{i}].server_label",
                    )
                bindings.append(McpBinding(tool, lambda c=config: self.pool.get(c)))
                continue
            config = self._url_config(i, tool)
            client = McpClient(config)
            owned.append(client)
            bindings.append(McpBinding(tool, lambda c=client: _connected(c)))
        return bindings, owned

    def _url_config(self, i: int, tool: McpToolParam) -> McpServerConfig:
        url = tool.server_url or ""
        if not any(url.startswith(prefix) for prefix in self.allow_urls):
            allowed = ", ".join(self.allow_urls) or "none"
            raise OpenAIError(
                f"tools[{i}].server_url: {url!r} is not allowed; this server connects only to "
                f"MCP URLs starting with a prefix given by --mcp-allow-url (allowed: {allowed})",
                param=f"tools[{i}].server_url",
                code="mcp_url_not_allowed",
            )
        config = McpServerConfig(
            name=tool.server_label,
            url=url,
            headers=dict(tool.headers or {}),
            bearer_token=tool.authorization,
        )
        if self.mcp_call_timeout is not None:
            config = replace(config, call_timeout=self.mcp_call_timeout)
        return config

    def _save(self, run: ResponseRun) -> None:
        if self.store is not None and run.request.store:
            self.store.save(run.response, run.input, run.conversation)


async def _connected(client: McpClient) -> McpClient:
    await client.connect()
    return client


def _not_found(response_id: str) -> OpenAIError:
    return OpenAIError(
        f"no stored response with id {response_id!r}",
        404,
        param="response_id",
        code="response_not_found",
    )
