"""McpToolset: several servers under one namespace."""

from __future__ import annotations

import asyncio
import sys

import pytest
import pytest_asyncio

from candle_agents.mcp import (
    McpClient,
    McpConfigError,
    McpConnectionError,
    McpError,
    McpServerConfig,
    McpToolset,
)
from tests.support.mcp_servers import SECRET_WORD, free_port, http_config, stdio_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def toolset(demo_http_url):
    """The demo over HTTP, and a second demo ("other") over stdio: every tool name collides,
    except on "other" only echo, add and get_secret_word are enabled."""
    configs = [
        http_config(demo_http_url, name="demo"),
        stdio_config(
            "other", "--echo-prefix", "other:", allowed_tools=["echo", "add", "get_secret_word"]
        ),
    ]
    async with McpToolset(configs) as tools:
        yield tools


async def test_colliding_names_are_prefixed_and_routed(toolset):
    assert toolset.server_labels() == ["demo", "other"]
    tools = {tool.exposed_name: tool for tool in await toolset.tools()}
    assert {"demo__echo", "other__echo", "demo__add", "other__add"} <= set(tools)
    assert "echo" not in tools
    # Tools only one server offers keep their own names.
    assert {"image", "slow", "whoami"} <= set(tools)
    assert "other__image" not in tools and "demo__image" not in tools
    assert (tools["other__echo"].server, tools["other__echo"].name) == ("other", "echo")
    assert tools["demo__echo"].to_openai_tool()["function"]["name"] == "demo__echo"

    assert (await toolset.call("demo__echo", {"text": "hi"})).text == "hi"
    assert (await toolset.call("other__echo", {"text": "hi"})).text == "other:hi"
    assert (await toolset.call("whoami")).text == "no authorization header"  # HTTP: demo
    assert (await toolset.call("other__get_secret_word")).text == SECRET_WORD


async def test_unknown_and_concurrent_calls(toolset):
    unknown = await toolset.call("nope", {})
    assert (
        unknown.is_error and "unknown tool 'nope'" in unknown.text and "demo__echo" in unknown.text
    )
    results = await asyncio.gather(
        *(
            toolset.call(f"{server}__add", {"a": i, "b": 1})
            for i in range(5)
            for server in ("demo", "other")
        )
    )
    assert [r.text for r in results] == [str(i + 1) for i in range(5) for _ in range(2)]


async def test_client_access_and_errors(toolset):
    assert isinstance(toolset.client("other"), McpClient)
    assert toolset.client("other").connected
    with pytest.raises(McpError, match=r"no MCP server labelled 'x'"):
        toolset.client("x")
    with pytest.raises(McpConfigError, match=r"labelled 'demo'"):
        await toolset.add_server(stdio_config("demo"))


async def test_add_server_and_failures(demo_http_url):
    async with McpToolset() as tools:
        added = await tools.add_server(http_config(demo_http_url, name="one"))
        assert "get_secret_word" in {t.exposed_name for t in added}
        with pytest.raises(McpConnectionError, match=r"'down'.*could not be reached"):
            await tools.add_server(
                McpServerConfig("down", url=f"http://127.0.0.1:{free_port()}/mcp")
            )
        assert tools.server_labels() == ["one"]
    with pytest.raises(McpConfigError):
        McpToolset([stdio_config("a"), stdio_config("a")])
    broken = McpToolset(
        [
            http_config(demo_http_url, name="fine"),
            McpServerConfig("broken", command=sys.executable, args=["-m", "no_such_module_x"]),
        ]
    )
    with pytest.raises(McpConnectionError, match=r"'broken'.*No module named no_such_module_x"):
        await broken.start()
    # The other server stays usable; the broken one is left out of the tools.
    assert "get_secret_word" in {t.exposed_name for t in await broken.tools()}
    await broken.aclose()
