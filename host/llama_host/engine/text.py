"""From token bytes to the text a client sees: UTF-8 safe, with stop strings held back.

Pieces of tokens arrive as bytes; a multi-byte character may be split across tokens, and a
random-weight (or just unlucky) model emits byte sequences that are not UTF-8 at all. The
incremental decoder holds back an incomplete character until its last byte arrives and turns
invalid bytes into U+FFFD, so every piece of text handed out is valid.

Stop strings are matched on the decoded text, across token boundaries. Text that could still be
the start of a stop string is held back until it can no longer match, so a stop string never
reaches the client, not even partly, and the concatenation of the pieces equals the full text.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in dict.fromkeys(stop) if s]
        self._held = ""  # decoded text that may begin a stop string
        self.stopped_by: str | None = None  # the stop string that matched

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit (may be empty)."""
        if self.stopped_by is not None:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stop:
            self._held = ""
            return text
        # The earliest match wins; the text before it is emitted, the rest dropped.
        hits = [(i, s) for s in self._stop if (i := text.find(s)) >= 0]
        if hits:
            index, stop = min(hits)
            self.stopped_by = stop
            self._held = ""
            return text[:index]
        keep = self._partial_match_length(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    @property
    def settled(self) -> bool:
        """Everything pushed so far has been handed out (or dropped after a stop string)."""
        return self.stopped_by is not None or (not self._held and not self._decoder.getstate()[0])

    def finish(self) -> str:
        """Generation ended: release held text (a held stop prefix can no longer complete) and
        any incomplete character (as U+FFFD)."""
        if self.stopped_by is not None:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _partial_match_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
