"""Counters the engine keeps for /metrics and the tests."""

from __future__ import annotations

import dataclasses
import threading


@dataclasses.dataclass
class EngineStats:
    queue_depth: int = 0  # requests waiting for a sequence
    busy_sequences: int = 0
    requests_finished: int = 0
    prompt_tokens: int = 0  # prompt tokens evaluated
    cached_tokens: int = 0  # prompt tokens reused from the KV cache instead
    generated_tokens: int = 0
    decode_calls: int = 0  # llama_decode calls
    decode_seconds: float = 0.0  # time spent in llama_decode
    ttft_seconds_sum: float = 0.0  # time to first token, summed over requests that produced one
    ttft_count: int = 0
    prompt_cache_entries: int = 0  # conversations' KV states kept in host memory
    prompt_cache_bytes: int = 0
    prompt_cache_hits: int = 0  # prompts that got one back
    prompt_cache_tokens: int = 0  # prompt tokens those spared evaluating
    sequences: int = 0  # the context's sequences (--parallel): busy ones and free ones
    prompt_seconds: float = 0.0  # time finished requests spent from their admission to their first token
    generation_seconds: float = 0.0  # and from their first token to their end
    busy_per_decode: int = 0  # sequences in each llama_decode call, summed over the calls
    n_tokens_max: int = 0  # the most tokens a sequence has held

    @property
    def free_sequences(self) -> int:
        return self.sequences - self.busy_sequences


class StatsRecorder:
    """Written by the scheduler thread, read from anywhere as a consistent snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = EngineStats()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def set(self, **values: float) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self._stats, name, value)

    def peak(self, **values: float) -> None:
        """Raise each named statistic to ``value`` where it is lower (a high watermark)."""
        with self._lock:
            for name, value in values.items():
                setattr(self._stats, name, max(getattr(self._stats, name), value))

    def snapshot(self) -> EngineStats:
        with self._lock:
            return dataclasses.replace(self._stats)
