"""LangChain <-> OpenAI chat: LangChain messages as an OpenAI request's messages, and
OpenAI responses and stream chunks as LangChain results and message chunks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatResult

from candle_agents.integrations._tools import history_call
from candle_agents.openai.protocol import ChatCompletionChunk, ChatCompletionResponse, UsageInfo

__all__ = ["PROVIDER", "StreamTail", "chat_result", "convert_messages"]

# The provider name in LangSmith's tracing params and in responses' metadata.
PROVIDER = "candle"

# Content blocks of an AI message that are not text the model wrote: tool calls travel
# in ``tool_calls``, reasoning is not replayed.
_NON_TEXT_AI_BLOCKS = frozenset(
    {
        "tool_use",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "function_call",
        "server_tool_call",
        "server_tool_result",
        "reasoning",
        "thinking",
    }
)


# -- LangChain messages -> OpenAI messages -------------------------------------------------


def convert_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat messages, consecutive same-role turns merged.

    Small models' templates (and the models) expect alternating turns, while LangChain
    histories often hold two system or human messages in a row.
    """
    converted = [_convert_message(m, i) for i, m in enumerate(messages)]
    return _merge_same_roles(converted)


def _convert_message(message: BaseMessage, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if isinstance(message, SystemMessage):
        out = {"role": "system", "content": _text(message.content, where)}
    elif isinstance(message, HumanMessage):
        out = {"role": "user", "content": _text(message.content, where)}
    elif isinstance(message, AIMessage):
        out = _assistant_message(message, where)
    elif isinstance(message, ToolMessage):
        return _tool_message(message, where)
    elif isinstance(message, ChatMessage):
        out = {"role": _chat_role(message.role, where), "content": _text(message.content, where)}
    else:
        raise TypeError(
            f"{where} is a {type(message).__name__}, which ChatCandle cannot send: use "
            "SystemMessage, HumanMessage, AIMessage or ToolMessage"
        )
    if message.name:
        out["name"] = message.name
    return out


def _assistant_message(message: AIMessage, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": "assistant",
        "content": _text(message.content, where, skip=_NON_TEXT_AI_BLOCKS),
    }
    # OpenAI requires ids; a call without one cannot be answered, so any stable id does.
    calls = [
        history_call(c["id"] or f"call_{where}_{i}", c["name"], c["args"])
        for i, c in enumerate(message.tool_calls)
    ]
    # Calls whose arguments did not parse are still what the model wrote: replay them.
    calls += [
        history_call(c.get("id") or f"call_{where}_{i}", c.get("name") or "", c.get("args"))
        for i, c in enumerate(message.invalid_tool_calls, start=len(calls))
    ]
    if calls:
        out["tool_calls"] = calls
    reasoning = _reasoning(message)
    if reasoning:
        out["reasoning_content"] = reasoning  # for templates that render earlier reasoning
    return out


def _reasoning(message: AIMessage) -> str:
    """What a reasoning model thought in ``message``: ours, or standard reasoning blocks."""
    text = message.additional_kwargs.get("reasoning_content")
    if isinstance(text, str):
        return text
    blocks = message.content if isinstance(message.content, list) else []
    return "".join(
        b.get("reasoning", "")
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "reasoning"
    )


def _tool_message(message: ToolMessage, where: str) -> dict[str, Any]:
    content = _text(message.content, where)
    if message.status == "error" and not content.lower().startswith("error"):
        # OpenAI's format has no status: say it in the text, where the model reads it.
        content = f"Error: {content}"
    out = {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
    if message.name:
        out["name"] = message.name
    return out


def _chat_role(role: str, where: str) -> str:
    roles = {
        "system": "system",
        "developer": "system",
        "human": "user",
        "user": "user",
        "ai": "assistant",
        "assistant": "assistant",
    }
    if role not in roles:
        raise ValueError(
            f"{where} has role {role!r}; ChatCandle sends system, developer, user (human) "
            "and assistant (ai) chat messages, and ToolMessage for tool results"
        )
    return roles[role]


def _text(content: str | list[Any], where: str, skip: frozenset[str] = frozenset()) -> str:
    """A message's text; the models served here read text only."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            texts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind not in skip:
            raise ValueError(
                f"{where}.content[{j}] is a {kind!r} block; the models ChatCandle serves "
                "read text only: send text blocks"
            )
    return "\n".join(texts)


def _merge_same_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive system, user or assistant turns from the same speaker (name).

    Tool results are never merged: each answers its own call id.
    """
    merged: list[dict[str, Any]] = []
    for message in messages:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and message["role"] == prev["role"] != "tool"
            and message.get("name") == prev.get("name")
        ):
            prev["content"] = "\n\n".join(t for t in (prev["content"], message["content"]) if t)
            if message.get("tool_calls"):
                prev["tool_calls"] = [*prev.get("tool_calls", []), *message["tool_calls"]]
        else:
            merged.append(dict(message))
    return merged


# -- OpenAI responses -> LangChain messages ------------------------------------------------


def chat_result(response: ChatCompletionResponse) -> ChatResult:
    """A chat completion as LangChain's result: one AIMessage per choice."""
    usage = _usage_metadata(response.usage)
    generations = []
    for choice in response.choices:
        calls, invalid = _tool_calls(choice.message.tool_calls or [])
        metadata: dict[str, Any] = {
            "model_name": response.model,
            "model_provider": PROVIDER,
            "finish_reason": choice.finish_reason,
        }
        if choice.logprobs is not None:
            metadata["logprobs"] = choice.logprobs.model_dump()
        reasoning = choice.message.reasoning_content
        message = AIMessage(
            content=choice.message.content or "",
            # Where LangChain looks for it: content_blocks then show a reasoning block.
            additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=usage,
            response_metadata=metadata,
            id=response.id,
        )
        generations.append(
            ChatGeneration(message=message, generation_info={"finish_reason": choice.finish_reason})
        )
    return ChatResult(generations=generations, llm_output={"model_name": response.model})


def _tool_calls(raw: list[Any]) -> tuple[list[Any], list[Any]]:
    """Parsed calls, and the ones whose arguments are not a JSON object."""
    calls, invalid = [], []
    for call in raw:
        name, arguments = call.function.name, call.function.arguments
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            invalid.append(invalid_tool_call(name=name, args=arguments, id=call.id, error=str(exc)))
            continue
        if not isinstance(args, dict):
            error = f"arguments must be a JSON object, got {type(args).__name__}"
            invalid.append(invalid_tool_call(name=name, args=arguments, id=call.id, error=error))
            continue
        calls.append(tool_call(name=name, args=args, id=call.id))
    return calls, invalid


def _usage_metadata(usage: UsageInfo | None) -> UsageMetadata | None:
    if usage is None:
        return None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    details = usage.completion_tokens_details
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_token_details={"cache_read": cached},
        **({"output_token_details": {"reasoning": details.reasoning_tokens}} if details else {}),
    )


