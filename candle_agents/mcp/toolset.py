"""McpToolset: the tools of several MCP servers under one namespace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from candle_agents.mcp.client import McpClient
from candle_agents.mcp.config import McpServerConfig
from candle_agents.mcp.errors import McpConfigError, McpConnectionError, McpError
from candle_agents.mcp.tools import McpTool, McpToolResult, assign_exposed_names, error_result

logger = logging.getLogger(__name__)


class McpToolset:
    """Tools of several servers at once (what the agent loop uses).

    A tool name offered by more than one server is exposed as
    ``f"{server}__{name}"`` on each; ``call`` routes an exposed name back to its
    server. Servers connect on ``start()`` (or on first use).
    """

    def __init__(self, configs: Iterable[McpServerConfig] = ()) -> None:
        self._clients: dict[str, McpClient] = {}
        self._routes: dict[str, McpTool] = {}
        for config in configs:
            self._add_client(config)

    async def add_server(self, config: McpServerConfig) -> list[McpTool]:
        """Connect one more server and return its tools (under their toolset names)."""
        client = self._add_client(config)
        try:
            await client.connect()
            await client.list_tools()
        except BaseException:
            del self._clients[config.name]
            await client.aclose()
            raise
        return [tool for tool in await self.tools() if tool.server == config.name]

    async def start(self) -> None:
        """Connect every server concurrently and list their tools.

        Raises McpConnectionError naming each server that failed; the others stay
        connected until ``aclose()``.
        """
        clients = list(self._clients.values())
        results = await asyncio.gather(*(self._start(c) for c in clients), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error
        if len(errors) == 1 and isinstance(errors[0], McpConnectionError):
            raise errors[0]
        if errors:
            raise McpConnectionError(
                f"{len(errors)} of {len(clients)} MCP servers failed to start: "
                + "; ".join(str(error) for error in errors)
            )

    async def tools(self, refresh: bool = False) -> list[McpTool]:
        """The tools of all servers; a server that cannot list them is left out (logged)."""
        clients = list(self._clients.values())
        results = await asyncio.gather(
            *(client.list_tools(refresh=refresh) for client in clients), return_exceptions=True
        )
        collected: list[McpTool] = []
        for client, result in zip(clients, results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # One broken server should not take the others' tools away from the agent.
                logger.warning(
                    "tools of MCP server %r are unavailable: %s", client.config.name, result
                )
                continue
            collected.extend(result)
        named = assign_exposed_names(collected)
        self._routes = {tool.exposed_name: tool for tool in named}
        return named

    def server_labels(self) -> list[str]:
        """The labels of the servers, in the order they were added."""
        return list(self._clients)

    def client(self, label: str) -> McpClient:
        """The client of one server; McpError for an unknown label."""
        try:
            return self._clients[label]
        except KeyError:
            raise McpError(
                f"no MCP server labelled {label!r}; servers: {', '.join(self._clients) or '(none)'}"
            ) from None

    async def call(self, exposed_name: str, arguments: dict | None = None) -> McpToolResult:
        """Call a tool by its exposed name; unknown names and failures are error results."""
        tool = self._routes.get(exposed_name)
        if tool is None:
            # Not listed yet, or listed after our last look.
            await self.tools()
            tool = self._routes.get(exposed_name)
        if tool is None:
            return error_result(
                f"unknown tool {exposed_name!r}; available tools: "
                f"{', '.join(sorted(self._routes)) or '(none)'}"
            )
        client = self._clients.get(tool.server)
        if client is None:
            return error_result(
                f"tool {exposed_name!r}: its MCP server {tool.server!r} was removed"
            )
        return await client.call_tool(tool.name, arguments)

    async def aclose(self) -> None:
        """Close every server's session."""
        clients = list(self._clients.values())
        results = await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
        for client, result in zip(clients, results):
            if isinstance(result, Exception):
                logger.warning("closing MCP server %r failed: %s", client.config.name, result)

    async def __aenter__(self) -> McpToolset:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _add_client(self, config: McpServerConfig) -> McpClient:
        if config.name in self._clients:
            raise McpConfigError(
                f"two MCP servers are labelled {config.name!r}; labels must be unique",
                field=config.name,
            )
        client = McpClient(config)
        self._clients[config.name] = client
        return client

    @staticmethod
    async def _start(client: McpClient) -> None:
        await client.connect()
        try:
            await client.list_tools()
        except McpConnectionError:
            raise
        except McpError as exc:
            raise McpConnectionError(str(exc), server=client.config.name) from exc
