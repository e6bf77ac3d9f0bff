"""Messages requests to chat requests, and chat results back to Messages shapes.

Everything the model sees is rendered by the chat pipeline from the
:class:`ChatCompletionRequest` built here; this module only moves fields
between the two APIs and refuses, naming the field, what has no counterpart.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pydantic import ValidationError

from candle_agents.anthropic.errors import AnthropicError
from candle_agents.anthropic.protocol import (
    ContentBlock,
    CountTokensRequest,
    Message,
    MessageParam,
    MessagesRequest,
    OtherBlockParam,
    RedactedThinkingBlockParam,
    StopReason,
    TextBlock,
    TextBlockParam,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingBlockParam,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    Usage,
)
from candle_agents.openai.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    SystemMessage,
    TextPart,
    Tool,
    ToolCallRef,
    ToolMessage,
    UsageInfo,
    UserMessage,
)

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 16  # the chat layer's bound

# -- requests ----------------------------------------------------------------------------


def chat_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request that renders and samples as ``req`` asks (a count: renders only)."""
    fields: dict[str, Any] = dict(
        model=req.model,
        messages=chat_messages(req),
        **_tools(req),
        **_thinking(req),
    )
    if req.output_config is not None and req.output_config.format is not None:
        fields["response_format"] = ResponseFormat(
            type="json_schema",
            json_schema=JsonSchemaFormat(name="output", schema=req.output_config.format.schema_),
        )
    if isinstance(req, MessagesRequest):
        fields.update(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=_stop_sequences(req.stop_sequences),
            user=req.metadata.user_id if req.metadata else None,
        )
    try:
        return ChatCompletionRequest(**fields)
    except ValidationError as exc:  # what the checks here did not foresee
        raise AnthropicError.from_exception(exc) from exc


def chat_messages(req: CountTokensRequest) -> list[ChatMessage]:
    """The conversation as chat messages: system first, tool results as tool messages."""
    out: list[ChatMessage] = []
    system = req.system
    if isinstance(system, list):
        system = [TextPart(text=b.text) for b in system] or None
    if system:
        out.append(SystemMessage(role="system", content=system))
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}"
        if msg.role == "user":
            out.extend(_user_turn(msg, where))
        else:
            out.append(_assistant_turn(msg, where))
    if req.messages[-1].role == "assistant":
        raise AnthropicError(
            f"messages.{len(req.messages) - 1}.role: the last message must be a user turn; "
            "this server does not continue a prefilled assistant turn"
        )
    return out


def _user_turn(msg: MessageParam, where: str) -> list[ChatMessage]:
    """One user turn: its tool results as tool messages, its text as user messages, in order."""
    if isinstance(msg.content, str):
        return [UserMessage(role="user", content=msg.content)]
    out: list[ChatMessage] = []
    texts: list[TextPart] = []
    for j, block in enumerate(msg.content):
        if isinstance(block, TextBlockParam):
            texts.append(TextPart(text=block.text))
        elif isinstance(block, ToolResultBlockParam):
            if texts:
                out.append(UserMessage(role="user", content=texts))
                texts = []
            out.append(_tool_result(block, f"{where}.content.{j}"))
        else:
            raise _misplaced(block, f"{where}.content.{j}", "user")
    if texts or not out:
        out.append(UserMessage(role="user", content=texts))
    return out


def _tool_result(block: ToolResultBlockParam, where: str) -> ToolMessage:
    if isinstance(block.content, str):
        text = block.content
    else:
        parts = []
        for k, part in enumerate(block.content):
            if not isinstance(part, TextBlockParam):
                raise _unsupported(part, f"{where}.content.{k}")
            parts.append(part.text)
        text = "\n".join(parts)
    # Chat messages have no error flag: the model learns of the failure from the text.
    if block.is_error:
        text = f"Error: {text}"
    return ToolMessage(role="tool", content=text, tool_call_id=block.tool_use_id)


def _assistant_turn(msg: MessageParam, where: str) -> AssistantMessage:
    """One assistant turn: text, tool calls, and its reasoning as ``reasoning_content``."""
    if isinstance(msg.content, str):
        return AssistantMessage(role="assistant", content=msg.content)
    texts: list[TextPart] = []
    calls: list[ToolCallRef] = []
    thoughts: list[str] = []
    for j, block in enumerate(msg.content):
        if isinstance(block, TextBlockParam):
            texts.append(TextPart(text=block.text))
        elif isinstance(block, ToolUseBlockParam):
            arguments = json.dumps(block.input, ensure_ascii=False)
            call = FunctionCall(name=block.name, arguments=arguments)
            calls.append(ToolCallRef(id=block.id, function=call))
        elif isinstance(block, ThinkingBlockParam):
            thoughts.append(block.thinking)
        elif isinstance(block, RedactedThinkingBlockParam):
            continue  # encrypted by Anthropic for its own models: nothing to render
        else:
            raise _misplaced(block, f"{where}.content.{j}", "assistant")
    return AssistantMessage(
        role="assistant",
        content=texts or (None if calls else ""),
        tool_calls=calls or None,
        reasoning_content="\n".join(thoughts) if thoughts else None,
    )


def _misplaced(block: Any, where: str, role: str) -> AnthropicError:
    if isinstance(block, OtherBlockParam):
        return _unsupported(block, where)
    return AnthropicError(f"{where}.type: a {block.type!r} block cannot be in a {role} message")


