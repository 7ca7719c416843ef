"""Conversations kept warm beyond the slots: when a sequence is given to another prompt, the KV
state it held is kept in host memory (llama.cpp's sequence state, serialised), and a later prompt
that continues it gets it back instead of evaluating it again. Bounded in bytes, the least
recently used out first. Used by the scheduler thread only: no locking.

llama.cpp serialises whole sequences, so conversations that share a system prompt each hold a
copy of it; an entry whose tokens another entry extends is dropped as redundant.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

MIN_ENTRY_TOKENS = 16  # shorter prompts are re-evaluated faster than their state is copied around
RESERVE_BYTES = 1 << 30  # host memory a new entry must leave free (Linux MemAvailable)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclasses.dataclass
class Entry:
    tokens: list[int]  # what the state holds, in order from position 0
    state: bytes

    @property
    def size(self) -> int:
        return len(self.state) + 4 * len(self.tokens)


@dataclasses.dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0  # prompts that got a saved state back (counted by the engine)
    restored_tokens: int = 0  # prompt tokens those states spared evaluating
    saved: int = 0  # states saved
    evicted: int = 0  # states dropped for room


class PromptCache:
    def __init__(self, max_bytes: int, available: Callable[[], int | None] = lambda: None) -> None:
        """``available``: the host memory still free, in bytes (None: unknown), checked before
        each entry so the cache never pushes the process into swap or the OOM killer."""
        self.max_bytes = max_bytes
        self._available = available
        self._entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()  # oldest first
        self._ids = iter(range(1 << 62))
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: list[int], state: bytes) -> bool:
        """Keep ``state`` (of the sequence that held ``tokens``); False when it does not fit."""
        entry = Entry(list(tokens), state)
        if len(tokens) < MIN_ENTRY_TOKENS or not state or entry.size > self.max_bytes:
            return False
        for key, old in list(self._entries.items()):
            shared = common_prefix(old.tokens, entry.tokens)
            if shared == len(entry.tokens):  # an entry holds all of this already
                self._entries.move_to_end(key)
                return True
            if shared == len(old.tokens):  # this one extends an entry: that one is redundant
                self._drop(key)
        while self._entries and (self.stats.bytes + entry.size > self.max_bytes or not self._room_for(entry)):
            self._drop(next(iter(self._entries)))
            self.stats.evicted += 1
        if not self._room_for(entry):
            return False
        self._entries[next(self._ids)] = entry
        self.stats.entries, self.stats.bytes = len(self._entries), self.stats.bytes + entry.size
        self.stats.saved += 1
        return True

    def take(self, prompt: list[int], more_than: int) -> Entry | None:
        """The entry sharing the longest prefix with ``prompt``, if that is more than
        ``more_than`` tokens, out of the cache (the sequence it goes to holds it now)."""
        best, best_n = None, more_than
        for key, entry in self._entries.items():
            n = common_prefix(entry.tokens, prompt)
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None
        entry = self._entries[best]
        self._drop(best)
        return entry

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.stats.entries, self.stats.bytes = len(self._entries), self.stats.bytes - entry.size

    def _room_for(self, entry: Entry) -> bool:
        free = self._available()
        return free is None or free - entry.size >= RESERVE_BYTES
