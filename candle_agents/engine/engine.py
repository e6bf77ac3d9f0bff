"""The engine: one background loop per model, fed from any thread or event loop."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.block_manager import BlockManager
from candle_agents.engine.config import EngineConfig
from candle_agents.engine.detokenizer import IncrementalDetokenizer
from candle_agents.engine.grammar import GrammarCompiler, TokenMasks
from candle_agents.engine.loader import open_checkpoint
from candle_agents.engine.model_runner import ModelRunner, resolve_device
from candle_agents.engine.outputs import GenerationResult, StreamDelta, TokenLogprob, Usage
from candle_agents.engine.params import GenerationParams
from candle_agents.engine.requests import AsyncSink, RequestStream, SyncSink, iterate_sync
from candle_agents.engine.sampler import Sampler
from candle_agents.engine.scheduler import ScheduledBatch, Scheduler
from candle_agents.engine.sequence import Sequence
from candle_agents.engine.tokenizer import TextTokenizer
from candle_agents.errors import (
    CandleError,
    ConfigError,
    ContextLengthError,
    GenerationError,
    RequestCancelled,
    TokenizationError,
)

logger = logging.getLogger(__name__)

Prompt = str | list[int]

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
        self.model_name = config.model or "smollm2-135m-instruct"
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
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.prefill_chunk_size,
            config.enable_chunked_prefill,
        )
        self.sampler = Sampler(self.runner.device, config.seed)
        # Built on the first constrained request (its tokenizer index takes ~0.25 s).
        self._grammars: GrammarCompiler | None = None
        self._grammars_lock = threading.Lock()
        if self.runner.device.type == "cpu":
            # Loading ran parallel regions on this thread; its idle OpenMP pool
            # would make libgomp stop spinning the engine thread's workers.
            cpu_kernels.release_thread_pool()
        self._requests: dict[str, tuple[Sequence, SyncSink | AsyncSink]] = {}
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._ids = itertools.count()
        self.stats = EngineStats()
        self._thread = threading.Thread(
            target=self._loop, name=f"candle-engine-{self.model_name}", daemon=True
        )
        self._thread.start()
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
        return _assemble(stream.request_id, deltas, stream.prompt_token_ids)

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
        self._post("abort", request_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is queued or running (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def shutdown(self) -> None:
        """Abort what is in flight, stop the loop and release the KV cache."""
        if self._closed:
            return
        self._closed = True
        self._post("shutdown", None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
            if not self._thread.is_alive():  # else a step may still be using the cache
                self.runner.release()
        if self._grammars is not None:
            self._grammars.close()
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
        return not self._closed and self._thread.is_alive()

    @property
    def num_running(self) -> int:
        """Requests holding KV blocks and generating (read without a lock: approximate)."""
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        """Requests submitted but not yet running, including those still in the inbox."""
        return len(self.scheduler.waiting) + sum(
            len(p) for kind, p in list(self._inbox) if kind == "add"
        )

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
        return _assemble(seq.request_id, deltas, seq.prompt_token_ids)

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
        params = params or GenerationParams()
        params.validate()
        ids = self._prompt_ids(prompt)
        if len(ids) >= self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens but this engine's max_model_len is "
                f"{self.max_model_len} (prompt plus at least one new token): shorten it",
                num_tokens=len(ids),
                limit=self.max_model_len,
            )
        vocab = self.runner.model.vocab_size
        bad = [t for t in params.logit_bias if t >= vocab]
        if bad:
            raise ConfigError(
                f"logit_bias names token id {bad[0]}, outside the vocabulary [0, {vocab})",
                field="logit_bias",
            )
        rid = request_id or f"req-{uuid.uuid4().hex[:16]}"
        if rid in self._requests:
            raise ConfigError(f"request_id {rid!r} is already in use", field="request_id")
        seq = Sequence(
            request_id=rid,
            prompt_token_ids=ids,
            params=params,
            eos_token_ids=self.eos_token_ids,
            max_total_tokens=min(self.max_model_len, len(ids) + params.max_tokens),
            detokenizer=IncrementalDetokenizer(
                self.tokenizer.tokenizer, params.stop, params.skip_special_tokens
            ),
        )
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        if params.grammar is not None:
            # Compiled (or found in the cache) here, so a bad grammar fails in
            # the caller's thread and nothing is queued.
            seq.matcher = self._grammar_compiler().compile(params.grammar)
        return seq

    def _grammar_compiler(self) -> GrammarCompiler:
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer.tokenizer, self.eos_token_ids)
            return self._grammars

    def _register(self, seqs: list[Sequence], sinks: list[SyncSink | AsyncSink]) -> None:
        ids = [s.request_id for s in seqs]
        if len(set(ids)) != len(ids):
            raise ConfigError("request_ids within one call must differ", field="request_id")
        for seq, sink in zip(seqs, sinks):
            self._requests[seq.request_id] = (seq, sink)
        self._post("add", seqs)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = list(prompt)
            vocab = self.runner.model.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise TokenizationError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        else:
            raise TokenizationError(
                f"prompt must be a str or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise TokenizationError("the prompt is empty: give at least one token")
        return ids

    def _post(self, kind: str, payload: Any) -> None:
        if kind == "add":
            self._idle.clear()
        self._inbox.append((kind, payload))
        self._wake.set()

    # -- the loop (engine thread) --------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self._drain_inbox():
                return
            if not self.scheduler.has_work:
                if not self._inbox:
                    if not self._requests:
                        self._idle.set()
                    if self.runner.device.type == "cpu":
                        # An idle engine holds no spinning-capable OpenMP pool:
                        # other threads' torch work runs as if it were alone.
                        cpu_kernels.release_thread_pool()
                    self._wake.wait()
                    self._wake.clear()
                continue
            try:
                self._step()
            except Exception as exc:  # a bug or a device failure: fail everyone, keep serving
                logger.exception("engine step failed")
                self._fail_all(GenerationError(f"generation failed: {exc!r}"))

    def _drain_inbox(self) -> bool:
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                for seq in payload:
                    self.scheduler.add(seq)
            elif kind == "abort":
                entry = self._requests.get(payload)
                if entry is not None:
                    self._finish(entry[0], "abort")
            elif kind == "shutdown":
                self._fail_all(RequestCancelled("the engine was shut down"))
                self._idle.set()
                return False
        return True

    def _step(self) -> None:
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        if batch.empty:
            return
        fresh = self.block_manager.take_fresh()
        if fresh:
            self.runner.zero_blocks(fresh)
        t1 = time.perf_counter()
        # Grammar masks for the rows that sample this step are filled on a worker
        # thread during the forward pass (llguidance releases the GIL).
        pending = self._start_masks(batch)
        try:
            logits, sampling = self.runner.execute(batch)
        finally:
            masks = pending[1].result() if pending is not None else None
        self.stats.forward_time += time.perf_counter() - t1
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.register_computed(seq)
        to_sample = [batch.seqs[i] for i in sampling]
        constrained = [s for s in to_sample if s.matcher is not None]
        if not constrained:
            masks = None
        elif pending is None or pending[0] != constrained:  # not foreseen: fill them now
            masks = self._grammar_compiler().fill_masks([s.matcher for s in constrained])
        out = self.sampler(logits, to_sample, masks) if to_sample else None
        self.stats.record_step(sum(batch.num_new_tokens), len(to_sample), time.perf_counter() - t0)
        if out is None:
            return
        now = time.monotonic()
        for seq, token, lp in zip(to_sample, out.token_ids, out.logprobs):
            self._append(seq, token, lp, now)

    def _start_masks(
        self, batch: ScheduledBatch
    ) -> tuple[list[Sequence], Future[TokenMasks]] | None:
        """Start filling the masks of the constrained sequences that sample this step."""
        if self._grammars is None:
            return None
        seqs = [
            s
            for s, n in zip(batch.seqs, batch.num_new_tokens)
            if s.matcher is not None and s.num_computed_tokens + n == s.num_tokens
        ]
        if not seqs:
            return None
        return seqs, self._grammars.start_fill([s.matcher for s in seqs])

    def _append(self, seq: Sequence, token: int, lp, now: float) -> None:
        if seq.first_token_time is None:
            seq.first_token_time = now
        seq.output_token_ids.append(token)
        p = seq.params
        finish = None
        flush = False  # release text held back for a possible stop string
        text = ""
        # Ending on a token: text held back as a possible start of a stop
        # string never became one, so it is released (flush).
        if token in p.stop_token_ids:
            finish, flush, seq.stop_reason = "stop", True, token
        elif token in seq.eos_token_ids and not p.ignore_eos:
            finish, flush = "stop", True
        else:
            text = seq.detokenizer.add(token)
            if seq.detokenizer.stop_string is not None:
                finish, seq.stop_reason = "stop", seq.detokenizer.stop_string
            elif (
                len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= seq.max_total_tokens
            ):
                finish, flush = "length", True
            if (
                seq.matcher is not None
                and seq.detokenizer.stop_string is None
                and self._advance_grammar(seq, token)
            ):
                finish, flush = "stop", True
        logprobs = None
        if lp is not None:
            entry = TokenLogprob(
                token,
                self.tokenizer.decode([token], skip_special_tokens=False),
                lp[0],
                [(t, self.tokenizer.decode([t], skip_special_tokens=False), v) for t, v in lp[1]],
            )
            logprobs = [entry]
        if finish is None:
            self._deliver(seq, StreamDelta(seq.request_id, text, [token], logprobs))
            return
        text += seq.detokenizer.flush() if flush else ""
        self._finish(seq, finish, text, [token], logprobs)

    def _advance_grammar(self, seq: Sequence, token: int) -> bool:
        """Feed the sampled token to the request's grammar; True when it must stop."""
        matcher = seq.matcher
        if not matcher.consume_token(token):
            # Tokens are masked, so only a bug or a state the mask could not
            # express gets here: end the request rather than the loop.
            logger.warning(
                "request %s: the grammar rejected token %d (%s); finishing it",
                seq.request_id,
                token,
                matcher.get_error(),
            )
            return True
        # Complete: nothing but EOS may follow, so there is no need to sample it
        # (with ignore_eos too: the grammar has the last word).
        return matcher.is_stopped()

    def _finish(self, seq, reason, text="", token_ids=None, logprobs=None) -> None:
        self.scheduler.finish(seq)
        seq.finish_reason = reason
        seq.matcher = None
        usage = Usage(seq.num_prompt_tokens, len(seq.output_token_ids), seq.cached_tokens or 0)
        self.stats.record_finish(seq, usage)
        delta = StreamDelta(
            seq.request_id, text, token_ids or [], logprobs, reason, usage, seq.stop_reason
        )
        self._deliver(seq, delta)
        self._requests.pop(seq.request_id, None)

    def _deliver(self, seq: Sequence, item) -> None:
        entry = self._requests.get(seq.request_id)
        if entry is not None and not entry[1].put(item) and not seq.is_finished:
            self._finish(seq, "abort")

    def _fail_all(self, error: CandleError) -> None:
        for seq, sink in list(self._requests.values()):
            self.scheduler.finish(seq)
            seq.matcher = None
            sink.put(error)
        self._requests.clear()


