"""Prometheus metrics of one app: HTTP traffic, streaming latencies, and the engine's state.

Each app has its own ``CollectorRegistry``, so several apps (tests, gateways
serving several engines) never collide in the process-wide default registry.
Engine figures (queue lengths, KV-cache use, token counts) are read from the
engine when Prometheus scrapes, not pushed on every step: the engine loop is
the hot path and stays unaware of the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from candle_agents.engine import Engine

# Latency buckets sized for local models: a few ms per token on a GPU, tens to
# hundreds of ms per token on a CPU, seconds to minutes for whole requests.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """The metrics one app exposes at ``/metrics``."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "candle_http_requests",
            "HTTP requests answered, by route and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "candle_e2e_request_latency_seconds",
            "Time from receiving a /v1 request to the end of its response (streams included).",
            ["endpoint"],
            buckets=_E2E_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "candle_time_to_first_token_seconds",
            "Time from receiving a streamed request to its first chunk carrying tokens.",
            ["endpoint"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "candle_inter_token_latency_seconds",
            "Time between consecutive token-carrying chunks of one streamed choice.",
            ["endpoint"],
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine, model_name))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def stream_timer(self, endpoint: str, start: float) -> StreamTimer:
        return StreamTimer(self, endpoint, start)


class StreamTimer:
    """Observes time-to-first-token and inter-token latency on one response's chunks."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, start: float) -> None:
        self._ttft = metrics.time_to_first_token.labels(endpoint)
        self._itl = metrics.inter_token_latency.labels(endpoint)
        self._start = start
        self._first_seen = False
        # Per choice: with n > 1 the choices' chunks interleave, and the gap
        # between two choices of one engine step is not a latency anybody sees.
        self._last: dict[int, float] = {}

    def observe(self, choice_indices: Iterable[int]) -> None:
        """Record the arrival of tokens for these choices (called as each chunk is sent)."""
        now = time.perf_counter()
        for index in choice_indices:
            if not self._first_seen:
                self._first_seen = True
                self._ttft.observe(now - self._start)
            last = self._last.get(index)
            if last is not None:
                self._itl.observe(now - last)
            self._last[index] = now


class _EngineCollector(Collector):
    """Reads the engine's queues, cache and counters at scrape time."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed; skip the registry's trial collect at registration

    def collect(self) -> Iterable[Metric]:
        engine, labels = self._engine, [self._model]
        stats: Any = engine.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["model"])
            family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model"])
            family.add_metric(labels, value)
            return family

        yield gauge("candle_requests_running", "Requests generating now.", engine.num_running)
        yield gauge("candle_requests_waiting", "Requests queued for a slot.", engine.num_waiting)
        yield gauge(
            "candle_kv_cache_usage_ratio",
            "Share of KV-cache blocks in use (0-1).",
            engine.kv_cache_usage,
        )
        yield gauge("candle_kv_cache_blocks", "KV-cache blocks in all.", engine.num_blocks)
        prompt, cached = stats.prompt_tokens, stats.cached_tokens
        yield gauge(
            "candle_prefix_cache_hit_rate",
            "Share of prompt tokens of finished requests served from the prefix cache (0-1).",
            cached / prompt if prompt else 0.0,
        )
        yield counter("candle_prompt_tokens", "Prompt tokens of finished requests.", prompt)
        yield counter(
            "candle_prefix_cache_hit_tokens",
            "Prompt tokens of finished requests whose KV came from the prefix cache.",
            cached,
        )
        yield counter("candle_generation_tokens", "Tokens generated.", stats.tokens_generated)
        yield counter(
            "candle_requests_finished",
            "Engine requests finished (any reason).",
            stats.requests_finished,
        )
