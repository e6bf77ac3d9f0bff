"""MCP server configuration: one dataclass per server, and the common JSON file shape.

The file shape is the one Claude Desktop, Cursor and most MCP hosts use::

    {"mcpServers": {
        "time": {"command": "python", "args": ["-m", "mcp_server_time"]},
        "docs": {"url": "https://example.com/mcp", "headers": {"X-Team": "a"}}
    }}
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from candle_agents.mcp.errors import McpConfigError

Transport = Literal["stdio", "streamable_http", "sse"]

# Spellings of the transport found in the wild ("type" in VS Code and Claude Code configs).
_TRANSPORT_ALIASES: dict[str, Transport] = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "streamable_http",
    "streamable_http": "streamable_http",
    "streamable-http": "streamable_http",
    "streamableHttp": "streamable_http",
}
_STDIO_ONLY = ("args", "env", "cwd")
_HTTP_ONLY = ("headers", "bearer_token")


@dataclass
class McpServerConfig:
    """How to reach one MCP server: a command to run (stdio) or a URL (HTTP).

    ``transport`` None infers it: a command means stdio, a URL whose path ends in
    ``/sse`` the legacy HTTP+SSE transport, any other URL Streamable HTTP.
    ``env`` is merged over a minimal safe environment (PATH, HOME, ...), not over
    this process's whole environment. Secrets (``env``, ``headers``,
    ``bearer_token``) are left out of ``repr``.
    """

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = field(default=None, repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    transport: Transport | None = None
    allowed_tools: list[str] | None = None
    connect_timeout: float = 15.0
    call_timeout: float = 60.0

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> McpServerConfig:
        """Build a config from one ``mcpServers`` entry (``"type"`` stands for ``transport``)."""
        if not isinstance(data, Mapping):
            raise McpConfigError(
                f"MCP server {name!r}: expected an object, got {_json_type(data)}", field=name
            )
        known = {f.name for f in fields(cls)} - {"name"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "type":
                key = "transport"
                if "transport" in data and _canonical(data["transport"]) != _canonical(value):
                    raise McpConfigError(
                        f"MCP server {name!r}: 'type' ({value!r}) and 'transport' "
                        f"({data['transport']!r}) disagree; give one of them",
                        field=f"{name}.type",
                    )
            elif key not in known:
                raise McpConfigError(
                    f"MCP server {name!r}: unknown key {key!r}; expected some of: "
                    f"{', '.join(sorted(known | {'type'}))}",
                    field=f"{name}.{key}",
                )
            values[key] = value
        return cls(name=name, **values)

    @property
    def resolved_transport(self) -> Transport:
        """The transport to use: ``transport`` when given, else inferred from command/url."""
        if self.transport is not None:
            return self.transport
        if self.command is not None:
            return "stdio"
        path = urlsplit(self.url or "").path.rstrip("/")
        return "sse" if path.endswith("/sse") else "streamable_http"

    def describe(self) -> str:
        """``"stdio: python -m server"`` or ``"streamable_http: https://host/mcp"``, for messages.

        Never includes headers, tokens, environment values or URL credentials.
        """
        if self.command is not None:
            return f"stdio: {shlex.join([self.command, *self.args])}"
        parts = urlsplit(self.url or "")
        host = parts.netloc.rpartition("@")[2]
        return f"{self.resolved_transport}: {parts._replace(netloc=host).geturl()}"

    def _validate(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise McpConfigError(
                f"an MCP server name must be a non-empty string, got {name!r}", field="name"
            )

        def fail(key: str, problem: str) -> McpConfigError:
            return McpConfigError(f"MCP server {name!r}: {problem}", field=f"{name}.{key}")

        if (self.command is None) == (self.url is None):
            both = "both" if self.command is not None else "neither"
            raise fail(
                "command",
                f"give exactly one of 'command' (a local stdio server) or 'url' (an HTTP "
                f"server); this entry has {both}",
            )
        for key in ("command", "url", "cwd", "bearer_token"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise fail(key, f"{key!r} must be a non-empty string, got {value!r}")
        if isinstance(self.args, tuple):
            self.args = list(self.args)
        if not _is_str_list(self.args):
            raise fail("args", f"'args' must be a list of strings, got {self.args!r}")
        if self.env is not None and not _is_str_dict(self.env):
            raise fail("env", "'env' must be an object of string values")
        if not _is_str_dict(self.headers):
            raise fail("headers", "'headers' must be an object of string values")
        if self.allowed_tools is not None and not _is_str_list(self.allowed_tools):
            raise fail(
                "allowed_tools",
                f"'allowed_tools' must be a list of strings, got {self.allowed_tools!r}",
            )
        for key in ("connect_timeout", "call_timeout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise fail(key, f"{key!r} must be a positive number of seconds, got {value!r}")
        if self.transport is not None:
            canonical = _canonical(self.transport)
            if canonical is None:
                raise fail(
                    "transport",
                    f"unknown transport {self.transport!r}; use 'stdio', 'streamable_http' "
                    "(or 'http') or 'sse'",
                )
            self.transport = canonical
        if self.url is not None:
            if urlsplit(self.url).scheme not in ("http", "https"):
                raise fail("url", f"'url' must be an http:// or https:// URL, got {self.url!r}")
            if self.transport == "stdio":
                raise fail("transport", "transport 'stdio' needs a 'command', not a 'url'")
            for key in _STDIO_ONLY:
                if getattr(self, key):
                    raise fail(key, f"{key!r} only applies to stdio servers (with a 'command')")
            if self.bearer_token and any(k.lower() == "authorization" for k in self.headers):
                raise fail(
                    "bearer_token",
                    "give either 'bearer_token' or an Authorization header, not both",
                )
        else:
            if self.transport not in (None, "stdio"):
                raise fail(
                    "transport", f"transport {self.transport!r} needs a 'url', not a 'command'"
                )
            for key in _HTTP_ONLY:
                if getattr(self, key):
                    raise fail(key, f"{key!r} only applies to HTTP servers (with a 'url')")


def load_mcp_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> dict[str, McpServerConfig]:
    """Read ``{"mcpServers": {name: entry}}`` from a JSON file path or an already-parsed dict.

    VS Code's ``{"servers": {...}}`` is accepted too; other top-level keys are ignored.
    Raises McpConfigError naming the file, the server and the problem.
    """
    if isinstance(source, Mapping):
        origin, data = "MCP config", source
    elif not isinstance(source, str | os.PathLike):
        raise McpConfigError(
            f"load_mcp_config takes a file path or a dict, got {type(source).__name__}"
        )
    else:
        path = Path(source)
        origin = f"MCP config {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise McpConfigError(f"MCP config file not found: {str(path)!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise McpConfigError(f"cannot read MCP config file {str(path)!r}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise McpConfigError(
                f"{origin} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
    if not isinstance(data, Mapping):
        raise McpConfigError(
            f"{origin} must be a JSON object with an 'mcpServers' object, got {_json_type(data)}"
        )
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None:
        raise McpConfigError(
            f"{origin} has no 'mcpServers' object; expected "
            '{"mcpServers": {"name": {"command": ...} or {"url": ...}}}',
            field="mcpServers",
        )
    servers = data[key]
    if not isinstance(servers, Mapping):
        raise McpConfigError(
            f"{origin}: {key!r} must be an object mapping server names to entries, "
            f"got {_json_type(servers)}",
            field=key,
        )
    configs: dict[str, McpServerConfig] = {}
    for name, entry in servers.items():
        try:
            configs[name] = McpServerConfig.from_dict(name, entry)
        except McpConfigError as exc:
            raise McpConfigError(f"{origin}: {exc}", field=exc.field) from None
    return configs


def _canonical(transport: Any) -> Transport | None:
    return _TRANSPORT_ALIASES.get(transport) if isinstance(transport, str) else None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    for kind, label in names.items():
        if isinstance(value, kind):
            return label
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else type(value).__name__
