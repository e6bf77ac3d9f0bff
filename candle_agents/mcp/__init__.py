"""MCP client: give a model the tools of Model Context Protocol servers.

Built on the official ``mcp`` SDK (``pip install 'candle-agents[mcp]'``), which
is imported only when a connection opens: configs and tool types work without it.

    from candle_agents.mcp import McpToolset, load_mcp_config

    async with McpToolset(load_mcp_config("mcp.json").values()) as toolset:
        tools = [tool.to_openai_tool() for tool in await toolset.tools()]
        result = await toolset.call("get_current_time", {"timezone": "UTC"})
"""

from candle_agents.mcp.client import McpClient
from candle_agents.mcp.config import McpServerConfig, load_mcp_config
from candle_agents.mcp.errors import McpConfigError, McpConnectionError, McpError
from candle_agents.mcp.tools import McpTool, McpToolResult
from candle_agents.mcp.toolset import McpToolset

__all__ = [
    "McpClient",
    "McpConfigError",
    "McpConnectionError",
    "McpError",
    "McpServerConfig",
    "McpTool",
    "McpToolResult",
    "McpToolset",
    "load_mcp_config",
]
