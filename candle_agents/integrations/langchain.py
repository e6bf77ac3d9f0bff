"""LangChain chat model on the in-process engine: :class:`ChatCandle`.

``ChatCandle`` is a ``BaseChatModel`` that sends OpenAI-shaped chat requests to
:class:`~candle_agents.openai.OpenAIAdapter`, so tool calls, forced tool choice and
structured output are enforced by constrained decoding, as in the HTTP server.

Sync methods (``invoke``, ``stream``, ``batch``) run on the process's background
event loop (``candle_agents._loop``), so they also work where a loop is already
running (Jupyter); async methods (``ainvoke``, ``astream``, ``abatch``) await the
engine on the caller's loop. Concurrent calls are batched by the engine.

Needs ``pip install "candle-agents[langchain]"``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelTimeoutError,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
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
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import (
    convert_to_openai_function,
    convert_to_openai_tool,
)
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from candle_agents._loop import iterate_sync, run_sync
from candle_agents.engine import Engine, EngineConfig
from candle_agents.errors import CandleError
from candle_agents.openai import OpenAIAdapter, OpenAIError
from candle_agents.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    UsageInfo,
)

__all__ = [
    "CandleAPIError",
    "CandleContextOverflowError",
    "CandleInvalidRequestError",
    "CandleModelNotFoundError",
    "CandleTimeoutError",
    "ChatCandle",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
PROVIDER = "candle"

# Request fields a call may set through invoke/bind kwargs. "messages" and the
# streaming switches are ours to set; "model" picks the engine instead.
_CALL_FIELDS = frozenset(ChatCompletionRequest.model_fields) - {
    "messages",
    "model",
    "stream",
    "stream_options",
}

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


# -- errors ------------------------------------------------------------------------------
# Each is both our OpenAIError (status_code, code, param) and LangChain's standard model
# error, so agents and middleware that catch LangChain's types (for instance the
# summarization middleware's ContextOverflowError) handle them.


class CandleInvalidRequestError(OpenAIError, ModelInvalidRequestError):
    """The request was refused (HTTP 400 in the server): bad parameters or messages."""


class CandleContextOverflowError(OpenAIError, ContextOverflowError):
    """The prompt does not fit the engine's ``max_model_len``."""


class CandleModelNotFoundError(OpenAIError, ModelNotFoundError):
    """The request named a model the engine does not serve."""


class CandleAPIError(OpenAIError, ModelAPIError):
    """The engine failed or is overloaded (HTTP 5xx in the server); retrying may help."""


class CandleTimeoutError(CandleError, ModelTimeoutError, TimeoutError):
    """No output arrived within ``timeout`` seconds; the request was aborted."""


def _langchain_error(exc: OpenAIError) -> OpenAIError:
    """``exc`` as the class that also carries LangChain's standard error type."""
    if isinstance(exc, (CandleInvalidRequestError, CandleContextOverflowError)):
        return exc
    if exc.code == "context_length_exceeded":
        cls: type[OpenAIError] = CandleContextOverflowError
    elif exc.status_code == 404:
        cls = CandleModelNotFoundError
    elif exc.status_code >= 500:
        cls = CandleAPIError
    elif 400 <= exc.status_code < 499:
        cls = CandleInvalidRequestError
    else:  # 499: cancelled by the caller
        return exc
    return cls(exc.message, exc.status_code, exc.type, exc.param, exc.code)


# -- engines and adapters ----------------------------------------------------------------

_adapters: dict[int, OpenAIAdapter] = {}
_adapters_lock = threading.Lock()


def _adapter_for(engine: Engine) -> OpenAIAdapter:
    """The one OpenAIAdapter of ``engine`` (built on first use, shared by every ChatCandle)."""
    with _adapters_lock:
        for key, adapter in list(_adapters.items()):
            if not adapter.engine.is_alive:  # shut down: let engine and adapter go
                del _adapters[key]
        adapter = _adapters.get(id(engine))
        if adapter is None or adapter.engine is not engine:
            adapter = OpenAIAdapter(engine)
            _adapters[id(engine)] = adapter
        return adapter


# -- the chat model ----------------------------------------------------------------------


