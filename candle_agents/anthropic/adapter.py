"""AnthropicAdapter: Anthropic's Messages API on an in-process engine, over the chat pipeline.

For gateways and apps that embed the library without our HTTP server: give it
requests (pydantic objects or plain dicts in Anthropic's shape) and get
Anthropic's messages back, or async iterators of stream events. Every problem
with a request is an :class:`AnthropicError` raised before any output exists.

A Messages request becomes a :class:`ChatCompletionRequest`
(:mod:`candle_agents.anthropic.translate`) that the :class:`OpenAIAdapter`
plans (chat template, tool parser, grammar) and submits; the chat layer's own
results and chunks are then translated back. Nothing is rendered, parsed or
constrained here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from candle_agents.anthropic.errors import AnthropicError, parse_request
from candle_agents.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    StreamEvent,
    TokenCount,
)
from candle_agents.anthropic.stream import message_events
from candle_agents.anthropic.translate import chat_request, message, message_id
from candle_agents.engine import Engine, StreamDelta
from candle_agents.engine.requests import RequestStream
from candle_agents.errors import CandleError, ConfigError
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.plan import Plan
from candle_agents.openai.results import chat_chunks, chat_response
from candle_agents.openai.streams import Chunks, collect_all


class AnthropicAdapter:
    """Anthropic's ``/v1/messages`` and ``/v1/messages/count_tokens`` over one engine.

    ``target``: an :class:`OpenAIAdapter` to share (a server's, so both APIs
    answer to the same model names and queue bound), or an :class:`Engine`,
    for which one is made with ``openai_options`` (``served_model_name``,
    ``tool_parser``, ``max_waiting``).
    """

    def __init__(self, target: Engine | OpenAIAdapter, **openai_options: Any) -> None:
        if isinstance(target, OpenAIAdapter):
            if openai_options:
                raise ConfigError(
                    f"AnthropicAdapter got an OpenAIAdapter and also {', '.join(openai_options)}:"
                    " those options belong to the adapter it was given",
                    field=next(iter(openai_options)),
                )
            self.chat = target
        else:
            self.chat = OpenAIAdapter(target, **openai_options)

    @property
    def engine(self) -> Engine:
        return self.chat.engine

    async def messages(self, request: MessagesRequest | Mapping[str, Any]) -> Message:
        """Create a message, to the end."""
        req = parse_request(MessagesRequest, request)
        plan = self._plan(req)
        try:
            results = await collect_all(self._submit(plan))
        except CandleError as exc:
            raise AnthropicError.from_exception(exc) from exc
        return message(chat_response(plan, results), results[0][-1].stop_reason, req.stop_sequences)

    def messages_stream(
        self, request: MessagesRequest | Mapping[str, Any]
    ) -> AsyncIterator[StreamEvent]:
        """Validate and submit now; the returned iterator yields the message's stream events.

        Closing the iterator early (or dropping it) aborts the request and frees
        its KV blocks.
        """
        req = parse_request(MessagesRequest, request)
        plan = self._plan(req)
        streams = [_Watched(s) for s in self._submit(plan)]
        events = message_events(
            chat_chunks(plan, streams, include_usage=True),
            message_id=message_id(plan.request_id),
            model=plan.model,
            input_tokens=len(plan.prompt_ids),
            stop_sequences=req.stop_sequences,
            engine_stop=lambda: streams[0].stop_reason,
        )
        return Chunks(events, streams)

    async def count_tokens(self, request: CountTokensRequest | Mapping[str, Any]) -> TokenCount:
        """The prompt's length in tokens, rendered exactly as :meth:`messages` renders it."""
        req = parse_request(CountTokensRequest, request)
        return TokenCount(input_tokens=len(self._plan(req).prompt_ids))

    # OpenAI's shapes carry neither the prompt's length before the first chunk
    # (message_start needs it) nor the stop string the engine matched (stop_sequence):
    # so plan and submit as chat_completion() does, then shape with the same
    # chat_response / chat_chunks.

    def _plan(self, req: CountTokensRequest) -> Plan:
        try:
            return self.chat.plan_chat(chat_request(req))
        except CandleError as exc:
            raise AnthropicError.from_exception(exc) from exc

    def _submit(self, plan: Plan) -> list[RequestStream]:
        try:
            return self.chat.submit(plan)
        except CandleError as exc:
            raise AnthropicError.from_exception(exc) from exc


class _Watched:
    """A request stream that remembers the engine's stop reason as its deltas pass."""

    def __init__(self, stream: RequestStream) -> None:
        self._stream = stream
        self.stop_reason: str | int | None = None

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> StreamDelta:
        delta = await self._stream.__anext__()
        if delta.finished:
            self.stop_reason = delta.stop_reason
        return delta

    def close(self) -> None:
        self._stream.close()

    async def aclose(self) -> None:
        self.close()
