"""The engine's public API: load a model, submit requests, stream or collect results.

The parts it wires together each live in their own module: ``intake`` checks
requests on the caller's thread, ``loop`` runs the engine thread (scheduler,
runner, sampler), ``stopping`` decides when a request ends, ``stats`` counts.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from candle_agents.engine import cpu_kernels
from candle_agents.engine.block_manager import BlockManager
from candle_agents.engine.config import EngineConfig
from candle_agents.engine.grammar import LazyGrammarCompiler
from candle_agents.engine.intake import Intake, Prompt
from candle_agents.engine.loader import DEFAULT_MODEL, open_checkpoint
from candle_agents.engine.loop import EngineLoop
from candle_agents.engine.model_runner import ModelRunner
from candle_agents.engine.outputs import GenerationResult, StreamDelta
from candle_agents.engine.params import GenerationParams
from candle_agents.engine.platform import resolve_device
from candle_agents.engine.requests import AsyncSink, RequestStream, SyncSink, iterate_sync
from candle_agents.engine.sampler import Sampler
from candle_agents.engine.scheduler import Scheduler
from candle_agents.engine.sequence import Sequence
from candle_agents.engine.stats import EngineStats
from candle_agents.engine.tokenizer import TextTokenizer
from candle_agents.errors import ConfigError, RequestCancelled

_shared: dict[tuple, Engine] = {}
_shared_lock = threading.Lock()
_live: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine:
    """A loaded model serving requests with continuous batching.

    Build one with :meth:`from_pretrained` (a new engine) or :meth:`shared`
    (one per model and config in this process, for adapters). Every method is
    thread-safe; the async ones may be used from several event loops at once.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        resolve_device(config.device)  # fail on an unavailable device before loading anything
        checkpoint = open_checkpoint(config.model)
        self.model_name = config.model or DEFAULT_MODEL
        self.tokenizer = TextTokenizer(checkpoint.tokenizer, checkpoint.tokenizer_info)
        self.eos_token_ids = frozenset(checkpoint.eos_token_ids)
        self.runner = ModelRunner(checkpoint, config)
        self.max_model_len = self.runner.max_model_len
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"with chunked prefill off, max_num_batched_tokens "
                f"({config.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) so that any prompt fits in one step",
                field="max_num_batched_tokens",
            )
        self.block_manager = BlockManager(
            self.runner.group_blocks,
            config.block_size,
            config.enable_prefix_caching,
            windows=self.runner.group_windows,
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.prefill_chunk_size,
            config.enable_chunked_prefill,
        )
        self.sampler = Sampler(self.runner.device, config.seed)
        self.grammars = LazyGrammarCompiler(self.tokenizer.tokenizer, self.eos_token_ids)
        self.intake = Intake(
            self.tokenizer,
            self.eos_token_ids,
            self.runner.model.vocab_size,
            self.max_model_len,
            self.runner.device,
            self.grammars,
        )
        if self.runner.device.type == "cpu":
            # Loading ran parallel regions on this thread; its idle OpenMP pool
            # would make libgomp stop spinning the engine thread's workers.
            cpu_kernels.release_thread_pool()
        self._closed = False
        self.stats = EngineStats()
        self._loop = EngineLoop(
            self.model_name,
            self.runner,
            self.scheduler,
            self.sampler,
            self.tokenizer,
            self.grammars,
            self.stats,
        )
        self._loop.thread.start()
        _live.add(self)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str | None = None, **config: Any) -> Engine:
        """Load ``model`` (the embedded default when None, a name, a folder or a .gguf)."""
        return cls(EngineConfig.from_kwargs(model=model, **config))

    @classmethod
    def shared(cls, model: str | None = None, **config: Any) -> Engine:
        """The process-wide engine for this model and config, loaded on first use."""
        cfg = EngineConfig.from_kwargs(model=model, **config)
        with _shared_lock:
            engine = _shared.get(cfg.key())
            if engine is None or engine._closed:
                engine = cls(cfg)
                _shared[cfg.key()] = engine
            return engine

    # -- tokenizer -----------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render chat messages with the model's template (ids when ``tokenize``)."""
        if tokenize:
            return self.tokenizer.encode_chat(
                messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
            )
        return self.tokenizer.render_chat(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
        )

    # -- requests ------------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt | list[Prompt],
        params: GenerationParams | list[GenerationParams] | None = None,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate to completion.

        A list of prompts is submitted together and batched, with one
        ``params`` for all or a list of one per prompt.
        """
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            per_prompt = params if isinstance(params, list) else [params] * len(prompt)
            if len(per_prompt) != len(prompt):
                raise ConfigError(
                    f"{len(per_prompt)} GenerationParams for {len(prompt)} prompts",
                    field="params",
                )
            # Validate every prompt first, then hand them over in one go, so
            # that they are scheduled together and a bad one submits none.
            seqs = [self._make_sequence(p, q, None) for p, q in zip(prompt, per_prompt)]
            sinks = [SyncSink() for _ in seqs]
            self._register(seqs, sinks)
            return [self._collect_sync(seq, sink) for seq, sink in zip(seqs, sinks)]
        if isinstance(params, list):
            raise ConfigError("a list of GenerationParams needs a list of prompts", field="params")
        return self._collect_sync(*self._submit_sync(prompt, params))

    async def agenerate(
        self, prompt: Prompt, params: GenerationParams | None = None
    ) -> GenerationResult:
        stream = self.stream(prompt, params)
        deltas: list[StreamDelta] = []
        async for delta in stream:
            deltas.append(delta)
        return GenerationResult.from_deltas(stream.request_id, deltas, stream.prompt_token_ids)

    def stream(
        self, prompt: Prompt, params: GenerationParams | None = None, request_id: str | None = None
    ) -> RequestStream:
        """Async iterator of deltas; leaving it early aborts the request."""
        sink = AsyncSink(asyncio.get_running_loop())
        seq = self._submit(prompt, params, sink, request_id)
        return RequestStream(seq.request_id, seq.prompt_token_ids, sink, self.abort)

    def stream_sync(
        self, prompt: Prompt, params: GenerationParams | None = None, request_id: str | None = None
    ) -> Iterator[StreamDelta]:
        """Blocking iterator of deltas, for threads and command-line tools."""
        sink = SyncSink()
        seq = self._submit(prompt, params, sink, request_id)
        return iterate_sync(seq.request_id, sink, self.abort)

    def abort(self, request_id: str) -> None:
        """Stop a request; it finishes with finish_reason "abort" and frees its blocks."""
        self._loop.post("abort", request_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is queued or running (for tests and shutdown)."""
        return self._loop.idle.wait(timeout)

    def shutdown(self) -> None:
        """Abort what is in flight, stop the loop and release the KV cache."""
        if self._closed:
            return
        self._closed = True
        self._loop.post("shutdown", None)
        thread = self._loop.thread
        if threading.current_thread() is not thread:
            thread.join(timeout=30)
            if not thread.is_alive():  # else a step may still be using the cache
                self.runner.release()
        self.grammars.close()
        with _shared_lock:
            for key, engine in list(_shared.items()):
                if engine is self:
                    del _shared[key]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.block_manager.num_blocks

    @property
    def is_alive(self) -> bool:
        """Whether the engine loop is running and accepting requests."""
        return not self._closed and self._loop.thread.is_alive()

    @property
    def num_running(self) -> int:
        """Requests holding KV blocks and generating (read without a lock: approximate)."""
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        """Requests submitted but not yet running, including those still in the inbox."""
        return len(self.scheduler.waiting) + self._loop.num_inbox_requests

    @property
    def kv_cache_usage(self) -> float:
        """Share of KV blocks in use, 0..1."""
        return 1.0 - self.block_manager.num_free_blocks / max(1, self.block_manager.num_blocks)

    # -- submission (caller's thread) ----------------------------------------------------

    def _submit_sync(self, prompt: Prompt, params: GenerationParams | None):
        sink = SyncSink()
        return self._submit(prompt, params, sink, None), sink

    def _collect_sync(self, seq: Sequence, sink: SyncSink) -> GenerationResult:
        deltas = list(iterate_sync(seq.request_id, sink, self.abort))
        return GenerationResult.from_deltas(seq.request_id, deltas, seq.prompt_token_ids)

    def _submit(
        self,
        prompt: Prompt,
        params: GenerationParams | None,
        sink: SyncSink | AsyncSink,
        request_id: str | None,
    ) -> Sequence:
        seq = self._make_sequence(prompt, params, request_id)
        self._register([seq], [sink])
        return seq

    def _make_sequence(
        self, prompt: Prompt, params: GenerationParams | None, request_id: str | None
    ) -> Sequence:
        if self._closed:
            raise RequestCancelled("the engine has been shut down; create a new one")
        seq = self.intake.sequence(prompt, params, request_id)
        if seq.request_id in self._loop.requests:
            raise ConfigError(
                f"request_id {seq.request_id!r} is already in use", field="request_id"
            )
        return seq

    def _register(self, seqs: list[Sequence], sinks: list[SyncSink | AsyncSink]) -> None:
        ids = [s.request_id for s in seqs]
        if len(set(ids)) != len(ids):
            raise ConfigError("request_ids within one call must differ", field="request_id")
        self._loop.add(seqs, sinks)


@atexit.register
def _shutdown_all() -> None:
    for engine in list(_live):
        engine.shutdown()
