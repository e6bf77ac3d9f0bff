"""ResponsesSession: an agent loop over the in-process engine with MCP servers as tools."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from candle_agents.engine import Engine
from candle_agents.mcp import McpServerConfig, McpTool, load_mcp_config
from candle_agents.openai import OpenAIAdapter
from candle_agents.responses.items import mcp_call_result
from candle_agents.responses.protocol import Response, ResponseEvent, ResponseUsage
from candle_agents.responses.service import ResponsesAPI
from candle_agents.responses.store import ResponseStore


@dataclass
class ConversationOptions:
    """How one conversation runs.

    ``max_turns``: model turns before the run stops as "incomplete";
    ``allowed_tools``: tool names the model may call (all when None);
    ``tool_choice``: "auto", "required", "none", or a tool name to call first;
    ``tools``: extra function tools (OpenAI's flat shape) that the caller
    runs: the conversation ends with their ``function_call`` items.
    """

    max_turns: int = 10
    allowed_tools: Sequence[str] | None = None
    tool_choice: str = "auto"
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    parallel_tool_calls: bool = True
    text_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ToolCallRecord:
    """One MCP tool call the loop ran."""

    server: str
    name: str
    arguments: Any
    output: str | None
    error: str | None


@dataclass
class ConversationResult:
    final_message: str
    tool_calls_executed: list[ToolCallRecord]
    turns_taken: int
    output: list[dict[str, Any]]
    usage: ResponseUsage
    status: Literal["completed", "incomplete", "failed"]
    incomplete_reason: str | None
    response: Response

    @property
    def cached_share(self) -> float:
        """Share of the input tokens served from the prefix cache."""
        total = self.usage.input_tokens
        return self.usage.input_tokens_details.cached_tokens / total if total else 0.0


class ResponsesSession:
    """Conversations with MCP tools on one engine.

    ``model``: an :class:`Engine`, or a model name / path for
    :meth:`Engine.shared` (the embedded default when None). Servers added with
    :meth:`add_mcp_server` run without approval prompts: you chose them.
    ``store``: where responses are kept for ``previous_response_id``
    (in memory by default; a path for a SQLite file).
    """

    def __init__(
        self,
        model: Engine | str | None = None,
        *,
        store: ResponseStore | str | os.PathLike[str] | None = ":memory:",
        tool_parser: str | None = None,
        **engine_config: Any,
    ) -> None:
        engine = model if isinstance(model, Engine) else Engine.shared(model, **engine_config)
        self.engine = engine
        self.adapter = OpenAIAdapter(engine, tool_parser=tool_parser)
        if store is not None and not isinstance(store, ResponseStore):
            store = ResponseStore(store)
        self.api = ResponsesAPI(self.adapter, store=store)

    # -- MCP servers -----------------------------------------------------------------------

    async def add_mcp_server(
        self,
        name: str,
        *,
        url: str | None = None,
        command: str | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        headers: dict[str, str] | None = None,
        bearer_token: str | None = None,
        allowed_tools: Sequence[str] | None = None,
        call_timeout: float = 60.0,
    ) -> list[McpTool]:
        """Connect to a server (stdio ``command`` or ``url``) and return its tools."""
        config = McpServerConfig(
            name=name,
            command=command,
            args=list(args),
            env=env,
            cwd=cwd,
            url=url,
            headers=dict(headers or {}),
            bearer_token=bearer_token,
            allowed_tools=list(allowed_tools) if allowed_tools is not None else None,
            call_timeout=call_timeout,
        )
        return await self.add_server_config(config)

    async def add_server_config(self, config: McpServerConfig) -> list[McpTool]:
        self.api.mcp_servers[config.name] = config
        try:
            client = await self.api.pool.get(config)
            return await client.list_tools()
        except BaseException:
            del self.api.mcp_servers[config.name]
            raise

    async def add_mcp_config(self, source: str | os.PathLike[str] | dict[str, Any]) -> None:
        """Add every server of a ``{"mcpServers": {...}}`` file or dict."""
        for config in load_mcp_config(source).values():
            await self.add_server_config(config)

    @property
    def servers(self) -> list[str]:
        return list(self.api.mcp_servers)

    # -- conversations ---------------------------------------------------------------------

    async def run_conversation(
        self,
        messages: str | list[dict[str, Any]],
        options: ConversationOptions | None = None,
        previous_response_id: str | None = None,
    ) -> ConversationResult:
        """Run the loop to a final message (or ``max_turns``) and sum it up."""
        opts = options or ConversationOptions()
        request = await self._request(messages, opts, previous_response_id)
        handle = self.api.open(request, max_turns=opts.max_turns)
        response = await handle.result()
        return _result(response, handle.run.turns)

    async def stream_conversation(
        self,
        messages: str | list[dict[str, Any]],
        options: ConversationOptions | None = None,
        previous_response_id: str | None = None,
    ) -> AsyncIterator[ResponseEvent]:
        """The same run as Responses API events (response.created ... response.completed)."""
        opts = options or ConversationOptions()
        request = await self._request(messages, opts, previous_response_id)
        handle = self.api.open(request, max_turns=opts.max_turns)
        async for event in handle.events():
            yield event

    async def create(self, request: dict[str, Any]) -> Response:
        """A raw Responses API request (``tools`` may name this session's servers by label)."""
        return await self.api.create(request)

    async def _request(
        self,
        messages: str | list[dict[str, Any]],
        opts: ConversationOptions,
        previous_response_id: str | None,
    ) -> dict[str, Any]:
        allowed = list(opts.allowed_tools) if opts.allowed_tools is not None else None
        tools: list[dict[str, Any]] = [
            {"type": "mcp", "server_label": label, "require_approval": "never"}
            | ({"allowed_tools": allowed} if allowed is not None else {})
            for label in self.api.mcp_servers
        ]
        tools += [{"type": "function", **_flat(t)} for t in opts.tools]
        choice: Any = opts.tool_choice
        if choice not in ("auto", "none", "required"):
            choice = await self._named_choice(choice, opts)
        return {
            "input": messages,
            "instructions": opts.instructions,
            "tools": tools,
            "tool_choice": choice if tools else None,
            "previous_response_id": previous_response_id,
            "max_output_tokens": opts.max_output_tokens,
            "max_tool_calls": opts.max_tool_calls,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "seed": opts.seed,
            "parallel_tool_calls": opts.parallel_tool_calls,
            "text": {"format": opts.text_format} if opts.text_format else None,
        }

    async def _named_choice(self, name: str, opts: ConversationOptions) -> dict[str, Any]:
        if any(_flat(t)["name"] == name for t in opts.tools):
            return {"type": "function", "name": name}
        for label, config in self.api.mcp_servers.items():
            client = await self.api.pool.get(config)
            if any(t.name == name for t in await client.list_tools()):
                return {"type": "mcp", "server_label": label, "name": name}
        raise ValueError(
            f"tool_choice {name!r} is not 'auto', 'none', 'required' or a tool of this "
            f"session (servers: {', '.join(self.api.mcp_servers) or 'none'})"
        )

    async def aclose(self) -> None:
        """Disconnect the MCP servers (stdio children exit); the engine stays loaded."""
        await self.api.aclose()

    async def __aenter__(self) -> ResponsesSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _flat(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool in the Responses' flat shape (the chat shape nests it in "function")."""
    inner = tool.get("function", tool)
    return {k: v for k, v in inner.items() if k != "type"}


def _result(response: Response, turns: int) -> ConversationResult:
    messages = [i for i in response.output if i.get("type") == "message"]
    final = "".join(p.get("text", "") for p in messages[-1]["content"]) if messages else ""
    calls = []
    for item in response.output:
        if item.get("type") != "mcp_call":
            continue
        try:
            arguments = json.loads(item.get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = item.get("arguments")
        calls.append(
            ToolCallRecord(
                server=item["server_label"],
                name=item["name"],
                arguments=arguments,
                output=item.get("output"),
                error=mcp_call_result(item).removeprefix("Error: ") if item.get("error") else None,
            )
        )
    reason = response.incomplete_details.reason if response.incomplete_details else None
    if response.status == "failed" and response.error is not None:
        reason = response.error.message
    return ConversationResult(
        final_message=final,
        tool_calls_executed=calls,
        turns_taken=turns,
        output=response.output,
        usage=response.usage or ResponseUsage(),
        status=response.status,  # type: ignore[arg-type]
        incomplete_reason=reason,
        response=response,
    )
