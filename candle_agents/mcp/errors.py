"""Errors of the MCP client, in the toolkit's one hierarchy."""

from __future__ import annotations

from candle_agents.errors import CandleError, ConfigError


class McpError(CandleError):
    """Base class of every MCP client error."""


class McpConfigError(McpError, ConfigError):
    """An invalid MCP server configuration; ``field`` names the offending entry or key."""


class McpConnectionError(McpError):
    """An MCP server could not be started, reached or initialized.

    The message names the server, its transport, the command or URL, and the cause.
    """

    def __init__(self, message: str, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server


class _ConnectionLost(McpError):
    """The session ended under a request (internal).

    ``delivered`` is False only when the server provably never got the request
    (the connection was refused, or the server no longer knew the session), so
    resending it cannot run a tool twice.
    """

    def __init__(self, message: str, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered


class _RequestTimeout(McpError):
    """A request outlived its deadline (internal)."""
