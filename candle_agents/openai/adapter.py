"""OpenAIAdapter: OpenAI chat and text completions on an in-process engine.

For gateways and apps that embed the library without our HTTP server: give it
requests (pydantic objects or plain dicts in OpenAI's shape) and get OpenAI's
response objects back, or async iterators of chunks. Every problem with a
request is an :class:`OpenAIError` raised before any output exists.

The adapter checks requests against its engine, plans them
(:mod:`candle_agents.openai.plan`) and submits them;
:mod:`candle_agents.openai.results` shapes what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from candle_agents.engine import Engine, GenerationParams
from candle_agents.engine.requests import RequestStream
from candle_agents.errors import CandleError
from candle_agents.openai.chat import (
    build_messages,
    offered_tools,
    render_text,
    template_supports_tools,
)
from candle_agents.openai.errors import OpenAIError, parse_request
from candle_agents.openai.plan import (
    Plan,
    choose_grammar,
    generation_params,
    guard,
    new_id,
    reasoning_control,
    thinking_switch,
)
from candle_agents.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from candle_agents.openai.reasoning import (
    ReasoningParser,
    detect_reasoning_parser,
    get_reasoning_parser,
)
from candle_agents.openai.results import (
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
)
from candle_agents.openai.streams import Chunks, collect_all
from candle_agents.openai.tool_parsers import detect_tool_parser, get_tool_parser


class OpenAIAdapter:
    """OpenAI's chat and completions API over one :class:`Engine`.

    ``served_model_name``: the name(s) requests may use in ``model`` (the first
    is reported in responses); by default the engine's model name.
    ``tool_parser``: force a tool-call format (hermes, llama3_json, mistral,
    pythonic, ...) instead of the one picked from the chat template.
    ``reasoning_parser``: force a reasoning convention (think, gpt_oss, or none)
    instead of the one picked from the chat template.
    ``max_waiting``: refuse new requests (503) while this many are queued, and
    completion requests that alone ask for more (prompts x n; 400).
    """

    def __init__(
        self,
        engine: Engine,
        served_model_name: str | list[str] | None = None,
        tool_parser: str | None = None,
        max_waiting: int | None = None,
        reasoning_parser: str | None = None,
    ) -> None:
        self.engine = engine
        if isinstance(served_model_name, str):
            served_model_name = [served_model_name]
        self.model_names: list[str] = list(served_model_name or [engine.model_name])
        template = engine.tokenizer.info.chat_template
        self.native_tools = template_supports_tools(template)
        self.tool_parser = get_tool_parser(tool_parser or detect_tool_parser(template))
        self.reasoning_parser: ReasoningParser | None = get_reasoning_parser(
            reasoning_parser or detect_reasoning_parser(template)
        )
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
        plan = self.plan_chat(parse_request(ChatCompletionRequest, request))
        return chat_response(plan, await collect_all(self.submit(plan)))

    def chat_completion_stream(
        self, request: ChatCompletionRequest | dict[str, Any]
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Validate and submit now; the returned iterator yields OpenAI chunks.

        Closing the iterator early (or dropping it) aborts the requests and
        frees their KV blocks.
        """
        req = parse_request(ChatCompletionRequest, request)
        plan = self.plan_chat(req)
        streams = self.submit(plan)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Chunks(chat_chunks(plan, streams, include_usage), streams)

    def plan_chat(self, req: ChatCompletionRequest) -> Plan:
        """Check ``req`` against the engine and render it: what :meth:`submit` runs.

        For translators onto this pipeline (the Anthropic API) that need the prompt's
        length or the engine's own stop reasons, which OpenAI's shapes do not carry.
        """
        model = self.check_model(req.model)
        self._check_queue()
        parser = self.tool_parser
        if req.tool_parser:
            parser = guard(lambda: get_tool_parser(req.tool_parser))
        tools = offered_tools(req)
        messages = build_messages(req, parser, self.native_tools, tools)
        template_tools = tools if self.native_tools else None
        reasoning = self.reasoning_parser
        if req.reasoning_parser is not None:
            reasoning = guard(lambda: get_reasoning_parser(req.reasoning_parser))
        thinking = thinking_switch(req) if reasoning is not None else None
        kwargs = reasoning.template_kwargs(thinking, req.reasoning_effort) if reasoning else {}
        kwargs.update(req.chat_template_kwargs or {})
        prompt = render_text(self.engine, messages, template_tools, kwargs)
        open_at_start = False
        if reasoning is not None and thinking is False:
            prompt += reasoning.off_suffix(prompt)  # where the template cannot switch it off
        elif reasoning is not None:
            open_at_start = reasoning.opens_in_prompt(prompt)
        prompt_ids = self._tokens(prompt)
        self._check_length(prompt_ids, "messages")
        grammar = choose_grammar(req, parser, tools)
        control = None
        if reasoning is not None and thinking is not False:
            control = reasoning_control(reasoning, req, open_at_start, grammar, self._tokens)
        special = (tools is not None and parser.needs_special_tokens) or (
            reasoning is not None and reasoning.needs_special_tokens
        )
        params = [
            generation_params(
                req,
                i,
                self._room(prompt_ids),
                max_tokens=req.output_limit(),
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs or 0,
                grammar=grammar,
                skip_special=req.skip_special_tokens and not special,
                reasoning=control,
            )
            for i in range(req.n)
        ]
        return Plan(
            new_id("chatcmpl"),
            model,
            prompt_ids,
            params,
            self._end_ids(params[0]),
            parser if tools is not None and req.tool_choice != "none" else None,
            tools,
            reasoning=reasoning,
            reasoning_open=open_at_start,
        )

    def _tokens(self, text: str) -> list[int]:
        # Rendered text already holds the special tokens the template wants.
        return self.engine.tokenize(text, add_special_tokens=False)

    # -- text completions -------------------------------------------------------------

    async def completion(self, request: CompletionRequest | dict[str, Any]) -> CompletionResponse:
        """Run a text completion; a list of prompts gives ``n`` choices per prompt."""
        req = parse_request(CompletionRequest, request)
        plans = self._plan_completion(req)
        submitted = self._submit_all(plans)
        try:
            per_plan = await asyncio.gather(*(collect_all(s) for s in submitted))
        finally:
            for streams in submitted:
                for s in streams:
                    s.close()
        return completion_response(req, plans, per_plan)

    def completion_stream(
        self, request: CompletionRequest | dict[str, Any]
    ) -> AsyncIterator[CompletionResponse]:
        """Validate and submit now; the returned iterator yields completion chunks."""
        req = parse_request(CompletionRequest, request)
        plans = self._plan_completion(req)
        streams = [s for group in self._submit_all(plans) for s in group]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Chunks(completion_chunks(req, plans, streams, include_usage), streams)

    def _plan_completion(self, req: CompletionRequest) -> list[Plan]:
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
        request_id = new_id("cmpl")
        plans = []
        for k, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if not prompt:
                    raise OpenAIError("prompt must not be empty", param="prompt")
                ids = guard(lambda p=prompt: self.engine.tokenize(p))
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
                generation_params(
                    req,
                    i,
                    self._room(ids),
                    max_tokens=req.max_tokens,
                    logprobs=req.logprobs is not None,
                    top_logprobs=req.logprobs or 0,
                    grammar=None,
                    skip_special=req.skip_special_tokens,
                )
                for i in range(req.n)
            ]
            echo = ""
            if req.echo:
                echo = (
                    prompt
                    if isinstance(prompt, str)
                    else self.engine.detokenize(ids, skip_special_tokens=False)
                )
            plans.append(
                Plan(
                    request_id,
                    model,
                    ids,
                    params,
                    self._end_ids(params[0]),
                    prompt_index=k,
                    echo=echo,
                )
            )
        return plans

    # -- shared -----------------------------------------------------------------------

    def _room(self, prompt_ids: list[int]) -> int:
        return self.engine.max_model_len - len(prompt_ids)

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

    def _submit_all(self, plans: list[Plan]) -> list[list[RequestStream]]:
        """Submit every plan or none: a failure aborts what was already submitted."""
        submitted: list[list[RequestStream]] = []
        try:
            for plan in plans:
                submitted.append(self.submit(plan))
        except BaseException:
            for streams in submitted:
                for s in streams:
                    s.close()
            raise
        return submitted

    def submit(self, plan: Plan) -> list[RequestStream]:
        """Start a plan's choices on the engine; one request stream per choice."""
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
