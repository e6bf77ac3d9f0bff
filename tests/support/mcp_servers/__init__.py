"""MCP servers for tests: the demo server and helpers to run it.

Other tests import it as ``tests.support.mcp_servers``::

    from tests.support.mcp_servers import stdio_config, start_http_server
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from candle_agents.mcp import McpServerConfig

DEMO_SERVER = Path(__file__).with_name("demo.py")
SECRET_WORD = "the secret word is PAPAYA-7"

__all__ = [
    "DEMO_SERVER",
    "SECRET_WORD",
    "free_port",
    "http_config",
    "running_http_server",
    "start_http_server",
    "stdio_config",
]


def stdio_config(name: str = "demo", *extra_args: str, **fields: Any) -> McpServerConfig:
    """A config running the demo server over stdio; ``fields`` set other config fields."""
    return McpServerConfig(
        name=name, command=sys.executable, args=[str(DEMO_SERVER), *extra_args], **fields
    )


def http_config(url: str, name: str = "demo", **fields: Any) -> McpServerConfig:
    """A config for a demo server already running at ``url``."""
    return McpServerConfig(name=name, url=url, **fields)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http_server(
    *extra_args: str, sse: bool = False, port: int | None = None, timeout: float = 30.0
) -> tuple[str, Callable[[], None]]:
    """Start the demo server over HTTP in a subprocess; returns ``(url, stop)``.

    Streamable HTTP at ``/mcp``, or the legacy HTTP+SSE transport at ``/sse``
    with ``sse=True``. Returns once the server accepts connections; ``stop()``
    kills it (and may be called more than once). Pass ``port`` to restart a
    server on the port of a stopped one.
    """
    port = port or free_port()
    command = [sys.executable, str(DEMO_SERVER), "--sse" if sse else "--http"]
    process = subprocess.Popen([*command, "--port", str(port), *extra_args])

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()

    deadline = time.monotonic() + timeout
    while True:
        # uvicorn binds its socket only after the app's startup, so accepting means ready.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if process.poll() is not None:
            raise RuntimeError(f"demo MCP server exited with code {process.returncode}: {command}")
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"demo MCP server did not listen on port {port} within {timeout} s")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/{'sse' if sse else 'mcp'}", stop


@contextlib.contextmanager
def running_http_server(*extra_args: str, sse: bool = False) -> Iterator[str]:
    """``start_http_server`` as a context manager yielding the URL."""
    url, stop = start_http_server(*extra_args, sse=sse)
    try:
        yield url
    finally:
        stop()
