"""OpenAI's responses and stream chunks, shaped from the engine's deltas.

Whole responses from collected deltas (``chat_response``,
``completion_response``) and chunks as deltas come (``chat_chunks``,
``completion_chunks``). In chat, :func:`_split_text` is where a choice's decoded
text becomes message content and tool-call deltas; usage and logprobs take
OpenAI's shapes here too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from candle_agents.engine import StreamDelta, TokenLogprob
from candle_agents.engine.requests import RequestStream
from candle_agents.openai.plan import Plan
from candle_agents.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionTokensDetails,
    DeltaMessage,
    FunctionCallDelta,
    FunctionCallOut,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobInfo,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
    UsageInfo,
)
from candle_agents.openai.reasoning import ReasoningStream
from candle_agents.openai.streams import merge
from candle_agents.openai.tool_parsers import StreamStep, ToolCallDelta, ToolCallStream

# -- chat -------------------------------------------------------------------------------


def chat_response(plan: Plan, results: list[list[StreamDelta]]) -> ChatCompletionResponse:
    """The response of a chat completion from each choice's deltas."""
    choices = []
    for i, deltas in enumerate(results):
        text = "".join(d.text for d in deltas)
        last = deltas[-1]
        reasoning = None
        if plan.reasoning is not None:
            split = plan.reasoning.split(text, plan.reasoning_open)
            reasoning, text = split.reasoning or None, split.content
        message = ResponseMessage(content=text, reasoning_content=reasoning, reasoning=reasoning)
        finish = last.finish_reason or "abort"
        if plan.parser is not None:
            # Tool calls are read from the answer, after any reasoning.
            parsed = plan.parser.parse(text, plan.tools)
            message = ResponseMessage(
                content=parsed.content,
                tool_calls=[
                    ToolCallOut(
                        id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)
                    )
                    for c in parsed.tool_calls
                ]
                or None,
                reasoning_content=reasoning,
                reasoning=reasoning,
            )
            if parsed.tool_calls and finish == "stop":
                finish = "tool_calls"
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=_chat_logprobs(deltas, plan.end_ids) if plan.params[i].logprobs else None,
                finish_reason=finish,
            )
        )
    return ChatCompletionResponse(
        id=plan.request_id, model=plan.model, choices=choices, usage=_usage(results)
    )


async def chat_chunks(
    plan: Plan, streams: list[RequestStream], include_usage: bool
) -> AsyncIterator[ChatCompletionChunk]:
    """The chunks of a streamed chat completion; closes ``streams`` when done."""
    created = int(time.time())

    def chunk(index: int, delta: DeltaMessage, **kw: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=plan.request_id,
            created=created,
            model=plan.model,
            choices=[ChunkChoice(index=index, delta=delta, **kw)],
        )

    tool_streams: list[ToolCallStream | None] = [
        plan.parser.stream(plan.tools) if plan.parser else None for _ in streams
    ]
    reasoning_streams: list[ReasoningStream | None] = [
        plan.reasoning.stream(plan.reasoning_open) if plan.reasoning else None for _ in streams
    ]
    called = [False] * len(streams)
    finals: list[StreamDelta | None] = [None] * len(streams)
    try:
        for i in range(len(streams)):
            yield chunk(i, DeltaMessage(role="assistant", content=""))
        async for i, delta in merge(streams):
            lp = _chat_logprobs([delta], plan.end_ids) if plan.params[i].logprobs else None
            reasoning, text = _split_reasoning(reasoning_streams[i], delta)
            step = _split_text(tool_streams[i], text, delta.finished)
            called[i] = called[i] or bool(step.tool_calls)
            if reasoning or step.content or step.tool_calls or lp is not None:
                yield chunk(
                    i,
                    DeltaMessage(
                        content=step.content or None,
                        tool_calls=[_tool_delta(c) for c in step.tool_calls] or None,
                        reasoning_content=reasoning or None,
                        reasoning=reasoning or None,
                    ),
                    logprobs=lp,
                )
            if delta.finished:
                finals[i] = delta
                finish = delta.finish_reason
                if called[i] and finish == "stop":
                    finish = "tool_calls"
                yield chunk(i, DeltaMessage(), finish_reason=finish)
        if include_usage:
            yield ChatCompletionChunk(
                id=plan.request_id,
                created=created,
                model=plan.model,
                choices=[],
                usage=_usage([[d] for d in finals if d is not None]),
            )
    finally:
        for s in streams:
            s.close()


def _split_reasoning(stream: ReasoningStream | None, delta: StreamDelta) -> tuple[str, str]:
    """A delta of one choice's text as reasoning and the rest (the answer)."""
    if stream is None:
        return "", delta.text
    step = stream.feed(delta.text)
    if delta.finished:
        tail = stream.finish()
        step.reasoning += tail.reasoning
        step.content += tail.content
    return step.reasoning, step.content


def _split_text(tool_stream: ToolCallStream | None, text: str, finished: bool) -> StreamStep:
    """A piece of one choice's answer as what to send: content and tool-call deltas."""
    if tool_stream is None:
        return StreamStep(content=text)
    step = tool_stream.feed(text)
    if finished:
        tail = tool_stream.finish()
        step.content += tail.content
        step.tool_calls += tail.tool_calls
    return step