class StreamTail:
    """Turns OpenAI chunks into AIMessageChunks and keeps what the last chunk reports.

    Metadata that LangChain concatenates when chunks are added (model_name,
    finish_reason, usage) is sent once, on the last chunk.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.usage: UsageInfo | None = None

    def take(self, chunk: ChatCompletionChunk) -> AIMessageChunk | None:
        self.id, self.model = chunk.id, chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:  # n == 1: one choice at most
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            reasoning = delta.reasoning_content
            if not (delta.content or delta.tool_calls or reasoning or choice.logprobs):
                return None
            metadata = {}
            if choice.logprobs is not None:
                metadata["logprobs"] = choice.logprobs.model_dump()
            return AIMessageChunk(
                content=delta.content or "",
                # Chunks add up: the pieces concatenate into the whole reasoning.
                additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
                tool_call_chunks=[
                    tool_call_chunk(
                        name=c.function.name if c.function else None,
                        args=c.function.arguments if c.function else None,
                        id=c.id,
                        index=c.index,
                    )
                    for c in delta.tool_calls or []
                ],
                response_metadata=metadata,
                id=chunk.id,
            )
        return None

    def last_message(self) -> AIMessageChunk:
        return AIMessageChunk(
            content="",
            usage_metadata=_usage_metadata(self.usage),
            response_metadata={
                "model_name": self.model,
                "model_provider": PROVIDER,
                "finish_reason": self.finish_reason,
            },
            id=self.id,
            chunk_position="last",
        )
