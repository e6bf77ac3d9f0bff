"""McpClient driven from sync code, through the library's background event loop."""

from __future__ import annotations

from candle_agents._loop import run_sync
from candle_agents.mcp import McpClient
from tests.support.mcp_servers import http_config


def test_sync_face_on_the_background_loop(demo_http_url):
    """Objects made and driven entirely through _loop.run_sync, one call per task."""
    client = McpClient(http_config(demo_http_url))
    assert [t for t in run_sync(client.list_tools()) if t.name == "echo"]
    assert run_sync(client.call_tool("echo", {"text": "sync"})).text == "sync"
    assert run_sync(client.call_tool("slow", {"seconds": 5}, timeout=0.2)).is_error
    assert run_sync(client.call_tool("add", {"a": 1, "b": 1})).text == "2"
    run_sync(client.aclose())
    assert not client.connected