class ChatCandle(BaseChatModel):
    """A LangChain chat model served by candle-agents' in-process engine.

    ``model`` is the embedded default (SmolLM2-135M-Instruct), a model folder or a
    ``.gguf`` file. The engine loads on first use through ``Engine.shared(model,
    **engine_config)``, so every ChatCandle with the same model and config shares one
    engine (and its batching and prefix cache); or pass a ready ``engine``.

    Any OpenAI chat request field (``top_k``, ``logprobs``, ``response_format``...)
    can also be passed per call: ``invoke(messages, temperature=0.2)``, or ``model=``
    to use another model's shared engine for that call.

    Errors: requests the engine refuses raise :class:`CandleInvalidRequestError`
    (:class:`CandleContextOverflowError` for prompts over ``max_model_len``) and engine
    failures :class:`CandleAPIError`; all are ``OpenAIError`` and LangChain
    ``ModelError`` subclasses. ``timeout`` raises :class:`CandleTimeoutError`.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = DEFAULT_MODEL
    """The embedded default's name, a folder with config.json and safetensors, or a .gguf."""
    engine_config: dict[str, Any] | None = None
    """EngineConfig fields for the shared engine (max_model_len, kv_cache_memory, device...)."""
    engine: Engine | None = Field(default=None, exclude=True)
    """A ready engine to use instead of the shared one."""

    temperature: float | None = None
    """Sampling temperature; 0 is greedy (the engine's default is 1)."""
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    """Most tokens to generate; by default what the context leaves."""
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences (any length in tokens); the stop text is not returned."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other OpenAI chat request fields sent with every call."""

    streaming: bool = False
    """Generate through the streaming path in invoke too (tokens reach callbacks)."""
    stream_usage: bool = True
    """Report usage_metadata on the last chunk of a stream."""
    timeout: float | None = None
    """Seconds to wait for output: the whole response, or each chunk when streaming."""
    max_retries: int | None = None
    """Accepted for compatibility with hosted providers' models; a local engine has no
    transient network failures to retry (wrap the model in ``with_retry`` if needed)."""
    api_key: SecretStr | None = None
    """Accepted for compatibility with hosted providers' models; unused."""

    # Engines this model has used, by model name: spares async calls a thread hop.
    _engines: dict[str, Engine] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("stop", "stop_sequences"):
                if isinstance(values.get(key), str):
                    values = {**values, key: [values[key]]}
        return values

    @model_validator(mode="after")
    def _check_engine_choice(self) -> ChatCandle:
        # Cheap checks only: __init__ must not load anything.
        if self.engine is not None:
            if self.engine_config:
                raise ValueError("pass either engine or engine_config, not both")
            if "model" not in self.model_fields_set:
                self.model = self.engine.model_name
            elif self.model != self.engine.model_name:
                raise ValueError(
                    f"model={self.model!r} but the engine given serves "
                    f"{self.engine.model_name!r}: leave model out or make them agree"
                )
        elif self.engine_config:
            if "model" in self.engine_config:
                raise ValueError("engine_config must not contain 'model': use model=")
            EngineConfig.from_kwargs(model=self.model, **self.engine_config)
        return self

    # -- LangChain's required surface -----------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "candle-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "engine_config": self.engine_config,
            **self._default_params(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model") or self.model,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = self.max_tokens
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        profile = ModelProfile(
            open_weights=True,
            text_inputs=True,
            text_outputs=True,
            image_inputs=False,
            audio_inputs=False,
            pdf_inputs=False,
            video_inputs=False,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
        )
        # Known without loading anything only when the engine exists already.
        if self.engine is not None:
            profile["max_input_tokens"] = self.engine.max_model_len
        return profile

    # -- engine ---------------------------------------------------------------------------

    def get_engine(self, model: str | None = None) -> Engine:
        """The engine serving ``model`` (this model by default), loaded on first use."""
        engine = self._ready_engine(model)
        if engine is None:
            engine = Engine.shared(model or self.model, **(self.engine_config or {}))
            self._engines[model or self.model] = engine
        return engine

    def _ready_engine(self, model: str | None) -> Engine | None:
        """The engine for ``model`` if it needs no loading, else None."""
        if self.engine is not None and model in (None, self.model):
            return self.engine
        engine = self._engines.get(model or self.model)
        return engine if engine is not None and engine.is_alive else None

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer."""
        return self.get_engine().tokenize(text, add_special_tokens=False)

    def _adapter(self, model: str | None) -> OpenAIAdapter:
        return _adapter_for(self.get_engine(model))

    async def _aadapter(self, model: str | None) -> OpenAIAdapter:
        engine = self._ready_engine(model)
        if engine is None:
            # Loading takes seconds: keep it off the caller's event loop.
            engine = await asyncio.to_thread(self.get_engine, model)
        return _adapter_for(engine)

    # -- requests -------------------------------------------------------------------------

    def _default_params(self) -> dict[str, Any]:
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "seed": self.seed,
            "stop": self.stop or None,
        }
        return {k: v for k, v in params.items() if v is not None}

    def _build_request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """The engine's model override (None: ours) and the OpenAI request for a call."""
        kwargs = dict(kwargs)
        model = kwargs.pop("model", None)
        kwargs.pop("stream", None)  # we choose the path; LangChain may pass it
        kwargs.pop("stream_usage", None)
        unknown = sorted(set(kwargs) - _CALL_FIELDS)
        if unknown:
            raise ValueError(
                f"ChatCandle got unknown call argument(s) {', '.join(unknown)}; "
                f"it takes OpenAI chat request fields ({', '.join(sorted(_CALL_FIELDS))}) "
                "and model"
            )
        request: dict[str, Any] = {**self._default_params(), **self.model_kwargs}
        request.update({k: v for k, v in kwargs.items() if v is not None})
        if stop:
            request["stop"] = list(stop)
        request["messages"] = convert_messages(messages)
        return model, request

    # -- generation -----------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        model, request = self._build_request(messages, stop, kwargs)
        adapter = self._adapter(model)
        return run_sync(self._complete(adapter, request))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        model, request = self._build_request(messages, stop, kwargs)
        adapter = await self._aadapter(model)
        return await self._complete(adapter, request)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        usage = kwargs.get("stream_usage", self.stream_usage)
        model, request = self._build_request(messages, stop, kwargs)
        adapter = self._adapter(model)
        for chunk in iterate_sync(self._chunks(adapter, request, usage)):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        usage = kwargs.get("stream_usage", self.stream_usage)
        model, request = self._build_request(messages, stop, kwargs)
        adapter = await self._aadapter(model)
        chunks = self._chunks(adapter, request, usage)
        try:
            async for chunk in chunks:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await chunks.aclose()

    async def _complete(self, adapter: OpenAIAdapter, request: dict[str, Any]) -> ChatResult:
        try:
            response = await asyncio.wait_for(adapter.chat_completion(request), self.timeout)
        except OpenAIError as exc:
            raise _langchain_error(exc) from exc
        except asyncio.TimeoutError as exc:
            raise self._timeout_error() from exc
        return _chat_result(response)

    async def _chunks(
        self, adapter: OpenAIAdapter, request: dict[str, Any], include_usage: bool
    ) -> AsyncIterator[ChatGenerationChunk]:
        """One chunk per engine delta, then a last chunk with finish_reason and usage."""
        if request.get("n", 1) != 1:
            raise ValueError("n > 1 is not supported when streaming: use invoke or batch")
        request = {**request, "stream": True, "stream_options": {"include_usage": include_usage}}
        try:
            stream = adapter.chat_completion_stream(request)
        except OpenAIError as exc:
            raise _langchain_error(exc) from exc
        tail = _StreamTail()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(stream), self.timeout)
                except StopAsyncIteration:
                    break
                except OpenAIError as exc:
                    raise _langchain_error(exc) from exc
                except asyncio.TimeoutError as exc:
                    raise self._timeout_error() from exc
                message = tail.take(chunk)
                if message is not None:
                    yield ChatGenerationChunk(message=message)
        finally:
            await stream.aclose()
        yield ChatGenerationChunk(message=tail.last_message())

    def _timeout_error(self) -> CandleTimeoutError:
        return CandleTimeoutError(
            f"no output from model {self.model!r} within timeout={self.timeout} s; the "
            "request was aborted (raise timeout, or lower max_tokens or the load)"
        )

    # -- tools and structured output ------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model (LangChain tools, pydantic models, functions, dicts).

        ``tool_choice``: "auto" (default: the model decides), "none", "any" / "required" /
        True (some call), or a tool name / ``{"type": "function", "function": {"name":
        ...}}`` (that call). Forced choices are enforced while decoding, so the call is
        always well formed and its arguments match the tool's schema.
        """
        formatted = [_openai_tool(t, strict) for t in tools]
        choice = _tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
        if choice is not None:
            kwargs["tool_choice"] = choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable whose output is ``schema`` (pydantic class, TypedDict or JSON schema).

        ``method``: "json_schema" (default; the answer is decoded under the schema),
        "function_calling" (a forced call of a tool with that schema) or "json_mode" (a
        JSON object; describe it in the prompt). In json_mode a given schema is enforced
        too, since decoding can: only ``schema=None`` leaves the object's shape free.
        Pydantic schemas give instances, others dicts. ``include_raw`` returns
        ``{"raw", "parsed", "parsing_error"}``.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {kwargs}")
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(
                f"method={method!r} is not one of 'json_schema', 'function_calling', 'json_mode'"
            )
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema (only json_mode works without)")
        bind_kwargs: dict[str, Any] = {}
        if schema is not None:
            trace: dict[str, Any] = {"method": method}
            if strict is not None:
                trace["strict"] = strict
            bind_kwargs["ls_structured_output_format"] = {"kwargs": trace, "schema": schema}
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, parallel_tool_calls=False, strict=strict, **bind_kwargs
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            response_format = (
                {"type": "json_object"} if schema is None else _response_format(schema, strict)
            )
            llm = self.bind(response_format=response_format, **bind_kwargs)
            parser = (
                PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


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
    calls = [
        _call_ref(c["id"], c["name"], json.dumps(c["args"], ensure_ascii=False), where, i)
        for i, c in enumerate(message.tool_calls)
    ]
    # Calls whose arguments did not parse are still what the model wrote: replay them.
    calls += [
        _call_ref(c.get("id"), c.get("name") or "", c.get("args") or "{}", where, i)
        for i, c in enumerate(message.invalid_tool_calls, start=len(calls))
    ]
    if calls:
        out["tool_calls"] = calls
    return out


def _call_ref(
    call_id: str | None, name: str, arguments: str, where: str, index: int
) -> dict[str, Any]:
    # OpenAI requires ids; a call without one cannot be answered, so any stable id does.
    return {
        "id": call_id or f"call_{where}_{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


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


# -- tools -------------------------------------------------------------------------------


def _tool_choice(choice: dict[str, Any] | str | bool | None, names: list[str]) -> Any:
    """LangChain's tool_choice values in OpenAI's form, checked against the tool names."""
    if choice is None or choice is False:
        return None
    if choice == "auto":
        return "auto"
    if choice is True or choice in ("any", "required"):
        return "required"
    if choice == "none":
        return "none"
    if isinstance(choice, str):
        name = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") or choice.get("name")
    else:
        raise ValueError(
            f"tool_choice={choice!r} is not understood: use 'auto', 'none', 'any', "
            "'required', True, a tool name or {'type': 'function', 'function': {'name': ...}}"
        )
    if name not in names:
        raise ValueError(
            f"tool_choice names {name!r}, which is not among the bound tools "
            f"({', '.join(names) or 'none'})"
        )
    return {"type": "function", "function": {"name": name}}


def _openai_tool(tool: Any, strict: bool | None) -> dict[str, Any]:
    """``tool`` in OpenAI's format; arguments of Python-derived tools closed (see below)."""
    formatted = convert_to_openai_tool(tool, strict=strict)
    if not isinstance(tool, dict) and "parameters" in formatted["function"]:
        formatted["function"]["parameters"] = _closed(formatted["function"]["parameters"])
    return formatted


