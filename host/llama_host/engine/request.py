"""What a caller submits to the engine and the handle it gets back."""

from __future__ import annotations

import dataclasses
import enum
import queue
import threading
import time
from collections.abc import Iterator, Sequence

from llama_host.engine.logprobs import TokenLogprob
from llama_host.engine.sampling import GREEDY, SamplingParams
from llama_host.errors import HostError


class FinishReason(str, enum.Enum):
    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached, or the sequence's context is full
    CANCELLED = "cancelled"  # the caller cancelled (client gone)
    ERROR = "error"  # the engine failed; ``Result.error`` says why


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    prompt: Sequence[int]
    sampling: SamplingParams = GREEDY
    max_tokens: int | None = None  # None: until the context is full
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # the generated tokens' log-probabilities, with this many alternatives
    prompt_logprobs: bool = False  # the prompt's too (in Result; the prompt is evaluated afresh)
    slot: int | None = None  # this sequence only (llama-server's id_slot): waits until it is free


@dataclasses.dataclass
class Result:
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache, not evaluated again
    completion_tokens: int
    stop: str | None = None  # the stop string that ended generation
    context_full: bool = False  # LENGTH because the sequence's context ran out
    time_to_first_token: float | None = None  # seconds from submit to the first token
    prompt_seconds: float | None = None  # from getting a sequence to the first token (prompt evaluation)
    generation_seconds: float | None = None  # from the first token to the end
    error: HostError | None = None
    slot: int = -1  # the sequence that served the request (-1: it never got one)


@dataclasses.dataclass(frozen=True)
class TokenOutput:
    """One generated token: its id and the text it makes safe to emit ("" while held back);
    with ``logprobs`` requested, those of the tokens whose text is now all out (several after
    held-back text is released, none while it is held; a token cut by a stop string has none)."""

    token: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


class RequestHandle:
    """Iterate for :class:`TokenOutput` items, one per generated token, in order; when the
    iteration ends, :attr:`result` is set. A final item with token -1 carries text released at
    the end (held stop-string prefixes, an incomplete character). Thread-safe; one consumer."""

    _END = object()

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.submitted = time.monotonic()
        self.result: Result | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._collected: list[str] | None = None  # set by text(): outputs gather here, unsignalled
        self._cancelled = threading.Event()
        self._sampler = None  # built at submit, owned by the engine
        # request.prompt_logprobs: per prompt token (the first has none), set before the first output
        self.prompt_logprobs: tuple[TokenLogprob | None, ...] = ()
        self.cached_tokens = 0  # prompt tokens reused from the KV cache, set when it gets a sequence

    # --- consumer side ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[TokenOutput]:
        while (item := self.next()) is not None:
            yield item

    def next(self, timeout: float | None = None) -> TokenOutput | None:
        """The next output, or None once the request has finished (then ``result`` is set)."""
        if self.result is not None and self._queue.empty():
            return None
        item = self._queue.get(timeout=timeout)
        if item is self._END:
            return None
        return item

    def text(self) -> str:
        """Wait for the end and return the whole text. From here on the engine appends each
        token's text to a list instead of waking this thread for it: one wake-up per request,
        not per token. Outputs queued before the switch still come first: the engine emits
        from one thread, so everything it queued precedes everything it collected."""
        self._collected = collected = []
        head = [out.text for out in self]
        return "".join(head) + "".join(collected)

    def cancel(self) -> None:
        """Stop generating; the engine frees the sequence at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # --- engine side ------------------------------------------------------------------------

    def _emit(self, output: TokenOutput) -> None:
        if self._collected is not None:
            self._collected.append(output.text)
        else:
            self._queue.put(output)

    def _finish(self, result: Result) -> None:
        self.result = result
        self._queue.put(self._END)


class Cancellation:
    """Set once, from any thread, when nobody waits for a run's answer any more (its client has
    gone, the server shuts down): every handle registered with it, before or after, is cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[RequestHandle] = []
        self.is_set = False

    def register(self, handle: RequestHandle) -> None:
        with self._lock:
            self._handles = [h for h in self._handles if h.result is None]  # forget finished ones
            self._handles.append(handle)
            if not self.is_set:
                return
        handle.cancel()

    def set(self) -> None:
        with self._lock:
            self.is_set = True
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.cancel()
