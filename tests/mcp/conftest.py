"""Fixtures for the MCP client tests: demo servers shared by the whole session."""

from __future__ import annotations

import pytest

from tests.support.mcp_servers import running_http_server, stdio_config

pytest.importorskip("mcp", reason="the MCP client tests need the 'mcp' extra")


@pytest.fixture(scope="session")
def demo_http_url() -> str:
    """URL of a demo server over Streamable HTTP, running for the whole session."""
    with running_http_server() as url:
        yield url


@pytest.fixture(scope="session")
def demo_sse_url() -> str:
    """URL of a demo server over the legacy HTTP+SSE transport."""
    with running_http_server(sse=True) as url:
        yield url


@pytest.fixture
def demo_stdio_config():
    """The config of a fresh demo server over stdio."""
    return stdio_config()