class EngineStats:
    """Counters read by metrics endpoints and benchmarks (approximate, lock-free)."""

    def __init__(self) -> None:
        self.steps = 0
        self.step_time = 0.0  # whole steps: scheduling, forward, sampling, detokenizing
        self.forward_time = 0.0  # the model's forward pass alone
        self.tokens_computed = 0
        self.tokens_generated = 0
        self.requests_finished = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.time_to_first_token = 0.0  # summed over finished requests

    def record_step(self, computed: int, generated: int, seconds: float) -> None:
        self.steps += 1
        self.step_time += seconds
        self.tokens_computed += computed
        self.tokens_generated += generated

    def record_finish(self, seq: Sequence, usage: Usage) -> None:
        self.requests_finished += 1
        if seq.first_token_time is not None:
            self.time_to_first_token += seq.first_token_time - seq.arrival_time
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.cached_tokens


def _assemble(
    request_id: str, deltas: list[StreamDelta], prompt_ids: list[int]
) -> GenerationResult:
    last = deltas[-1]
    has_lp = any(d.logprobs for d in deltas)
    return GenerationResult(
        request_id=request_id,
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        finish_reason=last.finish_reason or "abort",
        usage=last.usage or Usage(),
        logprobs=[lp for d in deltas for lp in (d.logprobs or [])] if has_lp else None,
        stop_reason=last.stop_reason,
        prompt_token_ids=prompt_ids,
    )


@atexit.register
def _shutdown_all() -> None:
    for engine in list(_live):
        engine.shutdown()
