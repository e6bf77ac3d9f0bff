"""Anthropic Messages API wire types (pydantic v2): requests, messages, stream events, errors.

Field names and shapes are Anthropic's, so the official ``anthropic`` client and
the tools built on it work unchanged. Unknown request fields (``cache_control``,
``citations``, newer options) are ignored, so newer clients keep working;
content this server cannot serve (images, documents, server tools) is accepted
by the schema and refused by the translator with a message that says why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- request content blocks ---------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlockParam(_Request):
    type: Literal["text"]
    text: str


class OtherBlockParam(_Request):
    """Media and server-side blocks: named in the schema so the error can say why."""

    type: Literal[
        "image",
        "document",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "container_upload",
    ]


class ToolUseBlockParam(_Request):
    """A tool call the assistant made, in the history."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


ResultPartParam = Annotated[TextBlockParam | OtherBlockParam, Field(discriminator="type")]


class ToolResultBlockParam(_Request):
    """A tool's result, in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPartParam] = ""
    is_error: bool = False


class ThinkingBlockParam(_Request):
    """An earlier turn's reasoning; its signature is not checked (ours are opaque too)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(_Request):
    """Encrypted reasoning from Anthropic's models: nothing a local model can read."""

    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlockParam = Annotated[
    TextBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | OtherBlockParam,
    Field(discriminator="type"),
]


class MessageParam(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


# -- tools, tool choice, thinking, output format -----------------------------------------


class ToolParam(_Request):
    """A client tool. Server tools (``web_search_...``, ``bash_...``) carry another type."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_.\-]{1,64}$")
    description: str | None = None
    # Required of client tools; optional here so that a server tool is refused by the
    # translator with its reason rather than for a missing schema.
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent


class _ToolChoiceBase(_Request):
    disable_parallel_tool_use: bool = False


class ToolChoiceAuto(_ToolChoiceBase):
    type: Literal["auto"]


class ToolChoiceAny(_ToolChoiceBase):
    type: Literal["any"]


class ToolChoiceTool(_ToolChoiceBase):
    type: Literal["tool"]
    name: str


class ToolChoiceNone(_Request):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class ThinkingEnabled(_Request):
    type: Literal["enabled"]
    # Anthropic asks for at least 1024; local models think usefully on less.
    budget_tokens: int = Field(ge=1)


class ThinkingAdaptive(_Request):
    type: Literal["adaptive"]


class ThinkingDisabled(_Request):
    type: Literal["disabled"]


ThinkingParam = Annotated[
    ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")
]


class Metadata(_Request):
    user_id: str | None = None


class JsonOutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    format: JsonOutputFormat | None = None


# -- requests ----------------------------------------------------------------------------


class CountTokensRequest(_Request):
    """POST /v1/messages/count_tokens: what shapes the prompt, and nothing else."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None


# -- responses ---------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Response):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(_Response):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Response):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


ContentBlock = Annotated[TextBlock | ToolUseBlock | ThinkingBlock, Field(discriminator="type")]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(_Response):
    """Anthropic counts input as ``input_tokens`` + cache reads (+ cache writes, always 0)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Message(_Response):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(_Response):
    input_tokens: int


# -- stream events -----------------------------------------------------------------------


class TextDelta(_Response):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(_Response):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(_Response):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(_Response):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


BlockDelta = Annotated[
    TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta, Field(discriminator="type")
]


class MessageStartEvent(_Response):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(_Response):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(_Response):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(_Response):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(_Response):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class DeltaUsage(_Response):
    """Totals at the end: output, and the input split into fresh tokens and cache reads."""

    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(_Response):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: DeltaUsage


class MessageStopEvent(_Response):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(_Response):
    type: Literal["ping"] = "ping"


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
)


# -- errors ------------------------------------------------------------------------------


class ErrorDetail(_Response):
    type: str
    message: str


class ErrorResponse(_Response):
    """The body of every error, and the data of a stream's ``error`` event."""

    type: Literal["error"] = "error"
    error: ErrorDetail
