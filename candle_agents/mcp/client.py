"""McpClient: one MCP server, usable from any task of one asyncio event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from candle_agents.mcp.config import McpServerConfig
from candle_agents.mcp.errors import McpConnectionError, McpError, _ConnectionLost, _RequestTimeout
from candle_agents.mcp.tools import McpTool, McpToolResult, error_result, tool_from_wire

if TYPE_CHECKING:
    from candle_agents.mcp._connection import Connection


class McpClient:
    """One MCP server connection.

    Connects on first use (or ``connect()``), from any task of the event loop it
    is first used on; the session itself lives in a background task, so calls and
    ``aclose()`` may come from different tasks. ``call_tool`` never raises for
    tool failures, timeouts or a lost server: the model reads those as error
    results. A session that drops is reopened on the next request.
    """

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._tools: list[McpTool] | None = None
        self._tools_source: tuple[Connection, int] | None = None

    @property
    def connected(self) -> bool:
        """Whether a session is open and usable right now."""
        return self._conn is not None and self._conn.alive

    async def connect(self) -> None:
        """Open the session (if not open); McpConnectionError within ``connect_timeout``."""
        self._closed = False
        await self._live_connection()

    async def list_tools(self, refresh: bool = False) -> list[McpTool]:
        """The server's tools (all pages, filtered by ``allowed_tools``).

        Cached until the server reports a change, the session is reopened, or
        ``refresh`` is True. Raises McpConnectionError or McpError.
        """
        for attempt in (1, 2):
            conn = await self._live_connection()
            if (
                not refresh
                and self._tools is not None
                and self._tools_source == (conn, conn.tools_version)
            ):
                return list(self._tools)
            version = conn.tools_version
            try:
                wire_tools = await conn.list_tools()
            except _ConnectionLost as lost:
                await self._discard(conn)
                if attempt == 1:  # listing is harmless to repeat
                    continue
                raise McpConnectionError(str(lost), server=self.config.name) from None
            except _RequestTimeout:
                raise McpError(
                    f"MCP server {self.config.name!r} did not list its tools within "
                    f"{float(self.config.call_timeout)} s"
                ) from None
            except Exception as exc:
                from candle_agents.mcp._connection import describe_exception

                raise McpError(
                    f"MCP server {self.config.name!r} failed to list its tools: "
                    f"{describe_exception(exc)}"
                ) from exc
            tools = [tool_from_wire(self.config.name, data) for data in wire_tools]
            allowed = self.config.allowed_tools
            if allowed is not None:
                tools = [tool for tool in tools if tool.name in allowed]
            self._tools, self._tools_source = tools, (conn, version)
            return list(tools)
        raise AssertionError("unreachable")

    async def call_tool(
        self, name: str, arguments: dict | None = None, timeout: float | None = None
    ) -> McpToolResult:
        """Call a tool by its name on this server; every failure is an ``is_error`` result.

        ``timeout`` defaults to ``config.call_timeout``. A session found dropped is
        reopened once; a call is resent only when the server cannot have run it.
        """
        label = self.config.name
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            return error_result(
                f"the arguments of tool {name!r} must be a JSON object, "
                f"got {type(arguments).__name__}"
            )
        try:
            json.dumps(arguments)
        except (TypeError, ValueError) as exc:
            return error_result(f"the arguments of tool {name!r} are not valid JSON: {exc}")
        allowed = self.config.allowed_tools
        if allowed is not None and name not in allowed:
            return error_result(
                f"tool {name!r} is not enabled on MCP server {label!r}; enabled tools: "
                f"{', '.join(allowed) or '(none)'}"
            )
        try:
            tools = await self._tool_names(name)
        except McpError as exc:
            return error_result(str(exc))
        if name not in tools:
            return error_result(
                f"MCP server {label!r} has no tool {name!r}; available tools: "
                f"{', '.join(tools) or '(none)'}"
            )
        timeout = self.config.call_timeout if timeout is None else timeout
        for attempt in (1, 2):
            try:
                conn = await self._live_connection()
            except McpError as exc:
                return error_result(f"tool {name!r} could not run: {exc}")
            try:
                return await conn.call_tool(name, dict(arguments), timeout)
            except _ConnectionLost as lost:
                await self._discard(conn)
                if attempt == 1 and not lost.delivered:
                    continue  # the server never saw the call: resending cannot run it twice
                after = " The client is closed." if self._closed else " The next call reconnects."
                return error_result(f"tool {name!r} failed: {lost}.{after}")
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the session; a stdio server process is stopped (stdin closed, then signals)."""
        self._closed = True
        conn, self._conn = self._conn, None
        self._tools = self._tools_source = None
        if conn is not None:
            await self._discard(conn)

    async def __aenter__(self) -> McpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _tool_names(self, wanted: str) -> list[str]:
        names = [tool.name for tool in await self.list_tools()]
        if wanted not in names:
            # A server that adds tools without telling us: look again before giving up.
            names = [tool.name for tool in await self.list_tools(refresh=True)]
        return names

    async def _live_connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if self._closed:
                raise McpError(f"the client of MCP server {self.config.name!r} is closed")
            if conn is not None:
                self._conn = None
                await self._discard(conn)
            try:
                from candle_agents.mcp._connection import Connection
            except ImportError as exc:
                raise McpError(
                    "the MCP client needs the 'mcp' package: pip install 'candle-agents[mcp]' "
                    f"({exc})"
                ) from exc
            conn = Connection(self.config)
            conn.start()
            await conn.wait_ready()
            if self._closed:  # closed while we were connecting
                await self._discard(conn)
                raise McpError(f"the client of MCP server {self.config.name!r} is closed")
            self._conn = conn
            return conn

    async def _discard(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.stop()
        await conn.wait_closed()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "not connected"
        return f"<McpClient {self.config.name!r} ({self.config.describe()}) {state}>"
