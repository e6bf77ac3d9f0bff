"""OpenAI chat chunks to Anthropic's stream events.

One chat choice becomes one message: ``message_start`` and a ``ping``, then a
content block per run of reasoning (``thinking``), text, or tool call, each
opened, filled with deltas and stopped in order, then ``message_delta`` with
the stop reason and usage totals, and ``message_stop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

from candle_agents.anthropic.errors import AnthropicError
from candle_agents.anthropic.protocol import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    DeltaUsage,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    SignatureDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)
from candle_agents.anthropic.translate import signature, stop_reason, usage
from candle_agents.errors import CandleError
from candle_agents.openai.protocol import ChatCompletionChunk, ToolCallDeltaOut, UsageInfo


async def message_events(
    chunks: AsyncIterator[ChatCompletionChunk],
    *,
    message_id: str,
    model: str,
    input_tokens: int,
    stop_sequences: list[str] | None,
    engine_stop: Callable[[], str | int | None],
) -> AsyncIterator[StreamEvent]:
    """The events of one streamed message; ``chunks`` must end with a usage chunk.

    ``engine_stop`` gives the engine's stop reason once the chunks are done (the
    stop string that matched, which OpenAI's chunks do not carry). Errors of the
    chat layer are raised as :class:`AnthropicError`; ``chunks`` is closed at the end.
    """
    start = Message(
        id=message_id,
        model=model,
        content=[],
        stop_reason=None,
        usage=Usage(input_tokens=input_tokens, output_tokens=0),
    )
    yield MessageStartEvent(message=start)
    yield PingEvent()
    blocks = _Blocks()
    finish: str | None = None
    totals: UsageInfo | None = None
    try:
        async for chunk in chunks:
            totals = chunk.usage or totals
            for choice in chunk.choices:
                delta = choice.delta
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    for event in blocks.thinking(reasoning):
                        yield event
                if delta.content:
                    for event in blocks.text(delta.content):
                        yield event
                for call in delta.tool_calls or ():
                    for event in blocks.tool(call):
                        yield event
                finish = choice.finish_reason or finish
    except CandleError as exc:
        raise AnthropicError.from_exception(exc) from exc
    finally:
        await chunks.aclose()
    for event in blocks.close():
        yield event
    reason, sequence = stop_reason(finish, engine_stop(), stop_sequences)
    final = usage(totals)
    yield MessageDeltaEvent(
        delta=MessageDelta(stop_reason=reason, stop_sequence=sequence),
        usage=DeltaUsage(
            output_tokens=final.output_tokens,
            input_tokens=final.input_tokens,
            cache_creation_input_tokens=final.cache_creation_input_tokens,
            cache_read_input_tokens=final.cache_read_input_tokens,
        )
        if totals is not None
        else DeltaUsage(output_tokens=0),
    )
    yield MessageStopEvent()


class _Blocks:
    """The content blocks of a message as deltas arrive: one open at a time, in order."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "thinking", "text" or "tool_use"
        self.thought = ""  # the open thinking block's text, for its signature
        # Whitespace before any text: held back, and dropped if a call comes next, as the
        # whole response drops a whitespace-only text block.
        self.held = ""
        self.tool_index: dict[int, int] = {}  # OpenAI tool-call index -> block index

    def thinking(self, text: str) -> Iterator[StreamEvent]:
        if self.open != "thinking":
            yield from self.close()
            yield from self._start(ThinkingBlock(thinking="", signature=""), "thinking")
        self.thought += text
        yield ContentBlockDeltaEvent(index=self.index, delta=ThinkingDelta(thinking=text))

    def text(self, text: str) -> Iterator[StreamEvent]:
        if self.open != "text":
            text = self.held + text
            if text.isspace():
                self.held = text
                return
            self.held = ""
            yield from self.close()
            yield from self._start(TextBlock(text=""), "text")
        yield ContentBlockDeltaEvent(index=self.index, delta=TextDelta(text=text))

    def tool(self, call: ToolCallDeltaOut) -> Iterator[StreamEvent]:
        fn = call.function
        if call.id is not None:  # the first delta of a call: id and name
            self.held = ""
            yield from self.close()
            block = ToolUseBlock(id=call.id, name=fn.name if fn and fn.name else "", input={})
            yield from self._start(block, "tool_use")
            self.tool_index[call.index] = self.index
        if fn is not None and fn.arguments:
            index = self.tool_index.get(call.index, self.index)
            yield ContentBlockDeltaEvent(
                index=index, delta=InputJsonDelta(partial_json=fn.arguments)
            )

    def close(self) -> Iterator[StreamEvent]:
        """Stop the open block; a thinking block gets its signature first."""
        if self.open is None:
            return
        if self.open == "thinking":
            yield ContentBlockDeltaEvent(
                index=self.index, delta=SignatureDelta(signature=signature(self.thought))
            )
            self.thought = ""
        self.open = None
        yield ContentBlockStopEvent(index=self.index)

    def _start(
        self, block: TextBlock | ThinkingBlock | ToolUseBlock, kind: str
    ) -> Iterator[StreamEvent]:
        self.index += 1
        self.open = kind
        yield ContentBlockStartEvent(index=self.index, content_block=block)
