"""McpClient over stdio against the demo server and mcp-server-time: real processes, no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime

import pytest
import pytest_asyncio

from candle_agents.mcp import McpClient, McpConnectionError, McpServerConfig
from tests.support.mcp_servers import SECRET_WORD, stdio_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def demo():
    """One demo server over stdio, shared by the tests that leave it running."""
    async with McpClient(stdio_config()) as client:
        yield client


def process_gone(pid: int) -> bool:
    """Exited and reaped: no process, not even a zombie."""
    return not os.path.exists(f"/proc/{pid}") if sys.platform == "linux" else True


async def test_lists_tools_with_schemas(demo):
    tools = {tool.name: tool for tool in await demo.list_tools()}
    assert {"get_secret_word", "add", "echo", "slow", "crash", "fail", "image"} <= set(tools)
    add = tools["add"]
    assert (add.server, add.exposed_name, add.description) == ("demo", "add", "Add two integers.")
    assert add.input_schema["type"] == "object"
    assert set(add.input_schema["properties"]) == {"a", "b"}
    assert add.input_schema["required"] == ["a", "b"]
    assert add.to_openai_tool()["function"]["parameters"] == add.input_schema
    assert await demo.list_tools() == list(tools.values())  # cached, same answer


async def test_calls(demo):
    secret = await demo.call_tool("get_secret_word")
    assert (secret.text, secret.is_error) == (SECRET_WORD, False)
    echo = await demo.call_tool("echo", {"text": "héllo\nworld"})
    assert echo.text == "héllo\nworld"
    added = await demo.call_tool("add", {"a": 2, "b": 40})
    assert (added.text, added.structured) == ("42", {"result": 42})
    assert added.content == [{"type": "text", "text": "42"}]


async def test_content_kinds(demo):
    image = await demo.call_tool("image")
    assert image.text == "[image/png image, 70 bytes]" and not image.is_error
    assert image.content[0]["type"] == "image" and image.content[0]["mimeType"] == "image/png"
    mixed = await demo.call_tool("mixed")
    assert mixed.text.split("\n") == [
        "[audio/wav audio, 10 bytes]",
        "embedded notes",
        "[resource file:///data.bin (application/octet-stream), 5 bytes]",
        "[resource link: file:///README.md]",
    ]
    structured = await demo.call_tool("structured_only")
    assert structured.text == '{"answer":42,"tags":["a","b"]}'
    assert structured.structured == {"answer": 42, "tags": ["a", "b"]}


async def test_errors_are_results(demo):
    failed = await demo.call_tool("fail", {"message": "boom"})
    assert failed.is_error and "boom" in failed.text
    unknown = await demo.call_tool("no_such_tool")
    assert unknown.is_error
    assert "has no tool 'no_such_tool'" in unknown.text and "get_secret_word" in unknown.text
    not_object = await demo.call_tool("echo", ["text"])
    assert not_object.is_error and "must be a JSON object" in not_object.text
    not_json = await demo.call_tool("echo", {"text": {1, 2}})
    assert not_json.is_error and "not valid JSON" in not_json.text
    bad_args = await demo.call_tool("add", {"a": "many"})
    assert bad_args.is_error and "a" in bad_args.text
    assert (await demo.call_tool("add", {"a": 1, "b": 1})).text == "2"


async def test_timeout_is_a_prompt_error_and_the_session_survives(demo):
    started = time.monotonic()
    result = await demo.call_tool("slow", {"seconds": 30}, timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.is_error
    assert result.text == "tool 'slow' on MCP server 'demo' timed out after 0.5 s"
    assert (await demo.call_tool("echo", {"text": "still here"})).text == "still here"


async def test_concurrent_calls_from_many_tasks(demo):
    results = await asyncio.gather(
        *(demo.call_tool("add", {"a": i, "b": 1}) for i in range(20)),
        demo.call_tool("slow", {"seconds": 0.3}),
    )
    assert [r.text for r in results[:20]] == [str(i + 1) for i in range(20)]
    assert results[20].text == "slept 0.3 s"


async def test_allowed_tools_filter_and_refuse():
    config = stdio_config(allowed_tools=["echo", "add"])
    async with McpClient(config) as client:
        assert sorted(t.name for t in await client.list_tools()) == ["add", "echo"]
        refused = await client.call_tool("get_secret_word")
        assert (
            refused.is_error and "not enabled" in refused.text and SECRET_WORD not in refused.text
        )
        assert (await client.call_tool("echo", {"text": "ok"})).text == "ok"


async def test_env_and_cwd_reach_the_child(tmp_path):
    config = stdio_config(env={"CANDLE_MCP_TEST": "kiwi"}, cwd=str(tmp_path))
    async with McpClient(config) as client:
        assert (await client.call_tool("getenv", {"name": "CANDLE_MCP_TEST"})).text == "kiwi"
        assert (await client.call_tool("getenv", {"name": "PATH"})).text  # the safe base env
        assert (await client.call_tool("cwd")).text == str(tmp_path)


async def test_crash_is_a_prompt_error_then_reconnects_and_close_reaps():
    client = McpClient(stdio_config(call_timeout=30))
    first_pid = int((await client.call_tool("pid")).text)
    started = time.monotonic()
    crashed = await client.call_tool("crash")
    assert time.monotonic() - started < 5
    assert crashed.is_error
    assert "'crash'" in crashed.text and "MCP server 'demo'" in crashed.text
    assert "exited" in crashed.text
    assert not client.connected
    # The crashing call is not resent (it may have had effects): the next call reconnects.
    second_pid = int((await client.call_tool("pid")).text)
    assert second_pid != first_pid and client.connected
    assert process_gone(first_pid)
    await client.aclose()
    assert not client.connected and process_gone(second_pid)
    closed = await client.call_tool("echo", {"text": "x"})
    assert closed.is_error and "closed" in closed.text


async def test_close_from_another_task_ends_calls_in_flight():
    client = McpClient(stdio_config())
    pid = int((await client.call_tool("pid")).text)
    call = asyncio.ensure_future(client.call_tool("slow", {"seconds": 30}))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.ensure_future(client.aclose())
    result = await asyncio.wait_for(call, 5)
    assert time.monotonic() - started < 8
    assert result.is_error and "'slow'" in result.text and "closed" in result.text
    assert process_gone(pid)


async def test_server_gone_between_calls_reconnects_and_retries():
    async with McpClient(stdio_config()) as client:
        pid = int((await client.call_tool("pid")).text)
        os.kill(pid, 9)
        for _ in range(100):  # the session notices the closed pipe on its own
            if not client.connected:
                break
            await asyncio.sleep(0.02)
        result = await client.call_tool("get_secret_word")
        assert (result.text, result.is_error) == (SECRET_WORD, False)


async def test_connection_errors_name_server_command_and_cause():
    bad_module = McpClient(
        McpServerConfig("time", command=sys.executable, args=["-m", "nope_nope"])
    )
    with pytest.raises(McpConnectionError) as info:
        await bad_module.connect()
    message = str(info.value)
    assert message.startswith(f"MCP server 'time' (stdio: {sys.executable} -m nope_nope) exited")
    assert "No module named nope_nope" in message
    assert info.value.server == "time"
    missing = McpClient(McpServerConfig("gone", command="no-such-mcp-server-binary"))
    with pytest.raises(McpConnectionError, match=r"'gone'.*could not be started.*No such file"):
        await missing.connect()
    result = await missing.call_tool("anything")
    assert result.is_error and "could not be started" in result.text


async def test_connect_timeout_stops_a_silent_server():
    silent = McpClient(
        McpServerConfig(
            "silent",
            command=sys.executable,
            args=["-c", "import time; time.sleep(60)"],
            connect_timeout=1.0,
        )
    )
    started = time.monotonic()
    with pytest.raises(
        McpConnectionError, match=r"'silent'.*did not finish initialize within 1.0 s"
    ):
        await silent.connect()
    assert time.monotonic() - started < 8


async def test_mcp_server_time_from_pypi():
    config = McpServerConfig(
        "time", command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]
    )
    async with McpClient(config) as client:
        tools = {tool.name: tool for tool in await client.list_tools()}
        assert {"get_current_time", "convert_time"} <= set(tools)
        assert "timezone" in tools["get_current_time"].input_schema["properties"]
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert not result.is_error
        payload = json.loads(result.text)
        assert payload["timezone"] == "UTC"
        assert datetime.fromisoformat(payload["datetime"]).utcoffset().total_seconds() == 0
