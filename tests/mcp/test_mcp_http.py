"""McpClient over Streamable HTTP and legacy HTTP+SSE against the demo server."""

from __future__ import annotations

import asyncio
import time

import pytest

from candle_agents.mcp import McpClient, McpConnectionError, McpServerConfig
from tests.support.mcp_servers import SECRET_WORD, free_port, http_config, start_http_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_streamable_http_calls(demo_http_url):
    async with McpClient(http_config(demo_http_url)) as client:
        assert client.config.resolved_transport == "streamable_http"
        names = {tool.name for tool in await client.list_tools()}
        assert {"get_secret_word", "add", "whoami"} <= names
        assert (await client.call_tool("get_secret_word")).text == SECRET_WORD
        added = await client.call_tool("add", {"a": 20, "b": 22})
        assert (added.text, added.structured) == ("42", {"result": 42})
        assert (await client.call_tool("image")).text == "[image/png image, 70 bytes]"
        failed = await client.call_tool("fail", {"message": "nope"})
        assert failed.is_error and "nope" in failed.text
        timed_out = await client.call_tool("slow", {"seconds": 30}, timeout=0.5)
        assert timed_out.text == "tool 'slow' on MCP server 'demo' timed out after 0.5 s"
        results = await asyncio.gather(
            *(client.call_tool("echo", {"text": str(i)}) for i in range(10))
        )
        assert [r.text for r in results] == [str(i) for i in range(10)]


async def test_headers_and_bearer_token_reach_the_server(demo_http_url):
    config = http_config(demo_http_url, headers={"X-Team": "blue"}, bearer_token="s3cret")
    async with McpClient(config) as client:
        assert (await client.call_tool("whoami")).text == "Bearer s3cret"
        assert (await client.call_tool("header", {"name": "x-team"})).text == "blue"
    async with McpClient(
        http_config(demo_http_url, headers={"Authorization": "Basic abc"})
    ) as client:
        assert (await client.call_tool("whoami")).text == "Basic abc"


async def test_connection_refused_is_quick_and_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/mcp"
    client = McpClient(McpServerConfig("remote", url=url))
    started = time.monotonic()
    with pytest.raises(McpConnectionError) as info:
        await client.connect()
    assert time.monotonic() - started < 5
    assert f"MCP server 'remote' (streamable_http: {url}) could not be reached" in str(info.value)
    result = await client.call_tool("echo", {"text": "x"})
    assert result.is_error and url in result.text


@pytest.mark.parametrize("era", ["2026", "legacy"])
async def test_server_restarted_between_calls(era):
    # A legacy server keeps sessions, which a restart forgets; a 2026 one is stateless
    # but the client's tool-change subscription drops. Either way the call succeeds.
    extra = ["--legacy"] if era == "legacy" else []
    url, stop = start_http_server(*extra)
    port = int(url.split(":")[2].split("/")[0])
    try:
        async with McpClient(http_config(url)) as client:
            assert (await client.call_tool("echo", {"text": "before"})).text == "before"
            stop()
            url, stop = start_http_server(*extra, port=port)
            after = await client.call_tool("get_secret_word")
            assert (after.text, after.is_error) == (SECRET_WORD, False)
            stop()
            down = await client.call_tool("echo", {"text": "x"})
            assert down.is_error and "could not be reached" in down.text
    finally:
        stop()


async def test_server_killed_mid_call_is_a_prompt_error():
    url, stop = start_http_server()
    try:
        async with McpClient(http_config(url, call_timeout=30)) as client:
            call = asyncio.ensure_future(client.call_tool("slow", {"seconds": 20}))
            await asyncio.sleep(0.5)
            stop()
            started = time.monotonic()
            result = await call
            assert time.monotonic() - started < 5
            assert (
                result.is_error and "'slow'" in result.text and "MCP server 'demo'" in result.text
            )
    finally:
        stop()


async def test_legacy_sse_transport(demo_sse_url):
    async with McpClient(http_config(demo_sse_url, bearer_token="t0k")) as client:
        assert client.config.resolved_transport == "sse"
        assert "add" in {tool.name for tool in await client.list_tools()}
        assert (await client.call_tool("add", {"a": 1, "b": 2})).text == "3"
        assert (await client.call_tool("whoami")).text == "Bearer t0k"
        assert (await client.call_tool("get_secret_word")).text == SECRET_WORD