def _closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on objects that don't say otherwise.

    For schemas LangChain derives from pydantic models, functions and TypedDicts: those
    say ``additionalProperties`` only when extras are allowed, and otherwise drop them.
    Open objects let a small model pad the arguments with keys copied from the schema
    ("type", "description"), which the grammar would accept.
    """
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: _closed(v) for k, v in value.items()} if isinstance(value, dict) else value
            )
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not"):
            out[key] = _closed(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _response_format(schema: dict[str, Any] | type, strict: bool | None) -> dict[str, Any]:
    """OpenAI's json_schema response_format for a pydantic class, TypedDict or JSON schema."""
    if isinstance(schema, dict) and "properties" in schema and "title" not in schema:
        # A bare JSON schema: convert_to_openai_function needs a title to name it.
        name, description, parameters = "response", schema.get("description"), schema
    else:
        function = convert_to_openai_function(schema, strict=strict)
        name, description = function["name"], function.get("description")
        parameters = function.get("parameters", {})
        if not isinstance(schema, dict):
            parameters = _closed(parameters)
    spec: dict[str, Any] = {"name": name, "schema": parameters}
    if description:
        spec["description"] = description
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


# -- OpenAI responses -> LangChain messages ------------------------------------------------


def _chat_result(response: ChatCompletionResponse) -> ChatResult:
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
        message = AIMessage(
            content=choice.message.content or "",
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
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_token_details={"cache_read": cached},
    )


class _StreamTail:
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
            if not delta.content and not delta.tool_calls and choice.logprobs is None:
                return None
            metadata = {}
            if choice.logprobs is not None:
                metadata["logprobs"] = choice.logprobs.model_dump()
            return AIMessageChunk(
                content=delta.content or "",
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
