"""LlamaIndex <-> OpenAI chat: LlamaIndex chat messages as an OpenAI request's messages,
and OpenAI responses and streams as LlamaIndex chat and completion responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    LogProb,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.utils import parse_partial_json

from candle_agents.errors import ConfigError
from candle_agents.integrations._tools import history_call
from candle_agents.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChoiceLogprobs,
    UsageInfo,
)
from candle_agents.openai.protocol import (
    CompletionResponse as OpenAICompletion,
)

__all__ = [
    "arguments_dict",
    "chat_response",
    "chat_stream",
    "chat_stream_as_completion",
    "chat_to_completion",
    "completion_response",
    "completion_stream",
    "to_openai_messages",
]


# -- LlamaIndex messages -> OpenAI messages --------------------------------------------------

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as OpenAI chat messages.

    Assistant tool calls come from ``ToolCallBlock``s (or, for older code, from
    ``additional_kwargs["tool_calls"]``); tool results carry ``tool_call_id``
    in ``additional_kwargs`` (a result without one answers the next open call).
    """
    out: list[dict[str, Any]] = []
    open_calls: list[str] = []  # ids of the last assistant turn's calls not yet answered
    for i, msg in enumerate(messages):
        role = _ROLES.get(MessageRole(msg.role))
        if role is None:  # pragma: no cover - MessageRole is a closed enum
            raise ConfigError(f"messages[{i}] has unknown role {msg.role!r}", field="messages")
        text = _text(msg, i)
        entry: dict[str, Any] = {"role": role, "content": text}
        name = msg.additional_kwargs.get("name")
        if role == "assistant":
            thoughts = [b.content for b in msg.blocks if isinstance(b, ThinkingBlock) and b.content]
            if thoughts:  # for templates that render earlier reasoning
                entry["reasoning_content"] = "".join(thoughts)
            calls = _history_calls(msg, i)
            if calls:
                entry["tool_calls"] = calls
                entry["content"] = text or None
                open_calls = [c["id"] for c in calls]
        elif role == "tool":
            call_id = msg.additional_kwargs.get("tool_call_id")
            if call_id is None:
                call_id = open_calls[0] if open_calls else f"call_{i}"
            if call_id in open_calls:
                open_calls.remove(call_id)
            entry["tool_call_id"] = str(call_id)
        if name and role != "system":
            entry["name"] = str(name)
        out.append(entry)
    return out


def _text(msg: ChatMessage, index: int) -> str:
    parts: list[str] = []
    for block in msg.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, (ToolCallBlock, CachePoint, ThinkingBlock)):
            continue  # tool calls travel separately; the others are provider hints
        else:
            raise ConfigError(
                f"messages[{index}] holds a {type(block).__name__}; CandleLLM's models read "
                "text only: send text (or describe the content in words)",
                field="messages",
            )
    return "\n".join(parts)


def _history_calls(msg: ChatMessage, index: int) -> list[dict[str, Any]]:
    blocks = [b for b in msg.blocks if isinstance(b, ToolCallBlock)]
    calls = [
        history_call(b.tool_call_id or f"call_{index}_{k}", b.tool_name, b.tool_kwargs)
        for k, b in enumerate(blocks)
    ]
    if calls:
        return calls
    for k, call in enumerate(msg.additional_kwargs.get("tool_calls") or []):
        if hasattr(call, "model_dump"):  # e.g. the openai SDK's objects
            call = call.model_dump()
        if not isinstance(call, dict) or "function" not in call:
            continue
        function = call["function"]
        calls.append(
            history_call(
                call.get("id") or f"call_{index}_{k}", function["name"], function.get("arguments")
            )
        )
    return calls


