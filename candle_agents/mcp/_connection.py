"""One live MCP session, owned by one background task.

The SDK's transports and sessions are anyio context managers: the task that
enters them must exit them, and a failure in their task groups cancels whatever
runs inside them. McpClient is used from many tasks (request handlers, agent
loops) and may be closed from yet another, so each session lives in a task of
its own: it enters the transport and the session, signals ready, and waits until
it is told to stop or the connection ends. Requests run in the callers' tasks on
the shared session, each raced against the end of the connection, so none can
hang on a dead server and no SDK exception group reaches a caller.

This is the only module that imports the SDK (``mcp``, an optional extra).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import httpx2
from anyio.abc import TaskStatus
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, Implementation
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from candle_agents import __version__
from candle_agents.mcp.config import McpServerConfig
from candle_agents.mcp.errors import McpConnectionError, _ConnectionLost, _RequestTimeout
from candle_agents.mcp.tools import McpToolResult, error_result, result_from_wire

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLIENT_INFO = Implementation(name="candle-agents", version=__version__)
_STDERR_LINES = 20
_STDERR_CHARS = 1500
# How long a dying server gets to finish writing its last stderr lines.
_STDERR_SETTLE = 0.5
# The SDK's stdio shutdown takes up to ~6.5 s (stdin close, SIGTERM, SIGKILL).
_CLOSE_GRACE = 10.0
# Longest silence on an HTTP response stream, at least; tools may run long without output.
_MIN_READ_TIMEOUT = 300.0
_MAX_PAGES = 1000
# Backoff between attempts to reopen a tool-change subscription.
_RELISTEN_MIN = 0.5
_RELISTEN_MAX = 30.0
_CONNECTION_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    httpx2.TransportError,
    OSError,
)
_SESSION_GONE_WORDS = ("terminated", "not found", "expired", "unknown", "invalid")


class StderrTail:
    """Takes a stdio server's stderr: logged at DEBUG, the last lines kept for error messages."""

    def __init__(self, label: str) -> None:
        read_fd, write_fd = os.pipe()
        # The SDK gives this file to the child as its stderr; our copy is closed after the spawn.
        self.file = os.fdopen(write_fd, "w")
        self._label = label
        self._lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self._eof = threading.Event()
        # A thread, not a task: it must keep draining even while the event loop is busy,
        # or a chatty server would block on a full pipe.
        threading.Thread(
            target=self._pump, args=(read_fd,), name=f"mcp-stderr-{label}", daemon=True
        ).start()

    def _pump(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._lines.append(line)
                    logger.debug("MCP server %r stderr: %s", self._label, line)
        self._eof.set()

    def release(self) -> None:
        """Close our copy of the write end, so the reader sees EOF when the server exits."""
        if not self.file.closed:
            self.file.close()

    async def tail(self) -> str:
        """The last lines written, after a short wait for a dying server's final words."""
        with anyio.move_on_after(_STDERR_SETTLE):
            while not self._eof.is_set():
                await anyio.sleep(0.02)
        return "\n".join(self._lines)[-_STDERR_CHARS:]


class WatchedReadStream:
    """A transport's read stream that reports its end: the server is gone."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        # The SDK reads the sender's contextvars from here on context-aware streams.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> WatchedReadStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Connection:
    """One MCP session, entered and exited by its own task (see the module docstring)."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        # Bumped whenever the server says its tool list changed; list caches compare it.
        self.tools_version = 0
        self.client: Client | None = None
        self.failure: BaseException | None = None
        self.http_error: str | None = None
        self._stdio = config.resolved_transport == "stdio"
        self._stderr = StderrTail(config.name) if self._stdio else None
        self._ready = anyio.Event()
        self._ending = anyio.Event()
        self._closed = anyio.Event()
        self._end_reason = ""
        self._stopping = False
        self._scope = anyio.CancelScope()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._ready.is_set() and not self._ending.is_set()

    @property
    def prefix(self) -> str:
        return f"MCP server {self.config.name!r} ({self.config.describe()})"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._own(), name=f"mcp-session-{self.config.name}"
        )

    async def wait_ready(self) -> None:
        """Wait until the session is initialized; McpConnectionError when it cannot be."""
        timeout = self.config.connect_timeout
        try:
            with anyio.move_on_after(timeout) as deadline:
                await self._ready.wait()
        except BaseException:
            self.abort()
            raise
        if deadline.cancelled_caught:
            self.abort()
            stderr = await self._stderr_note()
            await self.wait_closed()
            raise McpConnectionError(
                f"{self.prefix} did not finish initialize within {float(timeout)} s{stderr}",
                server=self.config.name,
            )
        if not self.alive:
            await self.wait_closed()
            raise McpConnectionError(await self.failure_message(), server=self.config.name)

    def stop(self, reason: str = "the client closed it") -> None:
        """Ask the owner task to close the session gracefully."""
        self._stopping = True
        self._end(reason)

    def abort(self) -> None:
        """Cancel the owner task's work (a connect or teardown that takes too long)."""
        self.stop()
        self._scope.cancel()

    async def wait_closed(self, timeout: float = _CLOSE_GRACE) -> None:
        with anyio.move_on_after(timeout):
            await self._closed.wait()
            return
        logger.warning("%s: closing took over %s s; cancelling it", self.prefix, timeout)
        self._scope.cancel()
        with anyio.move_on_after(timeout):
            await self._closed.wait()

    def _end(self, reason: str) -> None:
        if not self._ending.is_set():
            self._end_reason = reason
            self._ending.set()

    async def _own(self) -> None:
        try:
            with self._scope:
                transport = self._transport()
                async with Client(
                    transport,
                    mode="auto",
                    # We cache tool lists ourselves, keyed to list_changed; no SDK response cache.
                    cache=None,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    client_info=_CLIENT_INFO,
                ) as client:
                    self.client = client
                    async with anyio.create_task_group() as tg:
                        if _changes_need_listen(client):
                            await tg.start(self._follow_tool_changes, client)
                        # A refused era probe during negotiation is not a problem of this session.
                        self.http_error = None
                        self._ready.set()
                        await self._ending.wait()
                        tg.cancel_scope.cancel()
        except Exception as exc:  # the SDK's ExceptionGroups included: record, never leak
            self._record(exc)
        except BaseException as exc:
            self._record(exc)
            raise
        finally:
            self._end("the connection ended")
            self._ready.set()
            self._closed.set()
            if self._stderr is not None:
                self._stderr.release()

    def _record(self, exc: BaseException) -> None:
        if not self._stopping and self.failure is None:
            self.failure = exc
            logger.debug("%s: session ended with an error", self.prefix, exc_info=exc)

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        config = self.config
        kind = config.resolved_transport
        if kind == "stdio":
            assert config.command is not None and self._stderr is not None
            params = StdioServerParameters(
                command=config.command, args=list(config.args), env=config.env, cwd=config.cwd
            )
            async with stdio_client(params, errlog=self._stderr.file) as (read, write):
                self._stderr.release()
                yield WatchedReadStream(read, self._on_stream_end), write
            return
        assert config.url is not None
        headers = dict(config.headers)
        if config.bearer_token:
            headers["Authorization"] = f"Bearer {config.bearer_token}"
        read_timeout = max(_MIN_READ_TIMEOUT, config.call_timeout + 30.0)
        if kind == "sse":
            async with sse_client(
                config.url,
                headers=headers,
                timeout=config.connect_timeout,
                sse_read_timeout=read_timeout,
                httpx_client_factory=self._http_client,
            ) as (read, write):
                yield WatchedReadStream(read, self._on_stream_end), write
            return
        timeout = httpx2.Timeout(config.connect_timeout, read=read_timeout)
        async with (
            self._http_client(headers=headers, timeout=timeout) as http,
            streamable_http_client(config.url, http_client=http) as (read, write),
        ):
            yield WatchedReadStream(read, self._on_stream_end), write

    def _http_client(
        self,
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        # The SDK maps HTTP errors to bare JSON-RPC errors; keep the status for our messages.
        async def note_status(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                self.http_error = f"HTTP {response.status_code} {response.reason_phrase}".strip()

        return httpx2.AsyncClient(
            headers=headers, timeout=timeout, auth=auth, event_hooks={"response": [note_status]}
        )

    def _on_stream_end(self) -> None:
        self._end("the server closed the connection")

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.debug("%s: transport error: %r", self.prefix, message)
        elif getattr(message, "method", None) == "notifications/tools/list_changed":
            self.tools_version += 1

    async def _on_log(self, params: Any) -> None:
        logger.debug("%s log (%s): %s", self.prefix, params.level, params.data)

    async def _follow_tool_changes(
        self, client: Client, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow tool list changes on 2026-07-28 connections: they come only on listen streams.

        A stream that ends (a restarted HTTP server) is reopened on the same
        session, with backoff; requests in flight are left alone.
        """
        delay = _RELISTEN_MIN
        first = True
        while not self._ending.is_set():
            acked = await self._listen_once(client, task_status)
            task_status = anyio.TASK_STATUS_IGNORED
            if acked:
                # Changes made while no stream was open went unseen.
                self.tools_version += 1
                delay = _RELISTEN_MIN
            elif first:
                return  # the server does not serve listen streams after all
            first = False
            await anyio.sleep(delay)
            delay = min(delay * 2, _RELISTEN_MAX)

    async def _listen_once(self, client: Client, task_status: TaskStatus[None]) -> bool:
        """One listen stream, until it ends; whether the server acknowledged it."""
        acked = False
        try:
            async with AsyncExitStack() as stack:
                try:
                    with anyio.move_on_after(self.config.connect_timeout):
                        subscription = await stack.enter_async_context(
                            client.listen(tools_list_changed=True)
                        )
                        acked = True
                finally:
                    task_status.started()
                if acked:
                    async for _event in subscription:
                        self.tools_version += 1
        except Exception as exc:
            logger.debug("%s: tool-change subscription ended: %r", self.prefix, exc)
        return acked

    async def request(self, fn: Callable[[Client], Awaitable[T]], timeout: float) -> T:
        """Run ``fn`` in the caller's task, bounded by ``timeout`` and by the session's life.

        Raises _RequestTimeout, _ConnectionLost, or the SDK error ``fn`` raised.
        """
        client = self.client
        if client is None or not self.alive:
            raise _ConnectionLost(await self.lost_message(), delivered=False)
        outcome: list[T] = []
        errors: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def cancel_when_ending() -> None:
                await self._ending.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_ending)
            with anyio.move_on_after(timeout) as deadline:
                try:
                    outcome.append(await fn(client))
                except Exception as exc:  # kept out of the task group, so never wrapped in a group
                    errors.append(exc)
            tg.cancel_scope.cancel()
        if outcome:
            return outcome[0]
        if errors:
            exc = errors[0]
            if _session_gone(exc):
                self._end("the server no longer knows this session (did it restart?)")
                await self.wait_closed()
                raise _ConnectionLost(await self.lost_message(), delivered=False) from exc
            if _is_connection_error(exc):
                self._end("the connection was lost")
                await self.wait_closed()
                raise _ConnectionLost(
                    await self.lost_message(), delivered=not self._refused()
                ) from exc
            raise exc
        if deadline.cancelled_caught:
            raise _RequestTimeout(f"request timed out after {float(timeout)} s")
        await self.wait_closed()
        raise _ConnectionLost(await self.lost_message(), delivered=not self._refused())

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool of the server as its JSON form, following pagination cursors."""

        async def fetch(client: Client) -> list[dict[str, Any]]:
            tools: list[Any] = []
            cursor: str | None = None
            seen: set[str] = set()
            for _ in range(_MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor or cursor in seen:  # a repeated cursor would loop forever
                    break
                seen.add(cursor)
            return [
                tool.model_dump(by_alias=True, mode="json", exclude_none=True) for tool in tools
            ]

        return await self.request(fetch, self.config.call_timeout)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float
    ) -> McpToolResult:
        """Call a tool; every outcome but a lost connection (_ConnectionLost) is a result."""
        label = self.config.name
        try:
            result = await self.request(lambda client: client.call_tool(name, arguments), timeout)
        except _RequestTimeout:
            return error_result(
                f"tool {name!r} on MCP server {label!r} timed out after {float(timeout)} s"
            )
        except _ConnectionLost:
            raise
        except MCPError as exc:
            return error_result(
                f"MCP server {label!r} rejected the call to tool {name!r}: {exc.message} "
                f"(JSON-RPC error {exc.code})"
            )
        except (ValidationError, RuntimeError) as exc:
            # The SDK checks results against the tool's declared output schema.
            return error_result(
                f"MCP server {label!r} returned an invalid result for tool {name!r}: "
                f"{describe_exception(exc)}"
            )
        except Exception as exc:
            return error_result(
                f"calling tool {name!r} on MCP server {label!r} failed: {describe_exception(exc)}"
            )
        return result_from_wire(result.model_dump(by_alias=True, mode="json", exclude_none=True))

    def _refused(self) -> bool:
        """Whether the connection failed before reaching the server (nothing was delivered)."""
        return any(
            isinstance(leaf, httpx2.ConnectError | ConnectionRefusedError)
            for leaf in _leaves(self.failure)
        )

    async def failure_message(self) -> str:
        """Why the session could not be opened, for McpConnectionError."""
        exc = self.failure
        cause = describe_exception(exc) if exc is not None else self._end_reason
        leaves = list(_leaves(exc))
        if self._stdio and any(isinstance(leaf, OSError) for leaf in leaves):
            text = f"{self.prefix} could not be started: {cause}"
        elif self._stdio and any(_is_connection_error(leaf) for leaf in leaves):
            text = f"{self.prefix} exited during initialize: {cause}"
        elif self._refused():
            text = f"{self.prefix} could not be reached: {cause}"
        else:
            text = f"{self.prefix} failed during initialize: {cause}"
        return text + self._http_note() + await self._stderr_note()

    async def lost_message(self) -> str:
        """What happened to a session that ended under a request."""
        if self._stdio and self._end_reason == "the server closed the connection":
            what = "exited"
        elif self._refused():
            what = "could not be reached"
        else:
            what = f"is unavailable: {self._end_reason}"
        if self.failure is not None and not self._stdio:
            what += f" ({describe_exception(self.failure)})"
        return f"{self.prefix} {what}" + self._http_note() + await self._stderr_note()

    def _http_note(self) -> str:
        return f" [{self.http_error}]" if self.http_error else ""

    async def _stderr_note(self) -> str:
        if self._stderr is None:
            return ""
        tail = await self._stderr.tail()
        return f"; its stderr ends with: {tail}" if tail else ""


def _changes_need_listen(client: Client) -> bool:
    """2026-07-28 servers send list changes only on a subscriptions/listen stream."""
    tools = client.server_capabilities.tools
    return (
        client.protocol_version in MODERN_PROTOCOL_VERSIONS
        and tools is not None
        and bool(tools.list_changed)
    )


def _leaves(exc: BaseException | None) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if exc is None:
        return
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, list | tuple) and isinstance(exc, BaseException):
        for item in inner:
            yield from _leaves(item)
    else:
        yield exc


def _is_connection_error(exc: BaseException) -> bool:
    for leaf in _leaves(exc):
        if isinstance(leaf, MCPError) and leaf.code == CONNECTION_CLOSED:
            return True
        if isinstance(leaf, _CONNECTION_ERRORS):
            return True
    return False


def _session_gone(exc: BaseException) -> bool:
    """The HTTP server no longer knows our session id (it restarted, or expired the session)."""
    if not isinstance(exc, MCPError):
        return False
    message = exc.message.lower()
    return "session" in message and any(word in message for word in _SESSION_GONE_WORDS)


def describe_exception(exc: BaseException) -> str:
    """A one-line cause: the most telling exception inside any exception groups."""
    leaves = [
        leaf for leaf in _leaves(exc) if not isinstance(leaf, anyio.get_cancelled_exc_class())
    ] or [exc]
    # "Connection closed" is the symptom; a sibling error (a refused connection) is the cause.
    leaf = next(
        (
            item
            for item in leaves
            if not (isinstance(item, MCPError) and item.code == CONNECTION_CLOSED)
        ),
        leaves[0],
    )
    if isinstance(leaf, MCPError):
        return leaf.message
    if isinstance(leaf, OSError) and leaf.strerror:
        return str(leaf)
    text = str(leaf)
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
