"""Prometheus metrics for /metrics: requests by route and status, latency and time-to-first-token
histograms (observed by the server), and the engines' own counters (read at scrape time)."""

from __future__ import annotations

import collections
import dataclasses
import operator
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
            "free_sequences": GaugeMetricFamily("llama_host_free_sequences", "Sequences free for a new request "
                                                "(a router's or an autoscaler's room)", labels=["model"]),
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
            "prompt_seconds": CounterMetricFamily("llama_host_prompt_seconds", "Time finished requests spent on their "
                                                  "prompts (admission to first token)", labels=["model"]),
            "generation_seconds": CounterMetricFamily("llama_host_generation_seconds", "Time finished requests spent "
                                                      "generating (first token to end)", labels=["model"]),
            "prompt_cache_hits": CounterMetricFamily("llama_host_prompt_cache_hits",
                                                     "Prompts that continued a conversation kept in host memory", labels=["model"]),
            "prompt_cache_tokens": CounterMetricFamily("llama_host_prompt_cache_tokens",
                                                       "Prompt tokens restored from host memory instead of evaluated",
                                                       labels=["model"]),
        }
        totals: dict[str, float] = {}
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
            for key, value in dataclasses.asdict(stats).items():
                totals[key] = (max if key == "n_tokens_max" else operator.add)(totals.get(key, 0), value)
        yield from gauges.values()
        yield from counters.values()
        # llama-server's names, for the dashboards built on them (all models together, unlabelled)
        totals = collections.defaultdict(float, totals)  # (no model loaded: every total is 0)
        for kind, name, doc, value in LLAMACPP_NAMES:
            if kind == "gauge":
                yield GaugeMetricFamily(name, doc, value=value(totals))
            else:
                yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value(totals))


def _per(a: str, b: str):
    return lambda t: t[a] / t[b] if t[b] else 0.0


# llama-server's metrics (its README's /metrics list, by the names its samples have), from the
# engines' statistics summed. (n_tokens_max, a high watermark with no _total, is a gauge here:
# Prometheus' counters end in _total.)
LLAMACPP_NAMES = (
    ("counter", "llamacpp:prompt_tokens_total", "Number of prompt tokens processed", lambda t: t["prompt_tokens"]),
    ("counter", "llamacpp:prompt_seconds_total", "Prompt process time in seconds", lambda t: t["prompt_seconds"]),
    ("gauge", "llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s",
     _per("prompt_tokens", "prompt_seconds")),
    ("counter", "llamacpp:tokens_predicted_total", "Number of generation tokens processed",
     lambda t: t["generated_tokens"]),
    ("counter", "llamacpp:tokens_predicted_seconds_total", "Predict process time in seconds",
     lambda t: t["generation_seconds"]),
    ("gauge", "llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s",
     _per("generated_tokens", "generation_seconds")),
    ("gauge", "llamacpp:requests_processing", "Number of requests processing", lambda t: t["busy_sequences"]),
    ("gauge", "llamacpp:requests_deferred", "Number of requests deferred", lambda t: t["queue_depth"]),
    ("gauge", "llamacpp:n_tokens_max", "High watermark of the context size observed", lambda t: t["n_tokens_max"]),
    ("counter", "llamacpp:n_decode_total", "Total number of llama_decode() calls", lambda t: t["decode_calls"]),
    ("gauge", "llamacpp:n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
     _per("busy_per_decode", "decode_calls")),
    # (no speculative decoding here: 0, as llama-server reports with it off)
    ("counter", "llamacpp:spec_decode_num_draft_tokens_total", "Total draft tokens generated", lambda _t: 0),
    ("counter", "llamacpp:spec_decode_num_accepted_tokens_total", "Total draft tokens accepted", lambda _t: 0),
    ("counter", "llamacpp:spec_decode_num_drafts_total", "Total speculative decoding verification steps", lambda _t: 0),
)


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
