"""OpenAIAdapter: OpenAI chat and text completions on an in-process engine.

For gateways and apps that embed the library without our HTTP server: give it
requests (pydantic objects or plain dicts in OpenAI's shape) and get OpenAI's
response objects back, or async iterators of chunks. Every problem with a
request is an :class:`OpenAIError` raised before any output exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from candle_agents.engine import Engine, GenerationParams, StreamDelta, TokenLogprob
from candle_agents.engine.grammar import Grammar
from candle_agents.engine.requests import RequestStream
from candle_agents.errors import CandleError
from candle_agents.openai.chat import (
    build_messages,
    offered_tools,
    render_prompt,
    template_supports_tools,
)
from candle_agents.openai.errors import OpenAIError, parse_request
from candle_agents.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    FunctionCallDelta,
    FunctionCallOut,
    ModelCard,
    ModelList,
    NamedToolChoice,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobInfo,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
    UsageInfo,
)
from candle_agents.openai.tool_parsers import (
    ToolCallStream,
    ToolParser,
    detect_tool_parser,
    get_tool_parser,
)

R = TypeVar("R", bound=BaseModel)


@dataclass
class _Plan:
    """A validated request, ready to submit: one prompt, n choices."""

    request_id: str
    model: str
    prompt_ids: list[int]
    params: list[GenerationParams]
    parser: ToolParser | None = None  # set when tools are offered
    tools: list[dict[str, Any]] | None = None
    prompt_index: int = 0


class OpenAIAdapter:
    """OpenAI's chat and completions API over one :class:`Engine`.

    ``served_model_name``: the name(s) requests may use in ``model`` (the first
    is reported in responses); by default the engine's model name.
    ``tool_parser``: force a tool-call format (hermes, llama3_json, mistral,
    pythonic) instead of the one picked from the chat template.
    ``max_waiting``: refuse new requests (503) while this many are queued, and
    completion requests that alone ask for more (prompts x n; 400).
    """

    def __init__(
        self,
        engine: Engine,
        served_model_name: str | list[str] | None = None,
        tool_parser: str | None = None,
        max_waiting: int | None = None,
    ) -> None:
        self.engine = engine
        if isinstance(served_model_name, str):
            served_model_name = [served_model_name]
        self.model_names: list[str] = list(served_model_name or [engine.model_name])
        template = engine.tokenizer.info.chat_template
        self.native_tools = template_supports_tools(template)
        self.tool_parser = get_tool_parser(tool_parser or detect_tool_parser(template))
        self.max_waiting = max_waiting

    # -- models -----------------------------------------------------------------------

    def models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=n, max_model_len=self.engine.max_model_len) for n in self.model_names
            ]
        )

    # -- chat completions -------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest | dict[str, Any]
    ) -> ChatCompletionResponse:
        """Run a chat completion to the end (all ``n`` choices in one batch)."""
        plan = self._plan_chat(parse_request(ChatCompletionRequest, request))
        results = await _collect_all(self._submit(plan))
        choices = []
        for i, deltas in enumerate(results):
            text = "".join(d.text for d in deltas)
            last = deltas[-1]
            message = ResponseMessage(content=text)
            finish = last.finish_reason or "abort"
            if plan.parser is not None:
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
                )
                if parsed.tool_calls and finish == "stop":
                    finish = "tool_calls"
            choices.append(
                ChatChoice(
                    index=i,
                    message=message,
                    logprobs=_chat_logprobs(deltas, self._end_ids(plan.params[i]))
                    if plan.params[i].logprobs
                    else None,
                    finish_reason=finish,
                )
            )
        return ChatCompletionResponse(
            id=plan.request_id, model=plan.model, choices=choices, usage=_usage(results)
        )

    def chat_completion_stream(
        self, request: ChatCompletionRequest | dict[str, Any]
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Validate and submit now; the returned iterator yields OpenAI chunks.

        Closing the iterator early (or dropping it) aborts the requests and
        frees their KV blocks.
        """
        req = parse_request(ChatCompletionRequest, request)
        plan = self._plan_chat(req)
        streams = self._submit(plan)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _Chunks(self._chat_chunks(plan, streams, include_usage), streams)

    async def _chat_chunks(
        self, plan: _Plan, streams: list[RequestStream], include_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
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
        called = [False] * len(streams)
        finals: list[StreamDelta | None] = [None] * len(streams)
        try:
            for i in range(len(streams)):
                yield chunk(i, DeltaMessage(role="assistant", content=""))
            async for i, delta in _merge(streams):
                lp = (
                    _chat_logprobs([delta], self._end_ids(plan.params[i]))
                    if plan.params[i].logprobs
                    else None
                )
                ts = tool_streams[i]
                if ts is None:
                    step_content, calls = delta.text, []
                else:
                    step = ts.feed(delta.text)
                    if delta.finished:
                        tail = ts.finish()
                        step.content += tail.content
                        step.tool_calls += tail.tool_calls
                    step_content, calls = step.content, step.tool_calls
                called[i] = called[i] or bool(calls)
                if step_content or calls or lp is not None:
                    yield chunk(
                        i,
                        DeltaMessage(
                            content=step_content or None,
                            tool_calls=[_tool_delta(c) for c in calls] or None,
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

    def _plan_chat(self, req: ChatCompletionRequest) -> _Plan:
        model = self.check_model(req.model)
        self._check_queue()
        parser = self.tool_parser
        if req.tool_parser:
            parser = _guard(lambda: get_tool_parser(req.tool_parser))
        tools = offered_tools(req)
        messages = build_messages(req, parser, self.native_tools, tools)
        template_tools = tools if self.native_tools else None
        prompt_ids = render_prompt(self.engine, messages, template_tools, req.chat_template_kwargs)
        self._check_length(prompt_ids, "messages")
        grammar = self._grammar(req, parser, tools)
        params = [
            self._params(
                req,
                i,
                prompt_ids,
                max_tokens=req.output_limit(),
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs or 0,
                grammar=grammar,
                skip_special=req.skip_special_tokens
                and not (tools is not None and parser.needs_special_tokens),
            )
            for i in range(req.n)
        ]
        return _Plan(
            _new_id("chatcmpl"),
            model,
            prompt_ids,
            params,
            parser if tools is not None and req.tool_choice != "none" else None,
            tools,
        )

    def _grammar(
        self, req: ChatCompletionRequest, parser: ToolParser, tools: list[dict[str, Any]] | None
    ) -> Grammar | None:
        choice = req.tool_choice
        if tools and choice == "none" and req.response_format is None:
            return Grammar.lark(parser.call_grammar(tools, "none"))
        if tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
            mode = choice.function.name if isinstance(choice, NamedToolChoice) else "required"
            return Grammar.lark(parser.call_grammar(tools, mode, req.parallel_tool_calls))
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_schema":
            return Grammar.json_schema(fmt.json_schema.schema_ or {"type": "object"})
        if fmt is not None and fmt.type == "json_object":
            return Grammar.json_object()
        if tools:
            # "auto": text, or calls that are well formed and match the schemas.
            return Grammar.lark(parser.call_grammar(tools, "auto", req.parallel_tool_calls))
        return None

    # -- text completions -------------------------------------------------------------

    async def completion(self, request: CompletionRequest | dict[str, Any]) -> CompletionResponse:
        """Run a text completion; a list of prompts gives ``n`` choices per prompt."""
        req = parse_request(CompletionRequest, request)
        plans = self._plan_completion(req)
        request_id = plans[0].request_id
        submitted = self._submit_all(plans)
        try:
            per_plan = await asyncio.gather(*(_collect_all(s) for s in submitted))
        finally:
            for streams in submitted:
                for s in streams:
                    s.close()
        choices, all_results = [], []
        for plan, results in zip(plans, per_plan):
            echo = self._echo(req, plan)
            for i, deltas in enumerate(results):
                all_results.append(deltas)
                text = "".join(d.text for d in deltas)
                choices.append(
                    CompletionChoice(
                        index=plan.prompt_index * req.n + i,
                        text=echo + text,
                        logprobs=_completion_logprobs(
                            deltas, len(echo), self._end_ids(plan.params[i])
                        )
                        if req.logprobs is not None
                        else None,
                        finish_reason=deltas[-1].finish_reason or "abort",
                    )
                )
        return CompletionResponse(
            id=request_id,
            model=plans[0].model,
            choices=choices,
            usage=_usage(all_results, prompts=[len(p.prompt_ids) for p in plans]),
        )

    def completion_stream(
        self, request: CompletionRequest | dict[str, Any]
    ) -> AsyncIterator[CompletionResponse]:
        """Validate and submit now; the returned iterator yields completion chunks."""
        req = parse_request(CompletionRequest, request)
        plans = self._plan_completion(req)
        streams = [s for group in self._submit_all(plans) for s in group]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _Chunks(self._completion_chunks(req, plans, streams, include_usage), streams)

    async def _completion_chunks(
        self,
        req: CompletionRequest,
        plans: list[_Plan],
        streams: list[RequestStream],
        include_usage: bool,
    ) -> AsyncIterator[CompletionResponse]:
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
                    echo = self._echo(req, plan)
                    offsets[k] = len(echo)
                    yield chunk(index, echo)
            async for k, delta in _merge(streams):
                index = index_plan[k][0]
                lp = None
                if req.logprobs is not None:
                    lp = _completion_logprobs(
                        [delta], offsets[k], self._end_ids(index_plan[k][1].params[0])
                    )
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

    def _plan_completion(self, req: CompletionRequest) -> list[_Plan]:
        model = self.check_model(req.model)
        prompts = req.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if req.echo and req.logprobs is not None:
            raise OpenAIError(
                "echo together with logprobs needs prompt logprobs, which this server does "
                "not compute: drop one of them",
                param="echo",
            )
        self._check_queue()
        wanted = len(prompts) * req.n
        if self.max_waiting is not None and wanted > self.max_waiting:
            # More than the whole queue bound in one request: it would crowd out every
            # other client, and the bound could never admit it piecewise either.
            raise OpenAIError(
                f"this request asks for {wanted} completions ({len(prompts)} prompts x "
                f"n={req.n}); this server takes at most {self.max_waiting} in one request",
                param="prompt",
                code="too_many_completions",
            )
        request_id = _new_id("cmpl")
        plans = []
        for k, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if not prompt:
                    raise OpenAIError("prompt must not be empty", param="prompt")
                ids = _guard(lambda p=prompt: self.engine.tokenize(p))
            else:
                ids = list(prompt)
                vocab = self.engine.runner.model.vocab_size
                bad = [t for t in ids if not 0 <= t < vocab]
                if bad:
                    raise OpenAIError(
                        f"token id {bad[0]} in prompt is outside the vocabulary [0, {vocab})",
                        param="prompt",
                    )
            self._check_length(ids, "prompt")
            params = [
                self._params(
                    req,
                    i,
                    ids,
                    max_tokens=req.max_tokens,
                    logprobs=req.logprobs is not None,
                    top_logprobs=req.logprobs or 0,
                    grammar=None,
                    skip_special=req.skip_special_tokens,
                )
                for i in range(req.n)
            ]
            plans.append(_Plan(request_id, model, ids, params, prompt_index=k))
        return plans

    def _echo(self, req: CompletionRequest, plan: _Plan) -> str:
        if not req.echo:
            return ""
        prompt = req.prompt
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return prompt[plan.prompt_index]
        return self.engine.detokenize(plan.prompt_ids, skip_special_tokens=False)

    # -- shared -----------------------------------------------------------------------

    def _end_ids(self, params: GenerationParams) -> frozenset[int]:
        if params.ignore_eos:
            return frozenset(params.stop_token_ids)
        return self.engine.eos_token_ids | frozenset(params.stop_token_ids)

    def check_model(self, model: str | None) -> str:
        """The name to report for a request's ``model`` (None: the first); 404 if not served."""
        if model is None or model in self.model_names:
            return self.model_names[0]
        raise OpenAIError(
            f"The model {model!r} does not exist here; this server serves: "
            f"{', '.join(self.model_names)}",
            status_code=404,
            param="model",
            code="model_not_found",
        )

    def _check_queue(self) -> None:
        if self.max_waiting is not None and self.engine.num_waiting >= self.max_waiting:
            raise OpenAIError(
                f"the server is busy: {self.engine.num_waiting} requests are waiting (the limit "
                f"is {self.max_waiting}); retry later",
                status_code=503,
                type="server_overloaded",
                code="queue_full",
            )

    def _check_length(self, ids: list[int], param: str) -> None:
        limit = self.engine.max_model_len
        if len(ids) >= limit:
            raise OpenAIError(
                f"This model's maximum context length is {limit} tokens, but the {param} have "
                f"{len(ids)} tokens (and at least one token must be generated): shorten the "
                f"{param}",
                param=param,
                code="context_length_exceeded",
            )

    def _params(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        choice: int,
        prompt_ids: list[int],
        *,
        max_tokens: int | None,
        logprobs: bool,
        top_logprobs: int,
        grammar: Grammar | None,
        skip_special: bool,
    ) -> GenerationParams:
        room = self.engine.max_model_len - len(prompt_ids)
        # Several choices with one seed would all be the same: give each its own.
        seed = None if req.seed is None else req.seed + choice
        kwargs: dict[str, Any] = dict(
            max_tokens=min(max_tokens or room, room),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(0, req.top_k or 0),
            min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            seed=seed,
            stop=req.stop_list(),
            stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            skip_special_tokens=skip_special,
            grammar=grammar,
        )
        if req.logit_bias:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
        return _guard(lambda: GenerationParams(**kwargs))

    def _submit_all(self, plans: list[_Plan]) -> list[list[RequestStream]]:
        """Submit every plan or none: a failure aborts what was already submitted."""
        submitted: list[list[RequestStream]] = []
        try:
            for plan in plans:
                submitted.append(self._submit(plan))
        except BaseException:
            for streams in submitted:
                for s in streams:
                    s.close()
            raise
        return submitted

    def _submit(self, plan: _Plan) -> list[RequestStream]:
        streams: list[RequestStream] = []
        try:
            for i, params in enumerate(plan.params):
                rid = f"{plan.request_id}-{plan.prompt_index}-{i}"
                streams.append(self.engine.stream(plan.prompt_ids, params, request_id=rid))
        except BaseException as exc:
            for s in streams:
                s.close()
            if isinstance(exc, CandleError):
                raise OpenAIError.from_exception(exc) from exc
            raise
        return streams


# -- helpers ---------------------------------------------------------------------------


class _Chunks(AsyncIterator[R]):
    """The chunks of submitted requests; closing it aborts them even before the first
    chunk (an async generator that never started would skip its ``finally``)."""

    def __init__(self, chunks: AsyncIterator[R], streams: list[RequestStream]) -> None:
        self._chunks = chunks
        self._streams = streams

    def __aiter__(self) -> _Chunks[R]:
        return self

    async def __anext__(self) -> R:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        for s in self._streams:
            s.close()
        await self._chunks.aclose()


def _guard(make):
    """Run ``make`` and report our errors in OpenAI's form."""
    try:
        return make()
    except CandleError as exc:
        raise OpenAIError.from_exception(exc) from exc


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def _collect_all(streams: list[RequestStream]) -> list[list[StreamDelta]]:
    async def collect(stream: RequestStream) -> list[StreamDelta]:
        return [d async for d in stream]

    try:
        return list(await asyncio.gather(*(collect(s) for s in streams)))
    except CandleError as exc:
        raise OpenAIError.from_exception(exc) from exc
    finally:
        for s in streams:
            s.close()


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, StreamDelta]]:
    """Deltas of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        try:
            async for d in streams[0]:
                yield 0, d
        except CandleError as exc:
            raise OpenAIError.from_exception(exc) from exc
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for d in stream:
                await queue.put((i, d))
        except BaseException as exc:  # reported to the consumer, who decides
            await queue.put((i, exc))
            return
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(streams)
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                if isinstance(item, CandleError):
                    raise OpenAIError.from_exception(item) from item
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)


def _usage(results: list[list[StreamDelta]], prompts: list[int] | None = None) -> UsageInfo:
    finals = [r[-1].usage for r in results if r and r[-1].usage is not None]
    completion = sum(u.completion_tokens for u in finals)
    # Chat: one prompt shared by all choices, counted once.
    shared = finals[0].prompt_tokens if finals else 0
    prompt = sum(prompts) if prompts is not None else shared
    cached = max((u.cached_tokens for u in finals), default=0)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
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


def _tool_delta(c: Any) -> ToolCallDeltaOut:
    return ToolCallDeltaOut(
        index=c.index,
        id=c.id,
        type="function" if c.id is not None else None,
        function=FunctionCallDelta(name=c.name, arguments=c.arguments),
    )