def _unsupported(block: Any, where: str) -> AnthropicError:
    return AnthropicError(
        f"{where}.type: {block.type!r} blocks are not supported: this server's models read "
        "text only"
    )


def _tools(req: CountTokensRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of the chat request."""
    tools = []
    for i, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            raise AnthropicError(
                f"tools.{i}.type: server tool {tool.type!r} is not supported; this server "
                "offers client tools (name, description, input_schema)"
            )
        if tool.input_schema is None:
            raise AnthropicError(f"tools.{i}.input_schema: Field required")
        if tool.input_schema.get("type", "object") != "object":
            # A call's `input` is an object: a schema for anything else could not be met.
            raise AnthropicError(f"tools.{i}.input_schema.type: must be 'object'")
        tools.append(
            Tool(
                function=FunctionDefinition(
                    name=tool.name, description=tool.description, parameters=tool.input_schema
                )
            )
        )
    names = [t.function.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AnthropicError(f"tools: tool names must be unique; repeated: {', '.join(repeated)}")
    choice = req.tool_choice
    out: dict[str, Any] = {"tools": tools or None}
    if choice is None:
        return out
    if isinstance(choice, (ToolChoiceAny, ToolChoiceTool)) and not tools:
        raise AnthropicError(f"tool_choice: type {choice.type!r} needs tools")
    if isinstance(choice, ToolChoiceTool) and choice.name not in names:
        raise AnthropicError(
            f"tool_choice.name: {choice.name!r} is not among the tools ({', '.join(names)})"
        )
    if not tools:
        return out  # auto or none without tools: nothing to choose from
    if isinstance(choice, ToolChoiceNone):
        out["tool_choice"] = "none"
        return out
    if isinstance(choice, ToolChoiceTool):
        out["tool_choice"] = NamedToolChoice(function=NamedFunction(name=choice.name))
    else:
        out["tool_choice"] = "required" if isinstance(choice, ToolChoiceAny) else "auto"
    out["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return out


def _thinking(req: CountTokensRequest) -> dict[str, Any]:
    """The chat request's reasoning fields: the template switch, the effort, the budget."""
    thinking = req.thinking
    if isinstance(thinking, ThinkingEnabled):
        return {
            "chat_template_kwargs": {"enable_thinking": True},
            "thinking_budget": thinking.budget_tokens,
        }
    if isinstance(thinking, ThinkingAdaptive):
        return {"chat_template_kwargs": {"enable_thinking": True}}
    if isinstance(thinking, ThinkingDisabled):
        return {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "none"}
    return {}


def _stop_sequences(sequences: list[str] | None) -> list[str] | None:
    if not sequences:
        return None
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise AnthropicError(
            f"stop_sequences: at most {MAX_STOP_SEQUENCES} stop sequences, got {len(sequences)}"
        )
    for i, seq in enumerate(sequences):
        if not seq:
            raise AnthropicError(f"stop_sequences.{i}: a stop sequence must not be empty")
    return sequences


# -- responses ---------------------------------------------------------------------------


def message(
    chat: ChatCompletionResponse, engine_stop: str | int | None, stop_sequences: list[str] | None
) -> Message:
    """The Messages response for a chat response (one choice) and the engine's stop reason."""
    choice = chat.choices[0]
    out = choice.message
    blocks: list[ContentBlock] = []
    reasoning = out.reasoning_content or out.reasoning
    if reasoning:
        blocks.append(ThinkingBlock(thinking=reasoning, signature=signature(reasoning)))
    if out.content and not out.content.isspace():
        blocks.append(TextBlock(text=out.content))
    for call in out.tool_calls or []:
        blocks.append(
            ToolUseBlock(id=call.id, name=call.function.name, input=tool_input(call.function))
        )
    reason, sequence = stop_reason(choice.finish_reason, engine_stop, stop_sequences)
    return Message(
        id=message_id(chat.id),
        model=chat.model,
        content=blocks,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=usage(chat.usage),
    )


def message_id(chat_id: str) -> str:
    """``msg_`` and the chat request's random part, so logs of both layers line up."""
    return "msg_" + chat_id.rpartition("-")[2]


def stop_reason(
    finish: str | None, engine_stop: str | int | None, stop_sequences: list[str] | None
) -> tuple[StopReason, str | None]:
    """Anthropic's stop reason (and the stop sequence that matched) for a chat finish."""
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    # The engine reports the stop string it matched; a stop token id or EOS ends the turn.
    if finish == "stop" and isinstance(engine_stop, str) and engine_stop in (stop_sequences or ()):
        return "stop_sequence", engine_stop
    return "end_turn", None


def usage(info: UsageInfo | None) -> Usage:
    """Anthropic's usage: fresh input tokens and prefix-cache reads add up to the prompt."""
    if info is None:
        return Usage(input_tokens=0, output_tokens=0)
    cached = info.prompt_tokens_details.cached_tokens if info.prompt_tokens_details else 0
    return Usage(
        input_tokens=info.prompt_tokens - cached,
        output_tokens=info.completion_tokens,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=cached,
    )


def tool_input(function: Any) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is."""
    try:
        value = json.loads(function.arguments)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        # Calls are decoded under a grammar, so this means a parser gap: say so in the log.
        logger.warning("tool call %s: arguments are not a JSON object", function.name)
        return {}
    return value


def signature(thinking: str) -> str:
    """A thinking block's ``signature``. Anthropic's clients require the field and send
    it back; it is an opaque string to them and unchecked here (a digest of the text)."""
    return hashlib.sha256(thinking.encode("utf-8")).hexdigest()[:32]
