"""What a checked request becomes for the engine: a :class:`Plan`.

The adapter checks a request against its engine and renders the prompt; this
module owns what follows from the request alone: the grammar that constrains
decoding and each choice's :class:`GenerationParams`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from candle_agents.engine import GenerationParams
from candle_agents.engine.grammar import Grammar
from candle_agents.engine.params import ReasoningControl
from candle_agents.errors import CandleError
from candle_agents.openai.errors import OpenAIError
from candle_agents.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
)
from candle_agents.openai.reasoning import ReasoningParser
from candle_agents.openai.tool_parsers import ToolParser

T = TypeVar("T")


@dataclass
class Plan:
    """A validated request, ready to submit: one prompt, n choices."""

    request_id: str
    model: str
    prompt_ids: list[int]
    params: list[GenerationParams]
    # Tokens that end a choice (the same for every choice): logprobs leave out the one
    # that stopped it.
    end_ids: frozenset[int]
    parser: ToolParser | None = None  # set when tools are offered
    tools: list[dict[str, Any]] | None = None
    prompt_index: int = 0
    echo: str = ""  # completions with echo: the prompt text each choice starts with
    reasoning: ReasoningParser | None = None  # splits reasoning from content
    reasoning_open: bool = False  # the prompt opened the reasoning block


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def guard(make: Callable[[], T]) -> T:
    """Run ``make`` and report our errors in OpenAI's form."""
    try:
        return make()
    except CandleError as exc:
        raise OpenAIError.from_exception(exc) from exc


def choose_grammar(
    req: ChatCompletionRequest, parser: ToolParser, tools: list[dict[str, Any]] | None
) -> Grammar | None:
    """What decoding must follow: the tool-call format, a response_format, or nothing."""
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


def thinking_switch(req: ChatCompletionRequest) -> bool | None:
    """Thinking on (True) or off (False) as the request asks; None: the template's default.

    ``chat_template_kwargs.enable_thinking`` wins; ``reasoning_effort: "none"`` is off
    and any other effort on.
    """
    kwargs = req.chat_template_kwargs or {}
    if "enable_thinking" in kwargs:
        return bool(kwargs["enable_thinking"])
    if req.reasoning_effort is not None:
        return req.reasoning_effort != "none"
    return None


def reasoning_control(
    parser: ReasoningParser,
    req: ChatCompletionRequest,
    open_at_start: bool,
    grammar: Grammar | None,
    tokenize: Callable[[str], list[int]],
) -> ReasoningControl:
    """What the engine must know of a reasoning block: its end, budget and markers."""
    return ReasoningControl(
        start=parser.start,
        # The answer starts after the content header where a format has one.
        end=parser.content_start or parser.end,
        open_at_start=open_at_start,
        budget=req.thinking_budget,
        # A grammar starts after the block, so the block must surely open first.
        open_ids=tuple(tokenize(parser.open_text)) if grammar and not open_at_start else (),
        close_ids=tuple(tokenize(parser.close_text)),
    )


def generation_params(
    req: ChatCompletionRequest | CompletionRequest,
    choice: int,
    room: int,
    *,
    max_tokens: int | None,
    logprobs: bool,
    top_logprobs: int,
    grammar: Grammar | None,
    skip_special: bool,
    reasoning: ReasoningControl | None = None,
) -> GenerationParams:
    """Sampling for choice number ``choice``; ``room``: tokens left after the prompt."""
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
        reasoning=reasoning,
    )
    if req.logit_bias:
        kwargs["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
    return guard(lambda: GenerationParams(**kwargs))