def arguments_dict(arguments: dict[str, Any] | str) -> dict[str, Any]:
    """A ToolCallBlock's arguments as a dict; streamed partial JSON is parsed leniently."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments.strip():
        return {}
    try:
        parsed = parse_partial_json(arguments)
    except (ValueError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


# -- OpenAI responses -> LlamaIndex responses ----------------------------------------------


def _usage_kwargs(usage: UsageInfo | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _logprobs(logprobs: ChoiceLogprobs | None) -> list[list[LogProb]] | None:
    if logprobs is None or logprobs.content is None:
        return None
    return [
        [LogProb(token=t.token, logprob=t.logprob, bytes=t.bytes or [])]
        + [LogProb(token=x.token, logprob=x.logprob, bytes=x.bytes or []) for x in t.top_logprobs]
        for t in logprobs.content
    ]


def _message(
    text: str, calls: list[tuple[str | None, str, str]], final: bool, reasoning: str = ""
) -> ChatMessage:
    """An assistant message: its reasoning as a ThinkingBlock, text, then one
    ToolCallBlock per (id, name, arguments).

    Arguments stay JSON text while streaming (they may be partial) and become a
    dict once complete. ``additional_kwargs["tool_calls"]`` repeats the calls in
    OpenAI's shape for LlamaIndex code that still reads them there.
    """
    blocks: list[Any] = [ThinkingBlock(content=reasoning)] if reasoning else []
    if text or not calls:
        blocks.append(TextBlock(text=text))
    openai_calls = []
    for call_id, name, arguments in calls:
        kwargs: dict[str, Any] | str = arguments
        if final:
            try:
                decoded = json.loads(arguments or "{}")
                kwargs = decoded if isinstance(decoded, dict) else arguments
            except ValueError:
                kwargs = arguments
        blocks.append(ToolCallBlock(tool_call_id=call_id, tool_name=name, tool_kwargs=kwargs))
        openai_calls.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    extra = {"tool_calls": openai_calls} if openai_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def chat_response(response: ChatCompletionResponse) -> ChatResponse:
    choice = response.choices[0]
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    reasoning = choice.message.reasoning_content or ""
    return ChatResponse(
        message=_message(choice.message.content or "", calls, final=True, reasoning=reasoning),
        raw=response,
        logprobs=_logprobs(choice.logprobs),
        additional_kwargs=_usage_kwargs(response.usage),
    )


async def chat_stream(chunks: AsyncIterator[ChatCompletionChunk]) -> ChatResponseAsyncGen:
    text = reasoning = ""
    calls: dict[int, list[Any]] = {}  # index -> [id, name, arguments so far]
    last: ChatCompletionChunk | None = None
    try:
        async for chunk in chunks:
            last = chunk
            if not chunk.choices:
                continue  # the usage chunk: reported once the stream ends
            choice = chunk.choices[0]
            delta = choice.delta
            piece = delta.content or ""
            text += piece
            thought = delta.reasoning_content or ""
            reasoning += thought
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, [None, "", ""])
                if call.id:
                    entry[0] = call.id
                if call.function is not None:
                    entry[1] += call.function.name or ""
                    entry[2] += call.function.arguments or ""
            if piece or thought or delta.tool_calls or choice.logprobs is not None:
                yield ChatResponse(
                    message=_message(text, _ordered(calls), final=False, reasoning=reasoning),
                    delta=piece,
                    additional_kwargs={"thinking_delta": thought} if thought else {},
                    raw=chunk,
                    logprobs=_logprobs(choice.logprobs),
                )
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # an early exit aborts the request and frees its KV blocks
    # The last response completes the message: arguments decoded, usage attached.
    yield ChatResponse(
        message=_message(text, _ordered(calls), final=True, reasoning=reasoning),
        delta="",
        raw=last,
        additional_kwargs=_usage_kwargs(last.usage if last is not None else None),
    )


def _ordered(calls: dict[int, list[Any]]) -> list[tuple[str | None, str, str]]:
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


def chat_to_completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(
        text=response.message.content or "",
        raw=response.raw,
        logprobs=response.logprobs,
        additional_kwargs=response.additional_kwargs,
    )


async def chat_stream_as_completion(
    chunks: AsyncIterator[ChatCompletionChunk],
) -> CompletionResponseAsyncGen:
    async for response in chat_stream(chunks):
        yield CompletionResponse(
            text=response.message.content or "",
            delta=response.delta,
            raw=response.raw,
            logprobs=response.logprobs,
            additional_kwargs=response.additional_kwargs,
        )


def completion_response(response: OpenAICompletion) -> CompletionResponse:
    return CompletionResponse(
        text=response.choices[0].text,
        raw=response,
        additional_kwargs=_usage_kwargs(response.usage),
    )


async def completion_stream(
    chunks: AsyncIterator[OpenAICompletion],
) -> CompletionResponseAsyncGen:
    text = ""
    last: OpenAICompletion | None = None
    try:
        async for chunk in chunks:
            last = chunk
            if not chunk.choices:
                continue
            piece = chunk.choices[0].text
            text += piece
            if piece:
                yield CompletionResponse(text=text, delta=piece, raw=chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield CompletionResponse(
        text=text,
        delta="",
        raw=last,
        additional_kwargs=_usage_kwargs(last.usage if last is not None else None),
    )
