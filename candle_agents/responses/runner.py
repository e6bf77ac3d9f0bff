"""One response: the agent loop that turns a Responses request into events and output items.

Each turn renders the whole conversation to chat messages and streams one chat
completion through :class:`OpenAIAdapter` (so tool-call parsing, forced tool
choice and structured output are the chat layer's). Text becomes a ``message``
item; calls of MCP tools become ``mcp_call`` items that run here (in parallel
when the model asked for several) before the next turn; calls of the client's
function tools end the response with ``function_call`` items. The rendered
prompt of each turn extends the previous one, so the engine's prefix cache
serves the earlier turns' tokens again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from candle_agents.errors import CandleError
from candle_agents.mcp import McpTool, McpToolResult
from candle_agents.openai import OpenAIAdapter
from candle_agents.responses.items import (
    approval_answers,
    approval_request_item,
    execution_error,
    function_call_item,
    list_tools_item,
    listed_servers,
    listed_tools,
    mcp_call_item,
    message_item,
    parse_input,
    reasoning_item,
    to_chat_messages,
)
from candle_agents.responses.protocol import (
    IncompleteDetails,
    McpToolParam,
    Response,
    ResponseError,
    ResponseEvent,
    ResponsesRequest,
    ResponseUsage,
)
from candle_agents.responses.tools import (
    McpBinding,
    McpNames,
    chat_tool_choice,
    chat_tools,
    check_tool_choice,
    mcp_names,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_TURNS = 10


@dataclass
class _Call:
    """A tool call being streamed: which item it fills and where."""

    kind: str  # function_call | mcp_call | mcp_approval_request
    item: dict[str, Any]
    index: int
    tool: tuple[McpBinding, McpTool] | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class TurnResult:
    """What one model turn leaves for the loop, filled in as its events stream."""

    calls: list[_Call] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        """Cut off by the token limit: the response ends incomplete, its calls unrun."""
        return self.finish_reason == "length"


class ResponseRun:
    """Runs one request to its end; iterate :meth:`events`, then read :attr:`response`.

    ``history`` is the conversation so far (the items of the previous
    response's chain); ``mcp`` the MCP servers the request may use. Problems
    with the request raise :class:`OpenAIError` from the constructor, before
    any event.
    """

    def __init__(
        self,
        adapter: OpenAIAdapter,
        request: ResponsesRequest,
        *,
        history: list[dict[str, Any]] | None = None,
        mcp: list[McpBinding] | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
    ) -> None:
        self.adapter = adapter
        self.request = request
        self.history = list(history or ())
        self.mcp = list(mcp or ())
        self.max_turns = max_turns
        self.input = parse_input(request.input)
        self.turns = 0
        self.tool_calls_made = 0
        self._seq = 0
        self._names: McpNames = {}
        self.function_tools = [t for t in request.tools or () if not isinstance(t, McpToolParam)]
        check_tool_choice(request.tool_choice, self.function_tools, self.mcp)
        self._approvals = approval_answers(
            self.history, self.input, {b.param.server_label for b in self.mcp}
        )
        model = adapter.check_model(request.model)
        self.response = Response(
            model=model,
            instructions=request.instructions,
            metadata=request.metadata or {},
            parallel_tool_calls=request.parallel_tool_calls,
            previous_response_id=request.previous_response_id,
            max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls,
            store=request.store,
            temperature=request.temperature,
            top_p=request.top_p,
            text=request.text.model_dump(by_alias=True, exclude_none=True)
            if request.text and request.text.format
            else {"format": {"type": "text"}},
            tool_choice=_dump(request.tool_choice) if request.tool_choice else "auto",
            tools=[t.model_dump(exclude_none=True) for t in request.tools or ()],
            usage=ResponseUsage(),
        )

    # -- the conversation ------------------------------------------------------------------

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """Every item so far: history, this request's input, this response's output."""
        return [*self.history, *self.input, *self.response.output]

    # -- events ----------------------------------------------------------------------------

    def _event(self, type: str, **fields: Any) -> ResponseEvent:
        self._seq += 1
        # Copies: items keep changing after their event (text grows, calls finish).
        fields = {k: copy.deepcopy(v) if isinstance(v, dict) else v for k, v in fields.items()}
        return ResponseEvent(type=type, sequence_number=self._seq, **fields)

    def _snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    async def events(self) -> AsyncIterator[ResponseEvent]:
        """Every event of the response, from response.created to its final state."""
        yield self._event("response.created", response=self._snapshot())
        yield self._event("response.in_progress", response=self._snapshot())
        try:
            async for event in self._run():
                yield event
        except CandleError as exc:
            self._fail("server_error", str(exc))
        except Exception as exc:  # a bug: report it in the response, never hang the client
            logger.exception("a response failed")
            self._fail("server_error", f"internal error ({type(exc).__name__}); see the log")
        self.response.completed_at = int(time.time())
        if self.response.status == "in_progress":
            self.response.status = "completed"
        final = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
        }.get(self.response.status, "response.failed")
        yield self._event(final, response=self._snapshot())

    def _fail(self, code: str, message: str) -> None:
        self.response.status = "failed"
        self.response.error = ResponseError(code=code, message=message)

    def _incomplete(self, reason: str) -> None:
        self.response.status = "incomplete"
        self.response.incomplete_details = IncompleteDetails(reason=reason)

    def _add(self, item: dict[str, Any]) -> tuple[int, ResponseEvent]:
        self.response.output.append(item)
        index = len(self.response.output) - 1
        return index, self._event("response.output_item.added", output_index=index, item=item)

    def _done(self, index: int) -> ResponseEvent:
        item = self.response.output[index]
        return self._event("response.output_item.done", output_index=index, item=item)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[ResponseEvent]:
        async for event in self._list_tools():
            yield event
        if self.response.status == "failed":
            return
        async for event in self._answer_approvals():
            yield event
        forced = self.request.tool_choice not in (None, "auto", "none")
        while True:
            if self.turns >= self.max_turns:
                self._incomplete("max_turns")
                return
            budget = self._output_budget()
            if budget is not None and budget <= 0:
                self._incomplete("max_output_tokens")
                return
            turn = TurnResult()
            async for event in self._turn(self._chat_request(forced, budget), turn):
                yield event
            self.turns += 1
            if turn.truncated:
                self._incomplete("max_output_tokens")
                return
            mcp_calls = [c for c in turn.calls if c.kind == "mcp_call"]
            if mcp_calls:
                async for event in self._run_calls(mcp_calls):
                    yield event
            if not mcp_calls or len(mcp_calls) < len(turn.calls):
                return  # a final answer, or calls the client runs / must approve
            forced = False

    def _output_budget(self) -> int | None:
        limit = self.request.max_output_tokens
        if limit is None:
            return None
        assert self.response.usage is not None
        return limit - self.response.usage.output_tokens

    async def _list_tools(self) -> AsyncIterator[ResponseEvent]:
        """Connect to each MCP server and list its tools (an mcp_list_tools item, once)."""
        listed = listed_servers(self.history)
        for binding in self.mcp:
            label = binding.param.server_label
            index = None
            if label not in listed:
                item = list_tools_item(label)
                index, added = self._add(item)
                yield added
                yield self._event(
                    "response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index
                )
            try:
                binding.client = await binding.connect()
                tools = await binding.client.list_tools()
            except CandleError as exc:
                message = f"could not list the tools of MCP server {label!r}: {exc}"
                if index is not None:
                    self.response.output[index]["error"] = message
                    yield self._event(
                        "response.mcp_list_tools.failed",
                        item_id=self.response.output[index]["id"],
                        output_index=index,
                    )
                    yield self._done(index)
                self._fail("mcp_server_error", message)
                return
            allowed = binding.param.allowed()
            binding.tools = [t for t in tools if allowed is None or t.name in allowed]
            if index is not None:
                self.response.output[index]["tools"] = listed_tools(binding.tools)
                yield self._event(
                    "response.mcp_list_tools.completed",
                    item_id=self.response.output[index]["id"],
                    output_index=index,
                )
                yield self._done(index)
        self._names = mcp_names(self.function_tools, self.mcp)

    async def _answer_approvals(self) -> AsyncIterator[ResponseEvent]:
        calls = []
        for asked, answer in self._approvals:
            binding = next(b for b in self.mcp if b.param.server_label == asked["server_label"])
            tool = next((t for t in binding.tools if t.name == asked["name"]), None)
            item = mcp_call_item(asked["server_label"], asked["name"], asked["arguments"])
            item["approval_request_id"] = asked["id"]
            index, added = self._add(item)
            yield added
            if not answer["approve"] or tool is None:
                reason = answer.get("reason") or "the user denied this call"
                if tool is None:
                    reason = f"tool {asked['name']!r} is no longer offered by the server"
                item["status"] = "failed"
                item["error"] = execution_error(reason)
                yield self._event(
                    "response.mcp_call.failed", item_id=item["id"], output_index=index
                )
                yield self._done(index)
                continue
            calls.append(_Call("mcp_call", item, index, (binding, tool), [asked["arguments"]]))
        if calls:
            async for event in self._run_calls(calls):
                yield event

    def _chat_request(self, forced: bool, budget: int | None) -> dict[str, Any]:
        req = self.request
        tools = chat_tools(self.function_tools, self._names)
        body: dict[str, Any] = {
            "model": self.response.model,
            "messages": to_chat_messages(self.conversation, req.instructions),
            "stream": True,
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": req.parallel_tool_calls,
        }
        for key in ("temperature", "top_p", "seed", "top_k", "thinking_budget"):
            if getattr(req, key) is not None:
                body[key] = getattr(req, key)
        if req.reasoning is not None and req.reasoning.effort is not None:
            body["reasoning_effort"] = req.reasoning.effort
        if budget is not None:
            body["max_tokens"] = budget
        if tools:
            # The tools stay in the prompt even when no more calls are allowed: the turns
            # then share their prefix in the cache, and "none" is enforced in decoding.
            body["tools"] = tools
            limit = req.max_tool_calls
            spent = limit is not None and self.tool_calls_made >= limit
            body["tool_choice"] = (
                "none" if spent else chat_tool_choice(req.tool_choice, forced, self._names)
            )
        fmt = req.text.format if req.text else None
        if fmt is not None and fmt.type != "text" and body.get("tool_choice") in (None, "none"):
            body["response_format"] = (
                {"type": "json_object"}
                if fmt.type == "json_object"
                else {
                    "type": "json_schema",
                    "json_schema": {
                        "name": fmt.name or "response",
                        "schema": fmt.schema_ or {"type": "object"},
                        "strict": fmt.strict,
                    },
                }
            )
        return body

    # -- one model turn --------------------------------------------------------------------

    async def _turn(self, body: dict[str, Any], turn: TurnResult) -> AsyncIterator[ResponseEvent]:
        """Stream one chat completion as events; its calls and finish reason go to ``turn``."""
        stream = self.adapter.chat_completion_stream(body)
        message: int | None = None  # output index of this turn's message item
        reasoning: int | None = None  # output index of this turn's reasoning item
        held = ""  # leading whitespace, kept back until real text comes
        by_index: dict[int, _Call] = {}
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    u = chunk.usage
                    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
                    assert self.response.usage is not None
                    details = u.completion_tokens_details
                    self.response.usage.add(
                        u.prompt_tokens,
                        cached,
                        u.completion_tokens,
                        details.reasoning_tokens if details else 0,
                    )
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.reasoning_content:
                        if reasoning is None:
                            reasoning, added = self._add(reasoning_item())
                            yield added
                        yield self._reasoning_delta(reasoning, delta.reasoning_content)
                    if reasoning is not None and (delta.content or delta.tool_calls):
                        for event in self._close_reasoning(reasoning):
                            yield event
                        reasoning = None
                    if delta.content:
                        if message is None:
                            held += delta.content
                            if not held.strip():
                                continue
                            text, held = held, ""
                            message, added = self._add(message_item())
                            yield added
                            yield self._event(
                                "response.content_part.added",
                                item_id=self.response.output[message]["id"],
                                output_index=message,
                                content_index=0,
                                part={"type": "output_text", "text": "", "annotations": []},
                            )
                        else:
                            text = delta.content
                        self.response.output[message]["content"][0]["text"] += text
                        yield self._event(
                            "response.output_text.delta",
                            item_id=self.response.output[message]["id"],
                            output_index=message,
                            content_index=0,
                            delta=text,
                            logprobs=[],
                        )
                    for tc in delta.tool_calls or ():
                        call = by_index.get(tc.index)
                        if call is None:
                            if message is not None:
                                for event in self._close_message(message):
                                    yield event
                                message = None
                            name = tc.function.name if tc.function else ""
                            call = self._open_call(name or "", tc.id)
                            by_index[tc.index] = call
                            turn.calls.append(call)
                            if call.kind != "mcp_approval_request":
                                call.index, added = self._add(call.item)
                                yield added
                        piece = tc.function.arguments if tc.function else None
                        if piece:
                            call.arguments.append(piece)
                            if call.kind != "mcp_approval_request":
                                kind = (
                                    "function_call" if call.kind == "function_call" else "mcp_call"
                                )
                                call.item["arguments"] += piece
                                yield self._event(
                                    f"response.{kind}_arguments.delta",
                                    item_id=call.item["id"],
                                    output_index=call.index,
                                    delta=piece,
                                )
                    if choice.finish_reason:
                        turn.finish_reason = choice.finish_reason
        finally:
            await stream.aclose()
        if reasoning is not None:
            for event in self._close_reasoning(reasoning):
                yield event
        if message is not None:
            for event in self._close_message(message):
                yield event
        for call in turn.calls:
            for event in self._close_call(call, turn.truncated):
                yield event

    def _open_call(self, name: str, call_id: str | None) -> _Call:
        found = self._names.get(name)
        if found is None:
            return _Call("function_call", function_call_item(name, call_id), -1)
        binding, tool = found
        label = binding.param.server_label
        if binding.param.needs_approval(tool.name):
            return _Call("mcp_approval_request", approval_request_item(label, tool.name), -1, found)
        return _Call("mcp_call", mcp_call_item(label, tool.name, ""), -1, found)

    def _reasoning_delta(self, index: int, text: str) -> ResponseEvent:
        item = self.response.output[index]
        item["content"][0]["text"] += text
        return self._event(
            "response.reasoning_text.delta",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            delta=text,
        )

    def _close_reasoning(self, index: int) -> list[ResponseEvent]:
        item = self.response.output[index]
        item["status"] = "completed"
        text = item["content"][0]["text"]
        done = self._event(
            "response.reasoning_text.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            text=text,
        )
        return [done, self._done(index)]

    def _close_message(self, index: int) -> list[ResponseEvent]:
        item = self.response.output[index]
        item["status"] = "completed"
        part = item["content"][0]
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", text=part["text"], logprobs=[], **common),
            self._event("response.content_part.done", part=part, **common),
            self._done(index),
        ]

    def _close_call(self, call: _Call, truncated: bool) -> list[ResponseEvent]:
        """Finish a streamed call's item; one cut off by the token limit never runs."""
        arguments = "".join(call.arguments) or "{}"
        call.item["arguments"] = arguments
        if call.kind == "mcp_approval_request":
            if truncated:
                return []
            call.index, added = self._add(call.item)
            return [added, self._done(call.index)]
        common = {"item_id": call.item["id"], "output_index": call.index}
        kind = "function_call" if call.kind == "function_call" else "mcp_call"
        events = [self._event(f"response.{kind}_arguments.done", arguments=arguments, **common)]
        if call.kind == "mcp_call" and not truncated:
            return events  # done once the tool has answered
        call.item["status"] = "incomplete" if truncated else "completed"
        return [*events, self._done(call.index)]

    # -- MCP calls -------------------------------------------------------------------------

    async def _run_calls(self, calls: list[_Call]) -> AsyncIterator[ResponseEvent]:
        limit = self.request.max_tool_calls
        runs: list[Awaitable[McpToolResult]] = []
        for call in calls:
            yield self._event(
                "response.mcp_call.in_progress", item_id=call.item["id"], output_index=call.index
            )
            over = limit is not None and self.tool_calls_made >= limit
            self.tool_calls_made += 1
            runs.append(self._call(call, over))
        # Several calls of one turn run at once; their items finish in output order.
        results = await asyncio.gather(*runs)
        for call, result in zip(calls, results):
            if result.is_error:
                call.item["status"] = "failed"
                call.item["error"] = execution_error(result.text)
                kind = "response.mcp_call.failed"
            else:
                call.item["status"] = "completed"
                call.item["output"] = result.text
                kind = "response.mcp_call.completed"
            yield self._event(kind, item_id=call.item["id"], output_index=call.index)
            yield self._done(call.index)

    async def _call(self, call: _Call, over_limit: bool) -> McpToolResult:
        if over_limit:
            return McpToolResult(
                text=f"not run: the response's max_tool_calls ({self.request.max_tool_calls}) "
                "is reached",
                is_error=True,
            )
        assert call.tool is not None
        binding, tool = call.tool
        return await binding.call(tool, call.item["arguments"])


def _dump(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value
