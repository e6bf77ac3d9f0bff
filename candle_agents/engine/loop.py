"""The engine thread: one loop per engine that schedules, runs and delivers.

Callers' threads only append to the inbox (``post``) and wake the loop; the
loop alone touches the scheduler, the block manager, the runner and the
sequences, so none of them needs a lock. Each step: schedule a batch, run the
forward pass (grammar masks fill on a worker meanwhile), let the scheduler
advance the batch, sample, and route each token to its request's sink; a
request that ends is finished here, its blocks freed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from candle_agents.engine import cpu_kernels
from candle_agents.engine.grammar import LazyGrammarCompiler, TokenMasks
from candle_agents.engine.model_runner import ModelRunner
from candle_agents.engine.outputs import FinishReason, StreamDelta, TokenLogprob, Usage
from candle_agents.engine.requests import AsyncSink, SyncSink
from candle_agents.engine.sampler import Sampler
from candle_agents.engine.scheduler import ScheduledBatch, Scheduler
from candle_agents.engine.sequence import Sequence
from candle_agents.engine.stats import EngineStats
from candle_agents.engine.stopping import append_token
from candle_agents.engine.tokenizer import TextTokenizer
from candle_agents.errors import CandleError, GenerationError, RequestCancelled

logger = logging.getLogger(__name__)

Sink = SyncSink | AsyncSink


class EngineLoop:
    """Runs an engine's steps on its own thread and feeds each request's sink."""

    def __init__(
        self,
        name: str,
        runner: ModelRunner,
        scheduler: Scheduler,
        sampler: Sampler,
        tokenizer: TextTokenizer,
        grammars: LazyGrammarCompiler,
        stats: EngineStats,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.grammars = grammars
        self.stats = stats
        self.requests: dict[str, tuple[Sequence, Sink]] = {}
        self.inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self._cpu = runner.device.type == "cpu"
        self.thread = threading.Thread(target=self._run, name=f"candle-engine-{name}", daemon=True)

    # -- callers' threads ------------------------------------------------------------------

    def post(self, kind: str, payload: Any) -> None:
        """Queue ``("add", seqs)``, ``("abort", request_id)`` or ``("shutdown", None)``."""
        if kind == "add":
            self.idle.clear()
        self.inbox.append((kind, payload))
        self._wake.set()

    def add(self, seqs: list[Sequence], sinks: list[Sink]) -> None:
        for seq, sink in zip(seqs, sinks):
            self.requests[seq.request_id] = (seq, sink)
        self.post("add", seqs)

    @property
    def num_inbox_requests(self) -> int:
        return sum(len(p) for kind, p in list(self.inbox) if kind == "add")

    # -- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._drain_inbox():
                return
            if not self.scheduler.has_work:
                if not self.inbox:
                    if not self.requests:
                        self.idle.set()
                    if self._cpu:
                        # An idle engine holds no spinning-capable OpenMP pool:
                        # other threads' torch work runs as if it were alone.
                        cpu_kernels.release_thread_pool()
                    self._wake.wait()
                    self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # a bug or a device failure: fail everyone, keep serving
                logger.exception("engine step failed")
                self._fail_all(GenerationError(f"generation failed: {exc!r}"))

    def _drain_inbox(self) -> bool:
        while self.inbox:
            kind, payload = self.inbox.popleft()
            if kind == "add":
                for seq in payload:
                    self.scheduler.add(seq)
            elif kind == "abort":
                entry = self.requests.get(payload)
                if entry is not None:
                    self._finish(entry[0], "abort")
            elif kind == "shutdown":
                self._fail_all(RequestCancelled("the engine was shut down"))
                self.idle.set()
                return False
        return True

    def step(self) -> None:
        """Schedule one batch, run it, sample and deliver its tokens."""
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        if any(batch.fresh_blocks):
            self.runner.zero_blocks(batch.fresh_blocks)
        if batch.empty:
            return
        t1 = time.perf_counter()
        # Grammar masks for the rows that sample this step are filled on a worker
        # thread during the forward pass (llguidance releases the GIL).
        pending = self._start_masks(batch)
        try:
            logits, sampling = self.runner.execute(batch)
        finally:
            masks = pending[1].result() if pending is not None else None
        self.stats.forward_time += time.perf_counter() - t1
        self.scheduler.postprocess(batch)
        to_sample = [batch.seqs[i] for i in sampling]
        constrained = [s for s in to_sample if s.matcher is not None]
        if not constrained:
            masks = None
        elif pending is None or pending[0] != constrained:  # not foreseen: fill them now
            masks = self.grammars.get().fill_masks([s.matcher for s in constrained])
        out = self.sampler(logits, to_sample, masks) if to_sample else None
        self.stats.record_step(sum(batch.num_new_tokens), len(to_sample), time.perf_counter() - t0)
        if out is None:
            return
        now = time.monotonic()
        for seq, token, lp in zip(to_sample, out.token_ids, out.logprobs):
            self._emit(seq, token, lp, now)

    def _start_masks(
        self, batch: ScheduledBatch
    ) -> tuple[list[Sequence], Future[TokenMasks]] | None:
        """Start filling the masks of the constrained sequences that sample this step."""
        compiler = self.grammars.built
        if compiler is None:
            return None
        seqs = [
            s
            for s, n in zip(batch.seqs, batch.num_new_tokens)
            if s.matcher is not None and s.num_computed_tokens + n == s.num_tokens
        ]
        if not seqs:
            return None
        return seqs, compiler.start_fill([s.matcher for s in seqs])

    def _emit(self, seq: Sequence, token: int, lp, now: float) -> None:
        if seq.first_token_time is None:
            seq.first_token_time = now
        if seq.forced:  # written by the engine (a reasoning block's markers), not sampled
            token, lp = seq.forced.pop(0), None
        text, finish = append_token(seq, token)
        logprobs = None if lp is None else [self._logprob(token, lp)]
        if finish is None:
            self._deliver(seq, StreamDelta(seq.request_id, text, [token], logprobs))
        else:
            self._finish(seq, finish, text, [token], logprobs)

    def _logprob(self, token: int, lp) -> TokenLogprob:
        def piece(t: int) -> str:
            return self.tokenizer.decode([t], skip_special_tokens=False)

        return TokenLogprob(token, piece(token), lp[0], [(t, piece(t), v) for t, v in lp[1]])

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        text: str = "",
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        self.scheduler.finish(seq)
        seq.finish_reason = reason
        seq.matcher = seq.deferred_matcher = None
        usage = Usage(
            seq.num_prompt_tokens,
            len(seq.output_token_ids),
            seq.cached_tokens or 0,
            seq.reasoning_tokens,
        )
        self.stats.record_finish(seq, usage)
        delta = StreamDelta(
            seq.request_id, text, token_ids or [], logprobs, reason, usage, seq.stop_reason
        )
        self._deliver(seq, delta)
        self.requests.pop(seq.request_id, None)

    def _deliver(self, seq: Sequence, item: StreamDelta) -> None:
        entry = self.requests.get(seq.request_id)
        if entry is not None and not entry[1].put(item) and not seq.is_finished:
            self._finish(seq, "abort")  # the caller went away

    def _fail_all(self, error: CandleError) -> None:
        for seq, sink in list(self.requests.values()):
            self.scheduler.finish(seq)
            seq.matcher = seq.deferred_matcher = None
            sink.put(error)
        self.requests.clear()
