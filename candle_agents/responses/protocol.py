"""OpenAI Responses API wire types: the request, the response, its output items and events.

Names and shapes follow OpenAI's API so the official clients parse them. The
request is validated here; input items are validated one by one in
:mod:`candle_agents.responses.items`, which names the bad item's field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# -- request -------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionToolParam(_In):
    """A tool the client runs: the response ends with its ``function_call``."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolNameFilter(_In):
    tool_names: list[str] | None = None


class ApprovalFilter(_In):
    always: ToolNameFilter | None = None
    never: ToolNameFilter | None = None


class McpToolParam(_In):
    """An MCP server whose tools the server runs (``server_url``, or the operator's by label)."""

    type: Literal["mcp"]
    server_label: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")
    server_url: str | None = None
    server_description: str | None = None
    allowed_tools: list[str] | ToolNameFilter | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    require_approval: Literal["always", "never"] | ApprovalFilter | None = None

    def allowed(self) -> list[str] | None:
        if isinstance(self.allowed_tools, ToolNameFilter):
            return self.allowed_tools.tool_names
        return self.allowed_tools

    def needs_approval(self, tool: str) -> bool:
        """OpenAI's rule: approval unless "never" or the tool is in the "never" filter."""
        policy = self.require_approval
        if policy is None or policy == "always":
            return True
        if policy == "never":
            return False
        if policy.never and policy.never.tool_names and tool in policy.never.tool_names:
            return False
        if policy.always and policy.always.tool_names is not None:
            return tool in policy.always.tool_names
        return True


class FunctionToolChoice(_In):
    type: Literal["function"]
    name: str


class McpToolChoice(_In):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


class TextFormat(_In):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_In):
    format: TextFormat | None = None


class ReasoningParam(_In):
    """``reasoning``: how much to think ("none" switches thinking off)."""

    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: str | None = None  # accepted; the raw reasoning text is returned instead


class ResponsesRequest(_In):
    """``POST /v1/responses``. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[FunctionToolParam | McpToolParam] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionToolChoice | McpToolChoice | None = (
        None
    )
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    reasoning: ReasoningParam | None = None
    parallel_tool_calls: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool = False
    # vLLM-style extras.
    seed: int | None = None
    top_k: int | None = Field(default=None, ge=-1)
    thinking_budget: int | None = Field(default=None, ge=1)  # reasoning tokens per turn

    @field_validator("tools", mode="before")
    @classmethod
    def _known_tool_types(cls, tools: Any) -> Any:
        if isinstance(tools, list):
            for i, tool in enumerate(tools):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if kind not in ("function", "mcp"):
                    raise ValueError(
                        f"tools[{i}]: tool type {kind!r} is not supported here; "
                        "use 'function' or 'mcp'"
                    )
        return tools

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 16:
            raise ValueError(f"metadata holds at most 16 keys, got {len(value)}")
        return value


# -- response ------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputTokensDetails(_Out):
    cached_tokens: int = 0


class OutputTokensDetails(_Out):
    reasoning_tokens: int = 0


class ResponseUsage(_Out):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    def add(self, prompt: int, cached: int, completion: int, reasoning: int = 0) -> None:
        self.input_tokens += prompt
        self.input_tokens_details.cached_tokens += cached
        self.output_tokens += completion
        self.output_tokens_details.reasoning_tokens += reasoning
        self.total_tokens = self.input_tokens + self.output_tokens


class ResponseError(_Out):
    code: str
    message: str


class IncompleteDetails(_Out):
    reason: str


Status = Literal["in_progress", "completed", "incomplete", "failed", "cancelled", "queued"]


class Response(_Out):
    """A response object; ``output`` holds OpenAI's output items as plain dicts."""

    id: str = Field(default_factory=lambda: new_id("resp"))
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    status: Status = "in_progress"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None

    @property
    def output_text(self) -> str:
        """The text of every output message, joined (as the openai client's property)."""
        return "".join(
            part.get("text", "")
            for item in self.output
            if item.get("type") == "message"
            for part in item.get("content", ())
            if part.get("type") == "output_text"
        )


class ResponseEvent(_Out):
    """One server-sent event: ``type``, ``sequence_number`` and the type's own fields."""

    type: str
    sequence_number: int


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
