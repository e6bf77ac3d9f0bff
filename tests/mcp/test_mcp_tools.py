"""Tool naming and result text, on MCP wire dicts (no server needed)."""

from __future__ import annotations

import re

from candle_agents.mcp import McpTool
from candle_agents.mcp.tools import (
    assign_exposed_names,
    result_from_wire,
    sanitize_name,
    tool_from_wire,
)

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def tool(server: str, name: str) -> McpTool:
    return tool_from_wire(server, {"name": name, "inputSchema": {"type": "object"}})


def test_tool_from_wire_and_openai_form():
    made = tool_from_wire(
        "demo",
        {
            "name": "add",
            "description": "Add two integers.",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "annotations": {"readOnlyHint": True},
        },
    )
    assert (made.server, made.name, made.exposed_name) == ("demo", "add", "add")
    assert made.annotations == {"readOnlyHint": True}
    assert made.to_openai_tool() == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    }
    bare = tool_from_wire("demo", {"name": "ping", "inputSchema": {}})
    assert bare.input_schema == {"type": "object", "properties": {}}
    assert bare.description == "" and bare.annotations is None
    assert hash(bare) == hash(tool_from_wire("demo", {"name": "ping", "inputSchema": {}}))


def test_sanitize_name():
    assert sanitize_name("get_time-2") == "get_time-2"
    assert sanitize_name("files.read/all") == "files_read_all"
    assert sanitize_name("") == "tool"
    long = sanitize_name("x" * 100)
    assert NAME_RE.match(long) and long != sanitize_name("x" * 99 + "y")


def test_collisions_get_server_prefixes_and_names_stay_unique():
    tools = [
        tool("demo", "echo"),
        tool("other", "echo"),
        tool("demo", "add"),
        tool("other", "a.b"),
        tool("other", "a_b"),
        tool("s" * 40, "t" * 40),
        tool("u" * 40, "t" * 40),
    ]
    named = assign_exposed_names(tools)
    exposed = [t.exposed_name for t in named]
    assert exposed[:3] == ["demo__echo", "other__echo", "add"]
    assert len(set(exposed)) == len(exposed)
    assert all(NAME_RE.match(name) for name in exposed)
    assert [(t.server, t.name) for t in named] == [(t.server, t.name) for t in tools]
    assert assign_exposed_names(tools) == named


def test_result_text_rules():
    result = result_from_wire(
        {
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
                {"type": "resource", "resource": {"uri": "file:///a", "text": "inline"}},
                {
                    "type": "resource",
                    "resource": {"uri": "file:///b", "mimeType": "application/pdf", "blob": "MTIz"},
                },
                {"type": "resource_link", "uri": "file:///c", "name": "c"},
                {"type": "text", "text": "last"},
            ],
            "isError": False,
        }
    )
    assert result.text.split("\n") == [
        "first",
        "[image/png image, 8 bytes]",
        "[audio/wav audio, 3 bytes]",
        "inline",
        "[resource file:///b (application/pdf), 3 bytes]",
        "[resource link: file:///c]",
        "last",
    ]
    assert not result.is_error and len(result.content) == 7


def test_structured_only_and_errors():
    only = result_from_wire({"content": [], "structuredContent": {"a": [1, "é"]}})
    assert only.text == '{"a":[1,"é"]}' and only.structured == {"a": [1, "é"]}
    both = result_from_wire(
        {"content": [{"type": "text", "text": "3"}], "structuredContent": {"result": 3}}
    )
    assert (both.text, both.structured) == ("3", {"result": 3})
    failed = result_from_wire({"content": [{"type": "text", "text": "boom"}], "isError": True})
    assert failed.is_error and failed.text == "boom"
