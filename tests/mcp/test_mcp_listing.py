"""Tool listing: pagination cursors, and tools/list_changed in both protocol eras."""

from __future__ import annotations

import asyncio

import pytest

from candle_agents.mcp import McpClient
from tests.support.mcp_servers import http_config, stdio_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def wait_for_tool(client: McpClient, name: str) -> list[str]:
    """Tool names once ``name`` shows up (the change notice travels asynchronously)."""
    for _ in range(100):
        names = [tool.name for tool in await client.list_tools()]
        if name in names:
            return names
        await asyncio.sleep(0.02)
    return names


async def test_pagination_and_list_changed_2026():
    # 15 own tools + 120 extra ones, served 50 per page.
    async with McpClient(stdio_config("demo", "--many-tools", "120")) as client:
        names = [tool.name for tool in await client.list_tools()]
        assert len(names) == 135 == len(set(names))
        assert names[-1] == "extra_119" and "get_secret_word" in names
        assert (await client.call_tool("extra_119")).text == "extra 119"

        added = await client.call_tool("add_tool", {"name": "fresh_tool"})
        assert added.text == "added fresh_tool"
        # No refresh=True: the server's change notice drops the cached list.
        names = await wait_for_tool(client, "fresh_tool")
        assert "fresh_tool" in names and len(names) == 136
        assert (await client.call_tool("fresh_tool")).text == "hello from fresh_tool"


async def test_list_changed_legacy_handshake():
    async with McpClient(stdio_config("demo", "--legacy")) as client:
        assert len(await client.list_tools()) == 15
        await client.call_tool("add_tool", {"name": "late"})
        assert "late" in await wait_for_tool(client, "late")


async def test_unlisted_tool_is_found_on_a_second_look(demo_http_url):
    async with (
        McpClient(http_config(demo_http_url)) as watcher,
        McpClient(http_config(demo_http_url)) as other,
    ):
        await watcher.list_tools()
        await other.call_tool("add_tool", {"name": "surprise"})
        # Even if the change notice has not arrived yet, calling the tool looks again.
        assert (await watcher.call_tool("surprise")).text == "hello from surprise"
