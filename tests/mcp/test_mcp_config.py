"""MCP server configs: the common file shape, validation messages, transport inference."""

from __future__ import annotations

import json

import pytest

from candle_agents.errors import CandleError, ConfigError
from candle_agents.mcp import McpConfigError, McpError, McpServerConfig, load_mcp_config

FILE = {
    "mcpServers": {
        "time": {
            "command": "python",
            "args": ["-m", "mcp_server_time"],
            "env": {"TZ": "UTC"},
            "cwd": "/tmp",
        },
        "docs": {"url": "https://example.com/mcp", "headers": {"X-Team": "a"}},
        "legacy": {"url": "http://localhost:8000/sse"},
        "typed": {"type": "http", "url": "http://localhost:8000/events/sse"},
        "locked": {"url": "https://x.test/mcp", "bearer_token": "t0k", "allowed_tools": ["a"]},
    }
}


def test_file_shape_from_a_path(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(FILE))
    configs = load_mcp_config(path)
    assert list(configs) == ["time", "docs", "legacy", "typed", "locked"]
    time = configs["time"]
    assert (time.name, time.command, time.args) == ("time", "python", ["-m", "mcp_server_time"])
    assert (time.env, time.cwd, time.resolved_transport) == ({"TZ": "UTC"}, "/tmp", "stdio")
    assert configs["docs"].headers == {"X-Team": "a"}
    assert configs["docs"].resolved_transport == "streamable_http"
    assert configs["legacy"].resolved_transport == "sse"
    # An explicit type wins over the /sse path; "http" means Streamable HTTP.
    assert configs["typed"].transport == "streamable_http"
    assert configs["typed"].resolved_transport == "streamable_http"
    assert configs["locked"].bearer_token == "t0k"
    assert configs["locked"].allowed_tools == ["a"]
    assert load_mcp_config(str(path)) == configs
    assert load_mcp_config(FILE) == configs


def test_defaults_and_vscode_shape():
    configs = load_mcp_config({"servers": {"s": {"type": "stdio", "command": "srv"}}})
    config = configs["s"]
    assert (config.args, config.env, config.headers, config.allowed_tools) == ([], None, {}, None)
    assert (config.connect_timeout, config.call_timeout) == (15.0, 60.0)


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("http://h/mcp", "streamable_http"),
        ("http://h/sse", "sse"),
        ("http://h/sse/", "sse"),
        ("https://h/api/sse?x=1", "sse"),
        ("http://h/ssex", "streamable_http"),
    ],
)
def test_transport_inference(url, transport):
    assert McpServerConfig("s", url=url).resolved_transport == transport


def test_secrets_stay_out_of_repr_and_describe():
    config = McpServerConfig(
        "s", url="https://user:pw@h/mcp", headers={"X-Key": "k1"}, bearer_token="t0k"
    )
    assert "t0k" not in repr(config) and "k1" not in repr(config)
    assert config.describe() == "streamable_http: https://h/mcp"
    stdio = McpServerConfig("s", command="python", args=["-m", "x y"], env={"KEY": "k2"})
    assert "k2" not in repr(stdio)
    assert stdio.describe() == "stdio: python -m 'x y'"


def test_errors_are_config_errors():
    with pytest.raises(McpConfigError) as info:
        McpServerConfig("s")
    assert isinstance(info.value, McpError | ConfigError | CandleError | ValueError)
    assert info.value.field == "s.command"


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({}, ["'s'", "exactly one of 'command'", "neither"]),
        ({"command": "a", "url": "http://h"}, ["exactly one", "both"]),
        ({"command": "a", "colour": 1}, ["'s'", "unknown key 'colour'"]),
        ({"command": "a", "args": "x"}, ["'args' must be a list of strings"]),
        ({"command": "a", "env": {"A": 1}}, ["'env'", "string values"]),
        ({"url": "ftp://h"}, ["http:// or https://"]),
        ({"url": "http://h", "env": {"A": "b"}}, ["'env' only applies to stdio"]),
        ({"command": "a", "headers": {"A": "b"}}, ["'headers' only applies to HTTP"]),
        ({"command": "a", "type": "sse"}, ["transport 'sse' needs a 'url'"]),
        ({"url": "http://h", "transport": "stdio"}, ["needs a 'command'"]),
        ({"url": "http://h", "transport": "carrier-pigeon"}, ["unknown transport"]),
        ({"url": "http://h", "type": "sse", "transport": "http"}, ["disagree"]),
        ({"command": "a", "call_timeout": 0}, ["'call_timeout' must be a positive number"]),
        ({"command": "a", "allowed_tools": "x"}, ["'allowed_tools' must be a list"]),
        ([], ["'s'", "expected an object, got an array"]),
        (
            {"url": "http://h", "bearer_token": "t", "headers": {"authorization": "Basic x"}},
            ["either 'bearer_token' or an Authorization header"],
        ),
    ],
)
def test_entry_errors_name_server_and_problem(entry, words):
    with pytest.raises(McpConfigError) as info:
        load_mcp_config({"mcpServers": {"s": entry}})
    for word in words:
        assert word in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(McpConfigError, match=r"MCP config file not found: .*missing.json"):
        load_mcp_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "mcpServers": {\n    "a": {"command": "x",}\n  }\n}\n')
    with pytest.raises(McpConfigError, match=r"bad.json.*not valid JSON.*line 3"):
        load_mcp_config(bad)
    with pytest.raises(McpConfigError, match=r"has no 'mcpServers' object"):
        load_mcp_config({"servrs": {}})
    array = tmp_path / "array.json"
    array.write_text("[]")
    with pytest.raises(McpConfigError, match=r"must be a JSON object.*got an array"):
        load_mcp_config(array)
    with pytest.raises(McpConfigError, match=r"'mcpServers' must be an object"):
        load_mcp_config({"mcpServers": ["a"]})
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"mcpServers": {"s": {"command": "a", "oops": 1}}}))
    with pytest.raises(McpConfigError, match=r"named.json.*MCP server 's': unknown key 'oops'"):
        load_mcp_config(named)