def _tool_delta(c: ToolCallDelta) -> ToolCallDeltaOut:
    return ToolCallDeltaOut(
        index=c.index,
        id=c.id,
        type="function" if c.id is not None else None,
        function=FunctionCallDelta(name=c.name, arguments=c.arguments),
    )


# -- text completions -------------------------------------------------------------------


def completion_response(
    req: CompletionRequest, plans: list[Plan], per_plan: list[list[list[StreamDelta]]]
) -> CompletionResponse:
    """The response of a text completion: ``n`` choices per prompt, in prompt order."""
    choices, all_results = [], []
    for plan, results in zip(plans, per_plan):
        for i, deltas in enumerate(results):
            all_results.append(deltas)
            text = "".join(d.text for d in deltas)
            choices.append(
                CompletionChoice(
                    index=plan.prompt_index * req.n + i,
                    text=plan.echo + text,
                    logprobs=_completion_logprobs(deltas, len(plan.echo), plan.end_ids)
                    if req.logprobs is not None
                    else None,
                    finish_reason=deltas[-1].finish_reason or "abort",
                )
            )
    return CompletionResponse(
        id=plans[0].request_id,
        model=plans[0].model,
        choices=choices,
        usage=_usage(all_results, prompts=[len(p.prompt_ids) for p in plans]),
    )


async def completion_chunks(
    req: CompletionRequest,
    plans: list[Plan],
    streams: list[RequestStream],
    include_usage: bool,
) -> AsyncIterator[CompletionResponse]:
    """The chunks of a streamed text completion; closes ``streams`` when done."""
    index_plan = [(p.prompt_index * req.n + i, p) for p in plans for i in range(req.n)]
    finals: list[StreamDelta | None] = [None] * len(streams)
    offsets = [0] * len(streams)
    request_id, model = plans[0].request_id, plans[0].model

    def chunk(index: int, text: str, **kw: Any) -> CompletionResponse:
        return CompletionResponse(
            id=request_id,
            model=model,
            choices=[CompletionChoice(index=index, text=text, **kw)],
        )

    try:
        if req.echo:
            for k, (index, plan) in enumerate(index_plan):
                offsets[k] = len(plan.echo)
                yield chunk(index, plan.echo)
        async for k, delta in merge(streams):
            index, plan = index_plan[k]
            lp = None
            if req.logprobs is not None:
                lp = _completion_logprobs([delta], offsets[k], plan.end_ids)
            offsets[k] += len(delta.text)
            if delta.text or lp is not None or delta.finished:
                yield chunk(index, delta.text, logprobs=lp, finish_reason=delta.finish_reason)
            if delta.finished:
                finals[k] = delta
        if include_usage:
            yield CompletionResponse(
                id=request_id,
                model=model,
                choices=[],
                usage=_usage(
                    [[d] for d in finals if d is not None],
                    prompts=[len(p.prompt_ids) for p in plans],
                ),
            )
    finally:
        for s in streams:
            s.close()


# -- usage and logprobs -----------------------------------------------------------------


def _usage(results: list[list[StreamDelta]], prompts: list[int] | None = None) -> UsageInfo:
    finals = [r[-1].usage for r in results if r and r[-1].usage is not None]
    completion = sum(u.completion_tokens for u in finals)
    # Chat: one prompt shared by all choices, counted once.
    shared = finals[0].prompt_tokens if finals else 0
    prompt = sum(prompts) if prompts is not None else shared
    cached = max((u.cached_tokens for u in finals), default=0)
    reasoning = sum(u.reasoning_tokens for u in finals)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning)
        if reasoning
        else None,
    )


def _token_info(lp: TokenLogprob) -> TokenLogprobInfo:
    return TokenLogprobInfo(
        token=lp.token,
        logprob=lp.logprob,
        bytes=list(lp.token.encode("utf-8")),
        top_logprobs=[
            TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8")))
            for _, t, v in lp.top_logprobs
        ],
    )


def _chat_logprobs(deltas: list[StreamDelta], end_ids: frozenset[int]) -> ChoiceLogprobs | None:
    entries = [_token_info(lp) for d in deltas for lp in _visible(d, end_ids)]
    if not entries and len(deltas) == 1:  # a streamed step with nothing to report
        return None
    return ChoiceLogprobs(content=entries)


def _visible(delta: StreamDelta, end_ids: frozenset[int]) -> list[TokenLogprob]:
    """A delta's logprobs without the end-of-turn token that stopped the request:
    it is not part of the text, so OpenAI does not list it either."""
    lps = delta.logprobs or []
    if delta.finish_reason == "stop" and lps and lps[-1].token_id in end_ids:
        return lps[:-1]
    return lps


def _completion_logprobs(
    deltas: list[StreamDelta], offset: int, end_ids: frozenset[int]
) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for lp in (lp for d in deltas for lp in _visible(d, end_ids)):
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t: v for _, t, v in lp.top_logprobs} or None)
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out
