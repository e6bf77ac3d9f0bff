"""A demo MCP server for the MCP client tests, on the official SDK's `MCPServer`.

Run it over stdio (the default), Streamable HTTP (``--http --port N``) or the
legacy HTTP+SSE transport (``--sse --port N``)::

    python tests/support/mcp_servers/demo.py [--http | --sse] [--port N]
        [--name NAME] [--echo-prefix P] [--many-tools N] [--page-size N] [--legacy]

``--legacy`` makes it answer like a pre-2026 server (no ``server/discover``), so
clients fall back to the ``initialize`` handshake and, over HTTP, to sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import (
    METHOD_NOT_FOUND,
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    ResourceLink,
    TextResourceContents,
    jsonrpc_message_adapter,
)

SECRET_WORD = "the secret word is PAPAYA-7"
# A 1x1 PNG (70 bytes).
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--http", action="store_true", help="serve Streamable HTTP at /mcp")
    transport.add_argument("--sse", action="store_true", help="serve legacy HTTP+SSE at /sse")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="demo", help="the server's name")
    parser.add_argument("--echo-prefix", default="", help="prepended to what echo returns")
    parser.add_argument("--many-tools", type=int, default=0, help="register N extra tools")
    parser.add_argument("--page-size", type=int, default=50, help="tools per tools/list page")
    parser.add_argument("--legacy", action="store_true", help="refuse server/discover")
    return parser.parse_args(argv)


class Paginate:
    """Middleware that splits tools/list into pages, so clients must follow cursors.

    MCPServer answers tools/list in one page; real servers with many tools do not.
    """

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/list":
            return await call_next(ctx)
        result = await call_next(ctx)
        cursor = (ctx.params or {}).get("cursor")
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise MCPError(code=-32602, message=f"invalid cursor {cursor!r}") from None
        end = start + self.page_size
        # Inner layers may already have dumped the result to its wire dict.
        page = dict(result) if isinstance(result, dict) else result.model_dump(by_alias=True)
        page["nextCursor"] = str(end) if end < len(page["tools"]) else None
        page["tools"] = page["tools"][start:end]
        if page["nextCursor"] is None:
            del page["nextCursor"]
        return page


def _discover_refusal(message: Any) -> JSONRPCError | None:
    """The error a pre-2026 server answers ``server/discover`` with, or None for other messages."""
    if isinstance(message, JSONRPCRequest) and message.method == "server/discover":
        error = ErrorData(code=METHOD_NOT_FOUND, message="Method not found")
        return JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
    return None


async def run_legacy_stdio(server: MCPServer) -> None:
    """Serve stdio like a pre-2026 server: refuse ``server/discover`` before the SDK sees it.

    The SDK's server picks the protocol era from the client's first request, so
    the probe must never reach it.
    """
    lowlevel = server._lowlevel_server  # the SDK's own run_stdio_async drives it the same way
    async with stdio_server() as (read_stream, write_stream):
        send, receive = anyio.create_memory_object_stream[Any](0)

        async def pump() -> None:
            async with send:
                async for item in read_stream:
                    message = getattr(item, "message", None)
                    refusal = _discover_refusal(message)
                    if refusal is None:
                        await send.send(item)
                    else:
                        await write_stream.send(SessionMessage(refusal))

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            await lowlevel.run(receive, write_stream, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()


class RefuseDiscoverHTTP:
    """ASGI wrapper that answers ``server/discover`` POSTs like a pre-2026 server."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        try:
            refusal = _discover_refusal(jsonrpc_message_adapter.validate_json(body, by_name=False))
        except ValueError:
            refusal = None
        if refusal is not None:
            payload = refusal.model_dump_json(by_alias=True, exclude_none=True).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def run_legacy_http(server: MCPServer, host: str, port: int) -> None:
    app = RefuseDiscoverHTTP(server.streamable_http_app(host=host))
    uvicorn.run(app, host=host, port=port, log_level="warning")


def build_server(args: argparse.Namespace) -> MCPServer:
    server = MCPServer(args.name, middleware=[Paginate(args.page_size)], log_level="WARNING")

    @server.tool()
    def get_secret_word() -> str:
        """Return the secret word."""
        return SECRET_WORD

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged (after this server's echo prefix)."""
        return args.echo_prefix + text

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep for the given number of seconds, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool()
    def crash() -> str:
        """Exit the server process abruptly, in the middle of the call."""
        sys.stdout.flush()
        os._exit(1)

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the given message."""
        raise ToolError(message)

    @server.tool()
    def image() -> Image:
        """Return a 1x1 PNG image."""
        return Image(data=PNG_1X1, format="png")

    @server.tool()
    def mixed() -> list:
        """Return one content block of every non-text kind."""
        return [
            AudioContent(data=base64.b64encode(b"\0" * 10).decode(), mime_type="audio/wav"),
            EmbeddedResource(
                resource=TextResourceContents(uri="file:///notes.txt", text="embedded notes")
            ),
            EmbeddedResource(
                resource=BlobResourceContents(
                    uri="file:///data.bin",
                    mime_type="application/octet-stream",
                    blob=base64.b64encode(b"12345").decode(),
                )
            ),
            ResourceLink(name="readme", uri="file:///README.md"),
        ]

    @server.tool()
    def structured_only() -> CallToolResult:
        """Answer with structured content and no content blocks."""
        return CallToolResult(content=[], structured_content={"answer": 42, "tags": ["a", "b"]})

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Return the Authorization header of the request (HTTP), or "stdio"."""
        request = ctx.request_context.request
        if request is None:
            return "stdio"
        return request.headers.get("authorization", "no authorization header")

    @server.tool()
    def header(name: str, ctx: Context) -> str:
        """Return one header of the HTTP request, or "" when absent."""
        request = ctx.request_context.request
        return "" if request is None else request.headers.get(name, "")

    @server.tool()
    def getenv(name: str) -> str:
        """Return an environment variable of the server process, or "" when unset."""
        return os.environ.get(name, "")

    @server.tool()
    def cwd() -> str:
        """Return the server process's working directory."""
        return os.getcwd()

    @server.tool()
    def pid() -> int:
        """Return the server's process id."""
        return os.getpid()

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new tool at runtime and tell clients the tool list changed."""

        def added() -> str:
            return f"hello from {name}"

        server.add_tool(added, name=name, description=f"Added at runtime: {name}")
        # 2026-07-28 clients learn it through subscriptions/listen; earlier ones
        # through a plain notification (each era drops the other's).
        await ctx.notify_tools_changed()
        await ctx.request_context.session.send_tool_list_changed()
        return f"added {name}"

    for i in range(args.many_tools):
        server.add_tool(_numbered_tool(i), name=f"extra_{i:03d}", description=f"Extra tool {i}.")
    return server


def _numbered_tool(i: int):
    def tool() -> str:
        return f"extra {i}"

    return tool


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = build_server(args)
    if args.http and args.legacy:
        run_legacy_http(server, args.host, args.port)
    elif args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    elif args.sse:
        server.run("sse", host=args.host, port=args.port)
    elif args.legacy:
        anyio.run(run_legacy_stdio, server)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
