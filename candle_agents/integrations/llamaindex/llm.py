"""CandleLLM, LlamaIndex's FunctionCallingLLM over the engine's OpenAIAdapter: chat and
completion (sync on the background loop, async on the caller's), tool calls and
structured outputs decoded under their JSON schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt
from llama_index.core.types import PydanticProgramMode

from candle_agents._loop import iterate_sync, run_sync
from candle_agents.engine import Engine
from candle_agents.integrations._engine import (
    DEFAULT_MODEL,
    aadapter_for,
    adapter_for,
    resolve_model,
)
from candle_agents.integrations._tools import closed_schema
from candle_agents.integrations._tools import tool_choice as openai_tool_choice
from candle_agents.integrations.llamaindex.messages import (
    arguments_dict,
    chat_response,
    chat_stream,
    chat_stream_as_completion,
    chat_to_completion,
    completion_response,
    completion_stream,
    to_openai_messages,
)
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.protocol import ChatCompletionChunk

if TYPE_CHECKING:
    from llama_index.core.bridge.pydantic import BaseModel
    from llama_index.core.prompts import BasePromptTemplate
    from llama_index.core.tools.types import BaseTool

__all__ = ["CandleLLM"]

# Named for the public module, as LlamaIndex's instrumentation saw it before the split.
dispatcher = get_dispatcher(__package__)


class _EngineRef:
    """Holds the engine; copies of a CandleLLM (LlamaIndex deep-copies some objects)
    keep pointing at the same engine instead of trying to copy a running one."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine

    def __deepcopy__(self, memo: dict[int, Any]) -> _EngineRef:
        return self


