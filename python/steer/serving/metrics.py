"""GET /metrics: the server's state and counters in Prometheus' text format (prometheus_client),
in a registry of the app's own (two apps in one process do not share counters).

Gauges, read from the engine loop's stats at each scrape: ``steer_requests_running`` and
``steer_requests_waiting`` (engine requests: a completion with ``n`` choices is ``n`` of them),
``steer_kv_blocks_used`` and ``steer_kv_blocks_total``, ``steer_pool_examples{pool=...}``. Counters: ``steer_requests_total`` (HTTP
completion requests answered, by endpoint and status code), ``steer_prompt_tokens_total``,
``steer_generation_tokens_total``, ``steer_engine_step_errors_total``, ``steer_engine_request_errors_total``,
``steer_context_tokens_total{role=...}`` and ``steer_cached_context_tokens_total{role=...}`` (the
prefix cache: context tokens admitted per stream role, prompt, base, negative and chunk, the
per-example chunks of --per-example-kv, and how many were found cached). Histograms:
``steer_request_latency_seconds`` (a completion request from arrival to its last byte) and
``steer_time_to_first_token_seconds``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)


class _LoopCollector:
    def __init__(self, stats, pool_sizes) -> None:
        self.stats, self.pool_sizes = stats, pool_sizes

    def collect(self):
        stats = self.stats
        pools = GaugeMetricFamily("steer_pool_examples", "examples in each negative pool", labels=["pool"])
        for name, size in self.pool_sizes():
            pools.add_metric([name], size)
        yield pools
        yield GaugeMetricFamily("steer_requests_running", "engine requests decoding now", value=stats.running)
        yield GaugeMetricFamily("steer_requests_waiting", "engine requests accepted and not yet decoding", value=stats.waiting)
        yield GaugeMetricFamily("steer_kv_blocks_used", "paged KV blocks held by requests", value=stats.kv_blocks_used)
        yield GaugeMetricFamily("steer_kv_blocks_total", "paged KV blocks of the engine", value=stats.kv_blocks_total)
        yield CounterMetricFamily("steer_engine_step_errors", "engine steps that raised (their requests failed)", value=stats.step_errors)
        yield CounterMetricFamily("steer_engine_request_errors", "engine requests failed alone: their logits could not be sampled from (NaN, +inf)",
                                  value=stats.request_errors)  # fmt: skip
        for name, help_text, table in (
            ("steer_context_tokens", "context tokens of admitted streams, by stream role", stats.context_tokens),
            ("steer_cached_context_tokens", "of those, tokens found in the prefix cache", stats.cached_tokens),
        ):
            family = CounterMetricFamily(name, help_text, labels=["role"])
            for role, tokens in sorted(table.items()):
                family.add_metric([role], tokens)
            yield family


class ServerMetrics:
    def __init__(self, stats, pool_sizes) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LoopCollector(stats, pool_sizes))
        self.requests = Counter("steer_requests", "completion requests answered", ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("steer_prompt_tokens", "prompt tokens of answered requests", registry=self.registry)
        self.generation_tokens = Counter("steer_generation_tokens", "tokens generated", registry=self.registry)
        self.latency = Histogram("steer_request_latency_seconds", "completion request latency", buckets=LATENCY_BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.first_token = Histogram("steer_time_to_first_token_seconds", "time to the first generated token",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
