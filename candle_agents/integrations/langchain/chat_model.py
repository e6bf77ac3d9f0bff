"""ChatCandle, LangChain's BaseChatModel over the engine's OpenAIAdapter: which engine
serves a call, the request it gets, generation and streaming (sync on the background
loop, async on the caller's), tools and structured output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from candle_agents._loop import iterate_sync, run_sync
from candle_agents.engine import Engine
from candle_agents.integrations._engine import (
    DEFAULT_MODEL,
    aadapter_for,
    adapter_for,
    resolve_model,
)
from candle_agents.integrations.langchain.errors import CandleTimeoutError, as_langchain_error
from candle_agents.integrations.langchain.messages import (
    PROVIDER,
    StreamTail,
    chat_result,
    convert_messages,
)
from candle_agents.integrations.langchain.tools import (
    openai_response_format,
    openai_tool,
    openai_tool_choice,
)
from candle_agents.openai import OpenAIAdapter, OpenAIError
from candle_agents.openai.protocol import ChatCompletionRequest

__all__ = ["ChatCandle"]

# Request fields a call may set through invoke/bind kwargs. "messages" and the
# streaming switches are ours to set; "model" picks the engine instead.
_CALL_FIELDS = frozenset(ChatCompletionRequest.model_fields) - {
    "messages",
    "model",
    "stream",
    "stream_options",
}


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
    reasoning_effort: str | None = None
    """Reasoning models: "none" switches thinking off; "low", "medium", "high" on."""
    thinking_budget: int | None = None
    """Reasoning models: at most this many reasoning tokens (the engine then closes it)."""
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

    def __init__(self, **kwargs: Any) -> None:
        # Checked before pydantic validates, which would wrap the ConfigError in a
        # ValidationError. Cheap checks only: __init__ must not load anything.
        model = resolve_model(
            "ChatCandle", kwargs.get("model"), kwargs.get("engine"), kwargs.get("engine_config")
        )
        if kwargs.get("engine") is not None:
            kwargs["model"] = model
        super().__init__(**kwargs)

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("stop", "stop_sequences"):
                if isinstance(values.get(key), str):
                    values = {**values, key: [values[key]]}
        return values

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
        return adapter_for(self.get_engine(model))

    async def _aadapter(self, model: str | None) -> OpenAIAdapter:
        return await aadapter_for(self._ready_engine(model), lambda: self.get_engine(model))

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
            "reasoning_effort": self.reasoning_effort,
            "thinking_budget": self.thinking_budget,
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
            raise as_langchain_error(exc) from exc
        except asyncio.TimeoutError as exc:
            raise self._timeout_error() from exc
        return chat_result(response)

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
            raise as_langchain_error(exc) from exc
        tail = StreamTail()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(stream), self.timeout)
                except StopAsyncIteration:
                    break
                except OpenAIError as exc:
                    raise as_langchain_error(exc) from exc
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
        formatted = [openai_tool(t, strict) for t in tools]
        choice = openai_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
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
                {"type": "json_object"}
                if schema is None
                else openai_response_format(schema, strict)
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
