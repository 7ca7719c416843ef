"""Prometheus metrics for /metrics: requests by route and status, latency and time-to-first-token
histograms (observed by the server), and the engines' own counters (read at scrape time)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llama_host.registry import ModelRegistry, ModelState

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        gauges = {
            "queue_depth": GaugeMetricFamily("llama_host_queue_depth", "Requests waiting for a sequence", labels=["model"]),
            "busy_sequences": GaugeMetricFamily("llama_host_busy_sequences", "Sequences generating", labels=["model"]),
            "prompt_cache_entries": GaugeMetricFamily("llama_host_prompt_cache_entries",
                                                      "Conversations' KV states kept in host memory", labels=["model"]),
            "prompt_cache_bytes": GaugeMetricFamily("llama_host_prompt_cache_bytes", "Bytes those states take",
                                                    labels=["model"]),
        }
        counters = {
            "prompt_tokens": CounterMetricFamily("llama_host_prompt_tokens", "Prompt tokens evaluated", labels=["model"]),
            "cached_tokens": CounterMetricFamily("llama_host_cached_tokens", "Prompt tokens reused from the KV cache", labels=["model"]),
            "generated_tokens": CounterMetricFamily("llama_host_generated_tokens", "Tokens generated", labels=["model"]),
            "decode_calls": CounterMetricFamily("llama_host_decode_calls", "llama_decode calls", labels=["model"]),
            "prompt_cache_hits": CounterMetricFamily("llama_host_prompt_cache_hits",
                                                     "Prompts that continued a conversation kept in host memory", labels=["model"]),
            "prompt_cache_tokens": CounterMetricFamily("llama_host_prompt_cache_tokens",
                                                       "Prompt tokens restored from host memory instead of evaluated",
                                                       labels=["model"]),
        }
        totals = dict.fromkeys(LLAMACPP_NAMES, 0)
        loaded = GaugeMetricFamily("llama_host_model_loaded", "1 while the model is loaded, else 0", labels=["model"])
        loads = CounterMetricFamily("llama_host_model_loads", "Times the model was loaded", labels=["model"])
        for name, status in self.registry.statuses().items():
            loaded.add_metric([name], status.state is ModelState.LOADED)
            loads.add_metric([name], status.loads)
        yield loaded
        yield loads
        for name in self.registry.names:
            with self.registry.peek(name) as served:  # (an unloaded model has no engine; a peek loads none)
                if served is None:
                    continue
                stats = served.engine.stats()
            for key, family in (*gauges.items(), *counters.items()):
                family.add_metric([name], getattr(stats, key))
                if key in totals:
                    totals[key] += getattr(stats, key)
        yield from gauges.values()
        yield from counters.values()
        # llama-server's names, for the dashboards built on them (all models together, unlabelled)
        for key, (kind, name, doc) in LLAMACPP_NAMES.items():
            yield (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, doc, value=totals[key])


# Engine statistic -> llama-server's metric of the same meaning (its README's /metrics list).
LLAMACPP_NAMES = {
    "prompt_tokens": ("counter", "llamacpp:prompt_tokens", "Number of prompt tokens processed"),
    "generated_tokens": ("counter", "llamacpp:tokens_predicted", "Number of generation tokens processed"),
    "decode_calls": ("counter", "llamacpp:n_decode", "Total number of llama_decode() calls"),
    "busy_sequences": ("gauge", "llamacpp:requests_processing", "Number of requests processing"),
    "queue_depth": ("gauge", "llamacpp:requests_deferred", "Number of requests deferred"),
}


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.registry = CollectorRegistry()
        self.requests = Counter("llama_host_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram("llama_host_request_seconds", "Request latency to the last byte", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("llama_host_time_to_first_token_seconds", "Streamed requests: time to the first event",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)

    def watch(self, models: ModelRegistry) -> None:
        self.registry.register(_EngineCollector(models))

    def finished(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