class CandleLLM(FunctionCallingLLM):
    """A local model served by candle-agents, as a LlamaIndex function-calling LLM.

    ``model``: the embedded default, a model name, a folder or a ``.gguf`` file.
    ``engine_config``: :class:`~candle_agents.EngineConfig` fields (for example
    ``{"max_model_len": 2048, "kv_cache_memory": 128 * 2**20}``); the engine is
    loaded on first use and shared by every CandleLLM with the same model and
    config. ``engine``: use this engine instead. ``context_window``: defaults to
    the engine's ``max_model_len``. ``additional_kwargs``: extra OpenAI request
    fields sent with every call (``seed``, ``top_p``, ``stop``, ...).
    """

    model: str = Field(default=DEFAULT_MODEL, description="Model name, folder or .gguf path.")
    temperature: float = Field(default=0.1, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=256, gt=0, description="Most tokens generated per call.")
    context_window: int | None = Field(
        default=None, gt=0, description="Context size; None reads it from the engine."
    )
    engine_config: dict[str, Any] = Field(
        default_factory=dict, description="EngineConfig fields for the shared engine."
    )
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra OpenAI chat request fields for every call."
    )

    _ref: _EngineRef = PrivateAttr(default_factory=lambda: _EngineRef(None))

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: Engine | None = None,
        engine_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = resolve_model("CandleLLM", model, engine, engine_config)
        super().__init__(model=model, engine_config=dict(engine_config or {}), **kwargs)
        self._ref = _EngineRef(engine)

    @classmethod
    def class_name(cls) -> str:
        return "CandleLLM"

    # -- engine -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine serving this LLM (loaded on first access)."""
        if self._ref.engine is None:
            # Engine.shared locks and caches: concurrent first calls get one engine.
            self._ref.engine = Engine.shared(self.model, **self.engine_config)
        return self._ref.engine

    @property
    def adapter(self) -> OpenAIAdapter:
        """The OpenAI adapter over :attr:`engine` (one per engine)."""
        return adapter_for(self.engine)

    async def _aadapter(self) -> OpenAIAdapter:
        return await aadapter_for(self._ref.engine, lambda: self.engine)

    @property
    def metadata(self) -> LLMMetadata:
        window = self.context_window
        if window is None:
            window = self.engine.max_model_len
        loaded = self._ref.engine
        name = loaded.model_name if loaded is not None else self.model
        return LLMMetadata(
            context_window=window,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=name,
        )

    # -- requests -----------------------------------------------------------------------

    def _chat_request(
        self, messages: Sequence[ChatMessage], stream: bool, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.additional_kwargs,
            **kwargs,
            "messages": to_openai_messages(messages),
        }
        if stream:
            request["stream_options"] = {"include_usage": True}
        return request

    def _completion_request(self, prompt: str, stream: bool, kwargs: dict[str, Any]) -> dict:
        request: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.additional_kwargs,
            **kwargs,
            "prompt": prompt,
        }
        if stream:
            request["stream_options"] = {"include_usage": True}
        return request

    def _as_chat(self, prompt: str, formatted: bool) -> list[ChatMessage] | str:
        """What ``complete`` sends: a chat turn, or text for a raw completion.

        LlamaIndex calls ``complete(..., formatted=True)`` with a prompt that is
        already in the model's format; otherwise this chat model gets the prompt
        as one user turn through its chat template, unless the user set their own
        ``completion_to_prompt``.
        """
        if formatted:
            return prompt
        if self.completion_to_prompt is not default_completion_to_prompt:
            return self.completion_to_prompt(prompt)
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        return self._extend_messages(messages)

    # -- chat ---------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation (``tools``/``tool_choice``/``response_format`` pass through)."""
        request = self._chat_request(messages, False, kwargs)
        adapter = self.adapter
        return chat_response(run_sync(adapter.chat_completion(request)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`, awaited on the caller's event loop."""
        request = self._chat_request(messages, False, kwargs)
        adapter = await self._aadapter()
        return chat_response(await adapter.chat_completion(request))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a chat answer: ``message`` holds the text so far, ``delta`` the new piece."""
        request = self._chat_request(messages, True, kwargs)
        adapter = self.adapter

        async def open_stream() -> AsyncIterator[ChatCompletionChunk]:
            # The engine binds a stream to the loop that opens it: open it on the
            # background loop that will read it. Request errors raise here, now.
            return adapter.chat_completion_stream(request)

        chunks = run_sync(open_stream())

        def gen() -> ChatResponseGen:
            yield from iterate_sync(chat_stream(chunks))

        return gen()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; the caller's loop keeps running between tokens."""
        request = self._chat_request(messages, True, kwargs)
        adapter = await self._aadapter()
        return chat_stream(adapter.chat_completion_stream(request))

    # -- completion ---------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``: through the chat template unless ``formatted``."""
        target = self._as_chat(prompt, formatted)
        adapter = self.adapter
        if isinstance(target, str):
            request = self._completion_request(target, False, kwargs)
            return completion_response(run_sync(adapter.completion(request)))
        request = self._chat_request(target, False, kwargs)
        return chat_to_completion(chat_response(run_sync(adapter.chat_completion(request))))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`."""
        target = self._as_chat(prompt, formatted)
        adapter = await self._aadapter()
        if isinstance(target, str):
            request = self._completion_request(target, False, kwargs)
            return completion_response(await adapter.completion(request))
        request = self._chat_request(target, False, kwargs)
        return chat_to_completion(chat_response(await adapter.chat_completion(request)))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream a completion: ``text`` so far and ``delta``."""
        target = self._as_chat(prompt, formatted)
        adapter = self.adapter

        async def open_stream() -> AsyncIterator[CompletionResponse]:
            if isinstance(target, str):
                request = self._completion_request(target, True, kwargs)
                return completion_stream(adapter.completion_stream(request))
            request = self._chat_request(target, True, kwargs)
            return chat_stream_as_completion(adapter.chat_completion_stream(request))

        responses = run_sync(open_stream())

        def gen() -> CompletionResponseGen:
            yield from iterate_sync(responses)

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        target = self._as_chat(prompt, formatted)
        adapter = await self._aadapter()
        if isinstance(target, str):
            request = self._completion_request(target, True, kwargs)
            return completion_stream(adapter.completion_stream(request))
        request = self._chat_request(target, True, kwargs)
        return chat_stream_as_completion(adapter.chat_completion_stream(request))

    # -- tools --------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a turn that may (or must) call ``tools``.

        ``tool_required`` forces some call; ``tool_choice`` may be "auto", "none",
        "required" (or "any"), a tool name, or OpenAI's ``{"type": "function",
        "function": {"name": ...}}``. Forced calls are enforced while decoding.
        """
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [_openai_tool(t) for t in tools]
        if not specs:
            return {"messages": messages, **kwargs}
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {
            "messages": messages,
            "tools": specs,
            "tool_choice": openai_tool_choice(tool_choice, [s["function"]["name"] for s in specs]),
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:
            # The grammar already allows one call; this guards a caller-supplied
            # parallel_tool_calls=True from breaking predict_and_call's single-call path.
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                first = calls[0]
                response.message.blocks = [
                    b
                    for b in response.message.blocks
                    if not isinstance(b, ToolCallBlock) or b is first
                ]
                kept = response.message.additional_kwargs.get("tool_calls") or []
                response.message.additional_kwargs["tool_calls"] = kept[:1]
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The tool calls in ``response`` (streamed partial arguments are parsed leniently)."""
        selections = []
        for block in response.message.blocks:
            if not isinstance(block, ToolCallBlock):
                continue
            selections.append(
                ToolSelection(
                    tool_id=block.tool_call_id or "",
                    tool_name=block.tool_name,
                    tool_kwargs=arguments_dict(block.tool_kwargs),
                )
            )
        if not selections and error_on_no_tool_call:
            text = (response.message.content or "")[:200]
            raise ValueError(
                f"Expected at least one tool call from {self.model}, but the response has "
                f"none (text: {text!r}). Pass tool_required=True (or a tool_choice) to force "
                "a call, or error_on_no_tool_call=False to accept a plain answer."
            )
        return selections

    # -- structured output ----------------------------------------------------------------

    def _schema_kwargs(self, output_cls: type[BaseModel]) -> dict[str, Any]:
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": output_cls.__name__,
                    "schema": output_cls.model_json_schema(),
                    "strict": True,
                },
            }
        }

    def _uses_json_schema(self) -> bool:
        # DEFAULT would go through a forced tool call; a JSON-schema response is the
        # same constraint with a shorter prompt. Explicit modes keep LlamaIndex's way.
        return self.pydantic_program_mode == PydanticProgramMode.DEFAULT

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        """An ``output_cls`` instance, decoded under its JSON schema (always valid JSON)."""
        if not self._uses_json_schema():
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        messages = self._get_messages(prompt, **prompt_args)
        kwargs = {**(llm_kwargs or {}), **self._schema_kwargs(output_cls)}
        response = self.chat(messages, **kwargs)
        result = _parse_structured(output_cls, response.message.content or "")
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        """Async :meth:`structured_predict`."""
        if not self._uses_json_schema():
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        messages = self._get_messages(prompt, **prompt_args)
        kwargs = {**(llm_kwargs or {}), **self._schema_kwargs(output_cls)}
        response = await self.achat(messages, **kwargs)
        result = _parse_structured(output_cls, response.message.content or "")
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def _structured_stream_call(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        # The hook behind stream_structured_predict, which keeps its events.
        if not self._uses_json_schema():
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        from llama_index.core.program.utils import process_streaming_objects

        messages = self._get_messages(prompt, **prompt_args)
        kwargs = {**(llm_kwargs or {}), **self._schema_kwargs(output_cls)}
        responses = self.stream_chat(messages, **kwargs)

        def gen() -> Any:
            current: list[Any] | None = None
            text = ""
            for response in responses:
                text = response.message.content or ""
                obj = process_streaming_objects(response, output_cls, cur_objects=current)
                current = [obj]
                yield obj
            # The partials are lenient; the end must be a valid instance (or an error).
            final = _parse_structured(output_cls, text)
            if current is None or final != current[0]:
                yield final

        return gen()

    async def _structured_astream_call(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        if not self._uses_json_schema():
            return await super()._structured_astream_call(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
        from llama_index.core.program.utils import process_streaming_objects

        messages = self._get_messages(prompt, **prompt_args)
        kwargs = {**(llm_kwargs or {}), **self._schema_kwargs(output_cls)}
        responses = await self.astream_chat(messages, **kwargs)

        async def gen() -> Any:
            current: list[Any] | None = None
            text = ""
            async for response in responses:
                text = response.message.content or ""
                obj = process_streaming_objects(response, output_cls, cur_objects=current)
                current = [obj]
                yield obj
            # The partials are lenient; the end must be a valid instance (or an error).
            final = _parse_structured(output_cls, text)
            if current is None or final != current[0]:
                yield final

        return gen()


def _parse_structured(output_cls: type[BaseModel], text: str) -> BaseModel:
    try:
        return output_cls.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(
            f"the model's output is not a valid {output_cls.__name__}: {exc}; output was "
            f"{text[:300]!r} (raise max_tokens if it was cut off)"
        ) from exc


def _openai_tool(tool: BaseTool) -> dict[str, Any]:
    """``tool`` in OpenAI's form, its argument schema (derived from pydantic) closed."""
    spec = tool.metadata.to_openai_tool(skip_length_check=True)
    spec["function"]["parameters"] = closed_schema(spec["function"]["parameters"])
    return spec
