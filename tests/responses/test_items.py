"""Responses input items: validation errors that name the field, and their chat rendering."""

from __future__ import annotations

import pytest

from candle_agents.openai.errors import OpenAIError
from candle_agents.responses.items import (
    approval_requests,
    listed_servers,
    parse_input,
    to_chat_messages,
)
from candle_agents.responses.protocol import McpToolParam, ResponsesRequest


def test_a_string_input_is_one_user_message():
    assert parse_input("hi") == [{"type": "message", "role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"role": "robot", "content": "x"}, "input[1].role"),
        ({"type": "function_call_output", "output": "x"}, "input[1].call_id"),
        ({"type": "web_search_call"}, "input[1].type"),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
            "input[1].content[0].type",
        ),
    ],
)
def test_bad_items_name_their_field(item, param):
    with pytest.raises(OpenAIError) as err:
        parse_input([{"role": "user", "content": "ok"}, item])
    assert err.value.status_code == 400
    assert err.value.param == param
    assert err.value.message.startswith("input[1]")


def test_calls_join_the_assistant_turn_and_outputs_follow():
    items = parse_input(
        [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "message", "role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]
    )
    items.append(
        {
            "type": "mcp_call",
            "id": "mcp_1",
            "server_label": "s",
            "name": "t",
            "arguments": "{}",
            "output": None,
            "error": {"type": "mcp_tool_execution_error", "content": [{"text": "x"}]},
        }
    )
    messages = to_chat_messages(items, instructions="be brief")
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert messages[2]["content"] == "Let me look."
    assert messages[2]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"a":1}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert messages[4]["tool_calls"][0]["id"] == "mcp_1"
    assert messages[5]["content"] == "Error: x"


def test_pending_approvals_and_listed_servers():
    asked = {"type": "mcp_approval_request", "id": "r1", "server_label": "s", "name": "t"}
    other = {"type": "mcp_approval_request", "id": "r2", "server_label": "s", "name": "t"}
    answered = {"type": "mcp_approval_response", "approval_request_id": "r2", "approve": False}
    assert set(approval_requests([asked, other, answered])) == {"r1"}
    listing = [
        {"type": "mcp_list_tools", "server_label": "ok", "tools": []},
        {"type": "mcp_list_tools", "server_label": "bad", "tools": [], "error": "down"},
    ]
    assert listed_servers(listing) == {"ok"}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, {"a": True, "b": True}),
        ("always", {"a": True, "b": True}),
        ("never", {"a": False, "b": False}),
        ({"never": {"tool_names": ["a"]}}, {"a": False, "b": True}),
        ({"always": {"tool_names": ["a"]}}, {"a": True, "b": False}),
    ],
)
def test_approval_policy_follows_openai(policy, expected):
    tool = McpToolParam(type="mcp", server_label="s", require_approval=policy)
    assert {name: tool.needs_approval(name) for name in expected} == expected


def test_request_refuses_unknown_tool_types_by_index():
    with pytest.raises(ValueError, match=r"tools\[1\]: tool type 'web_search'"):
        ResponsesRequest(
            input="x",
            tools=[{"type": "function", "name": "f"}, {"type": "web_search"}],
        )
