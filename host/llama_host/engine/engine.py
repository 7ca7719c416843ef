"""The continuous-batching engine: one model, one context, one scheduler thread.

The context holds ``parallel`` sequences of ``ctx_size`` tokens each. Each step the scheduler
(1) admits waiting requests into free sequences, reusing the longest cached prefix, (2) puts every
active sequence into a single ``llama_batch`` (one token for each decoding sequence first, then
prompt chunks up to ``batch_size``, so a long prompt never stalls the others for more than a
step), (3) calls ``llama_decode`` once (the GIL is released meanwhile), and (4) samples each
sequence that produced logits and hands the token to its waiting consumer.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from llama_host.engine import aborts, lib, slot_file
from llama_host.engine.context import Batch, Context, DecodeError
from llama_host.engine.logprobs import TokenLogprob, logits_at, token_logprob
from llama_host.engine.model import Model
from llama_host.engine.prompt_cache import PromptCache, common_prefix
from llama_host.engine.request import FinishReason, GenerationRequest, RequestHandle, Result, TokenOutput
from llama_host.engine.sampling import Sampler
from llama_host.engine.stats import EngineStats, StatsRecorder
from llama_host.engine.text import TextStream
from llama_host.errors import (EngineBroken, EngineClosed, EngineFailure, HostError, PromptTooLong, QueueFull, SlotBusy,
                               SlotStateError)
from llama_host.resource import Resource

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    ctx_size: int = 4096  # tokens of context for each sequence
    parallel: int = 4  # sequences decoded together
    batch_size: int = 512  # tokens per llama_decode call
    threads: int | None = None
    queue_size: int = 64  # requests waiting beyond the busy sequences
    flash_attn: bool | None = None  # None: llama.cpp decides
    cache_bytes: int = 0  # host memory for the KV states of conversations past the slots (0: none)
    stall_seconds: float = 0.0  # a step running longer is a stall /health reports (0: never)


class UnservableConfig(ValueError):
    """A context or thread count that llama.cpp or this machine's memory cannot take."""


PROMPT_LOGITS_BYTES = 64 << 20  # logits of scored prompt tokens per step (echo with logprobs)
MIN_COPY = 8  # prompt tokens a copy from a busy sequence must save (Engine._donor)
MAX_CELLS = 1 << 30  # KV cells of one context: llama.cpp counts them in 32-bit integers
MAX_THREADS = 512  # GGML_MAX_N_THREADS; past it ggml (or OpenMP, before it) fails at the first decode


def available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_config(model: Model, config: EngineConfig) -> None:
    """Refuse, before llama.cpp allocates anything, what it would fail on (or crash on, at the
    first decode) and a context that would exhaust host memory (an out-of-memory kill, not an
    error, would follow)."""
    if config.threads is not None and config.threads > MAX_THREADS:
        raise UnservableConfig(f"{config.threads} threads: llama.cpp computes with at most {MAX_THREADS}")
    max_seq = lib.C.llama_max_parallel_sequences()
    if config.parallel > max_seq:
        raise UnservableConfig(f"{config.parallel} parallel sequences: llama.cpp decodes at most {max_seq}")
    cells = config.ctx_size * config.parallel
    most = MAX_CELLS // config.parallel
    if cells > MAX_CELLS:
        raise UnservableConfig(f"a context of {config.ctx_size} tokens × {config.parallel} sequences is more "
                              f"than llama.cpp can address: at most {most} tokens per sequence")
    if model.info.n_gpu_layers == 0 or not lib.supports_gpu_offload():  # the KV cache is in host memory
        available, per_token = available_memory(), model.kv_bytes_per_token()
        if available is not None and cells * per_token > available:
            most = min(most, available // (per_token * config.parallel))
            raise UnservableConfig(
                f"a context of {config.ctx_size} tokens × {config.parallel} sequences needs "
                f"{_size(cells * per_token)} of KV cache, more than the {_size(available)} of memory available: "
                f"at most {most} tokens per sequence fit")
    if config.ctx_size > model.info.n_ctx_train:
        log.warning("a context of %d tokens is more than the %d %s was trained on: answers past that degrade",
                    config.ctx_size, model.info.n_ctx_train, model.path.name)


def _size(n: float) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


class _Slot:
    """One sequence of the context and the request it serves, if any."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose KV entries this sequence holds, in order
        self.last_used = 0.0
        self.handle: RequestHandle | None = None
        self.sampler: Sampler | None = None
        self.text: TextStream | None = None
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token: int | None = None  # sampled, not yet in the KV cache
        self.n_prompt = self.n_cached = self.n_generated = 0
        self.batch_index = -1  # index of this sequence's logits in the current batch
        self.first_token_at: float | None = None
        self.admitted_at = 0.0  # when the request got this slot: its prompt's evaluation starts
        self.logprobs: list[TokenLogprob] = []  # of generated tokens whose text is held back
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # request.prompt_logprobs
        self.prompt_rows: list[tuple[int, int]] = []  # (batch index, the prompt token its logits predict)

    @property
    def busy(self) -> bool:
        return self.handle is not None

    @property
    def position(self) -> int:
        return len(self.cached)


def _fit(prompt: list[int], slot: _Slot) -> tuple:
    """How well a free slot suits a prompt: the longest shared prefix; when none is shared
    (a BOS alone is nothing), an empty slot, then the least recently used one."""
    shared = common_prefix(slot.cached, prompt)
    return shared if shared > 1 else 0, not slot.cached, -slot.last_used


class Engine(Resource):
    def __init__(self, model: Model, config: EngineConfig = EngineConfig()) -> None:
        check_config(model, config)
        self.model = model
        self.config = config
        self.ctx = Context(
            model,
            n_ctx=config.ctx_size * config.parallel,
            n_batch=config.batch_size,
            n_seq_max=config.parallel,
            n_threads=config.threads,
            flash_attn=config.flash_attn,
        )
        # llama.cpp rounds the context up; each sequence gets an equal share of the cells.
        self.n_ctx_seq = self.ctx.n_ctx // config.parallel
        self._batch = Batch(self.ctx.n_batch)
        self._slots = [_Slot(i) for i in range(config.parallel)]
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        # work on the context from other threads (slot actions), run by the scheduler between steps
        self._controls: collections.deque[tuple[Callable[[], dict], Future]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stats = StatsRecorder()
        self._stats.set(sequences=config.parallel)
        self._cache = PromptCache(config.cache_bytes, available_memory) if config.cache_bytes > 0 else None
        self.broken: EngineBroken | None = None  # llama.cpp aborted in this engine: it serves no more
        self._working = False  # the scheduler is in a step (calling llama.cpp), not waiting for work
        self._step_started: float | None = None  # time.monotonic() of the step in progress
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.info.name}", daemon=True)
        aborts.watch(self)
        self._thread.start()

    # --- public API (any thread) --------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; raises PromptTooLong, InvalidGrammar, QueueFull or EngineClosed."""
        n_prompt = len(request.prompt)
        if n_prompt == 0:
            raise ValueError("the prompt has no tokens")
        if n_prompt >= self.n_ctx_seq:
            raise PromptTooLong(n_prompt, self.n_ctx_seq)
        if request.slot is not None and not 0 <= request.slot < len(self._slots):
            raise ValueError(f"no sequence {request.slot}: there are {len(self._slots)}")
        handle = RequestHandle(request)
        # Built here so that a bad grammar fails the call, not the request later.
        ban = self.model.eog_tokens if request.ignore_eos else ()
        handle._sampler = Sampler(self.model, request.sampling, context=self.n_ctx_seq, ban=ban, prompt=request.prompt)
        with self._cond:
            refusal = self.broken or (EngineClosed() if self._closing else None)
            # (requests pinned to a sequence wait in a queue of their own: they must not fill the
            # others' while a sequence is free)
            pinned = request.slot is not None
            queued = sum((h.request.slot is not None) == pinned for h in self._waiting)
            if refusal is None and queued >= self.config.queue_size:
                refusal = QueueFull(self.config.queue_size)
            if refusal is not None:
                handle._sampler.close()
                raise refusal
            self._waiting.append(handle)
            self._stats.set(queue_depth=len(self._waiting))
            self._cond.notify()
        return handle

    def generate(self, request: GenerationRequest) -> tuple[str, Result]:
        """Submit and wait: the whole text and the result."""
        handle = self.submit(request)
        text = handle.text()
        return text, handle.result

    @property
    def stalled(self) -> float | None:
        """Seconds the step in progress has run, where that is past ``stall_seconds`` (llama.cpp
        waits on something that does not answer: an RPC worker gone silent); else None."""
        started, limit = self._step_started, self.config.stall_seconds
        running = 0.0 if started is None else time.monotonic() - started
        return running if limit and running > limit else None

    def stats(self) -> EngineStats:
        return self._stats.snapshot()

    def slots(self) -> list[dict]:
        """Each sequence as llama-server's /slots shows it: busy or not, tokens in its KV cache,
        and the current request's prompt and generated counts. Read without the scheduler's
        lock (small ints, each read atomic): a consistent view of one slot, not of all."""
        return [{"id": s.seq_id, "is_processing": s.busy, "n_ctx": self.n_ctx_seq, "n_cached": len(s.cached),
                 "n_prompt_tokens": s.n_prompt, "n_decoded": s.n_generated} for s in self._slots]

    def slot_action(self, seq_id: int, action: str, path: str | None = None) -> dict:
        """llama-server's slot actions on an idle sequence, answered in its shapes: ``erase`` its
        cache, ``save`` it to the file ``path`` or ``restore`` it from one. Raises SlotBusy,
        SlotStateError, EngineClosed; ValueError for an unknown slot or action."""
        if not 0 <= seq_id < len(self._slots):
            raise ValueError(f"no slot {seq_id}: the slots are 0 to {len(self._slots) - 1}")
        work = {"erase": self._erase, "save": self._save, "restore": self._restore}.get(action)
        if work is None:
            raise ValueError(f"unknown slot action {action[:40]!r}: erase, save or restore")
        done: Future = Future()
        with self._cond:
            if self._closing:
                raise EngineClosed()
            self._controls.append((functools.partial(work, self._slots[seq_id], path), done))
            self._cond.notify()
        return done.result()

    def aborted(self, reason: str, *, own_thread: bool) -> bool:
        """llama.cpp is aborting (llama_host.engine.aborts, on the aborting thread): if in this
        engine, fail every request and refuse new ones; the scheduler thread never comes back."""
        if not (threading.current_thread() is self._thread if own_thread else self._working):
            return False
        log.critical("the engine of %s is broken (%s): its requests fail; restart the server to serve it again",
                     self.model.path.name, reason)
        with self._cond:
            self.broken = EngineBroken(reason)
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            controls, self._controls = list(self._controls), collections.deque()
        for _work, done in controls:
            done.set_exception(self.broken)
        for handle in waiting:
            self._drop(handle, FinishReason.ERROR, self.broken)
        for slot in self._slots:
            if slot.busy:
                self._finish(slot, FinishReason.ERROR, error=self.broken)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the scheduler, free the context."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("engine thread did not stop in %.0f s; leaking its context", timeout)
            return
        self._batch.close()
        self.ctx.close()

    # --- scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._working = False
                while not (self._closing or self._waiting or self._controls or any(s.busy for s in self._slots)):
                    self._cond.wait()
                if self._closing:
                    break
                self._working = True  # (llama.cpp's threads, an RPC connection's, work for this engine)
                self._control()
                self._admit()
            self._step_started = time.monotonic()
            try:
                self._step()
            except Exception as e:  # a bug or a llama.cpp failure: fail the active requests, go on
                log.exception("engine step failed")
                failure = e if isinstance(e, HostError) else EngineFailure(f"generation failed: {e}")
                for slot in self._slots:
                    if slot.busy:
                        self._finish(slot, FinishReason.ERROR, error=failure)
                    slot.cached = []  # the KV cache is cleared below: nothing is reusable
                self.ctx.clear()
            self._step_started = None
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
            controls, self._controls = list(self._controls), collections.deque()
        for _work, done in controls:
            done.set_exception(EngineClosed())
        for handle in waiting:
            self._drop(handle, FinishReason.CANCELLED, EngineClosed())
        for slot in self._slots:
            if slot.busy:
                self._finish(slot, FinishReason.CANCELLED, error=EngineClosed())

    def _control(self) -> None:
        """Run the slot actions asked for (called with the lock held, between steps)."""
        while self._controls:
            work, done = self._controls.popleft()
            try:
                done.set_result(work())
            except Exception as e:  # (the caller's to answer)
                done.set_exception(e)

    def _idle(self, slot: _Slot) -> _Slot:
        if slot.busy:
            raise SlotBusy(slot.seq_id)
        return slot

    def _erase(self, slot: _Slot, _path: None) -> dict:
        n = len(self._idle(slot).cached)
        self.ctx.remove(slot.seq_id, 0, -1)
        slot.cached = []
        return {"id_slot": slot.seq_id, "n_erased": n}

    def _save(self, slot: _Slot, path: str) -> dict:
        started = time.perf_counter()
        tokens = list(self._idle(slot).cached)
        state = self.ctx.sequence_state(slot.seq_id)
        if not state:
            raise SlotStateError(f"llama.cpp could not serialise slot {slot.seq_id} (its log says why)")
        try:
            n = slot_file.write(path, tokens, state)
        except OSError as e:
            raise SlotStateError(f"could not write {os.path.basename(path)!r}: {e.strerror}") from None
        return {"id_slot": slot.seq_id, "filename": os.path.basename(path), "n_saved": len(tokens), "n_written": n,
                "timings": {"save_ms": (time.perf_counter() - started) * 1000}}

    def _restore(self, slot: _Slot, path: str) -> dict:
        started = time.perf_counter()
        self._idle(slot)
        try:  # (a generous bound: f16 K and V of a full slot, and the tokens)
            tokens, state, n = slot_file.read(path, self.n_ctx_seq * (self.model.kv_bytes_per_token() + 64) + (1 << 20))
        except OSError as e:
            raise SlotStateError(f"could not read {os.path.basename(path)!r}: {e.strerror}") from None
        if len(tokens) > self.n_ctx_seq or not all(0 <= t < self.model.n_vocab for t in tokens):
            raise SlotStateError(f"{os.path.basename(path)!r} holds tokens this model and context do not have")
        self.ctx.remove(slot.seq_id, 0, -1)
        slot.cached = []
        if not self.ctx.set_sequence_state(slot.seq_id, state):
            self.ctx.remove(slot.seq_id, 0, -1)  # (what a refused state may have left)
            raise SlotStateError(f"llama.cpp refused {os.path.basename(path)!r}: saved from another model or "
                                 "context, or no room for it in the KV cache")
        slot.cached = tokens
        slot.last_used = time.monotonic()
        return {"id_slot": slot.seq_id, "filename": os.path.basename(path), "n_restored": len(tokens), "n_read": n,
                "timings": {"restore_ms": (time.perf_counter() - started) * 1000}}

    def _admit(self) -> None:
        """Move waiting requests into free slots (called with the lock held)."""
        for handle in [h for h in self._waiting if h.cancelled]:
            self._waiting.remove(handle)
            self._drop(handle, FinishReason.CANCELLED)
        for handle in list(self._waiting):
            free = [s for s in self._slots if not s.busy]
            if not free:
                break
            prompt, pinned = list(handle.request.prompt), handle.request.slot
            if pinned is not None and self._slots[pinned].busy:
                continue  # (it waits for its sequence; those behind it may start)
            self._waiting.remove(handle)
            self._start(self._slots[pinned] if pinned is not None else max(free, key=functools.partial(_fit, prompt)),
                        handle, prompt)
        self._stats.set(queue_depth=len(self._waiting), busy_sequences=sum(s.busy for s in self._slots))

    def _drop(self, handle: RequestHandle, reason: FinishReason, error: HostError | None = None) -> None:
        """Finish a request that never got a sequence."""
        handle._sampler.close()
        handle._finish(Result(reason, len(handle.request.prompt), 0, 0, error=error))

    def _start(self, slot: _Slot, handle: RequestHandle, prompt: list[int]) -> None:
        # Keep the shared prefix, but evaluate at least one token to get fresh logits (all of
        # them when the prompt's log-probabilities are asked for).
        scored = handle.request.prompt_logprobs
        keep = 0 if scored else min(common_prefix(slot.cached, prompt), len(prompt) - 1)
        donor = self._donor(slot, prompt, keep) if not scored else None
        # (taken before the slot's own state is saved, which may need room the cache makes)
        saved = None if scored or self._cache is None else self._cache.take(
            prompt, (keep if donor is None else common_prefix(donor.cached, prompt)) + MIN_COPY - 1)
        if self._cache is not None and len(slot.cached) - keep >= MIN_COPY and not self._keep_state(slot):
            saved = None  # (a conversation is overwritten: kept, unless llama.cpp cannot serialise it)
        if saved is not None:  # a conversation that left its slot continues: its cells come back
            keep = self._restore_state(slot, saved.tokens, saved.state, prompt)
        elif donor is not None:  # a sequence at work holds more of this prompt: start from a copy of it
            self.ctx.copy(donor.seq_id, slot.seq_id)
            keep = min(common_prefix(donor.cached, prompt), len(prompt) - 1)
        if not self.ctx.remove(slot.seq_id, keep, -1):
            keep = 0
            self.ctx.remove(slot.seq_id, 0, -1)
        slot.cached = prompt[:keep]
        slot.pending = prompt[keep:]
        slot.handle = handle
        slot.sampler, handle._sampler = handle._sampler, None
        slot.text = TextStream(handle.request.stop)
        slot.next_token = None
        slot.n_prompt, slot.n_cached, slot.n_generated = len(prompt), keep, 0
        slot.first_token_at = None
        slot.admitted_at = time.monotonic()
        slot.logprobs = []
        slot.prompt_logprobs = [None] if handle.request.prompt_logprobs else None
        handle.cached_tokens = keep
        self._stats.add(cached_tokens=keep)

    def _keep_state(self, slot: _Slot) -> bool:
        """Save the slot's KV state in the prompt cache, before another prompt overwrites it;
        False when llama.cpp cannot (the cache is then off)."""
        state = self.ctx.sequence_state(slot.seq_id)
        if not state:
            self._cache_refused("llama.cpp could not serialise a sequence")
            return False
        self._cache.put(slot.cached, state)
        self._cache_stats()
        return True

    def _restore_state(self, slot: _Slot, tokens: list[int], state: bytes, prompt: list[int]) -> int:
        """Load a saved state into the slot; the prompt tokens it spares evaluating (0 if refused)."""
        self.ctx.remove(slot.seq_id, 0, -1)
        slot.cached = []
        if not self.ctx.set_sequence_state(slot.seq_id, state):
            self.ctx.remove(slot.seq_id, 0, -1)
            self._cache_refused("llama.cpp refused a saved sequence state")
            return 0
        slot.cached = tokens
        keep = min(common_prefix(tokens, prompt), len(prompt) - 1)
        self._cache.stats.hits += 1
        self._cache.stats.restored_tokens += keep
        self._cache_stats()
        return keep

    def _cache_refused(self, why: str) -> None:
        """A memory layout whose states llama.cpp cannot save or load: no prompt cache, said once."""
        log.warning("%s: the prompt cache is off for %s (prompts are evaluated afresh)", why, self.model.path.name)
        self._cache.clear()
        self._cache_stats()
        self._cache = None

    def _cache_stats(self) -> None:
        c = self._cache.stats
        self._stats.set(prompt_cache_entries=c.entries, prompt_cache_bytes=c.bytes, prompt_cache_hits=c.hits,
                        prompt_cache_tokens=c.restored_tokens)

    def _donor(self, slot: _Slot, prompt: list[int], keep: int) -> _Slot | None:
        """A busy sequence whose cached tokens share at least ``MIN_COPY`` more of ``prompt``
        than ``slot`` does (the ``n`` choices of one request, or a request arriving while its
        twin runs): copying its cells costs a memory copy, evaluating them a forward pass each."""
        busy = [s for s in self._slots if s.busy and s is not slot]
        if not busy:
            return None
        donor = max(busy, key=lambda s: common_prefix(s.cached, prompt))
        return donor if common_prefix(donor.cached, prompt) >= keep + MIN_COPY else None

    def _step(self) -> None:
        batch = self._batch
        batch.clear()
        active = []
        for slot in self._slots:
            if not slot.busy:
                continue
            if slot.handle.cancelled:
                self._finish(slot, FinishReason.CANCELLED)
                continue
            slot.batch_index = -1
            active.append(slot)
        # Decoding sequences first: one token each.
        for slot in active:
            if slot.next_token is not None:
                slot.batch_index = batch.add(slot.next_token, slot.position, slot.seq_id, logits=True)
                slot.cached.append(slot.next_token)
                slot.next_token = None
        # Then prompt chunks, first come first served, in what room is left.
        n_prompt_tokens = 0
        for slot in sorted((s for s in active if s.pending), key=lambda s: s.handle.submitted):
            room = batch.capacity - batch.n_tokens
            if room <= 0:
                break
            # The prompt's last token (whose logits are sampled) waits for the next step, as it does
            # when the rest of the prompt is cached (_start): llama.cpp's kernels depend on the batch
            # size, so its logits, and greedy output, would otherwise change with the prefix cache.
            take = min(room, len(slot.pending) - 1) or 1
            scored = slot.prompt_logprobs is not None
            if scored:  # logits for every token: llama.cpp holds them all at once, n_vocab floats each
                take = min(take, max(1, PROMPT_LOGITS_BYTES // (4 * self.model.n_vocab)))
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            following = chunk[1:] + slot.pending[:1]  # the prompt token each one's logits predict
            for i, tok in enumerate(chunk):
                index = batch.add(tok, slot.position, slot.seq_id, logits=scored)
                slot.cached.append(tok)
                if scored and i < len(following):
                    slot.prompt_rows.append((index, following[i]))
            if not slot.pending:  # the prompt's last token: sample from its logits
                batch.raw.logits[index] = True
                slot.batch_index = index
            n_prompt_tokens += len(chunk)
        if batch.n_tokens == 0:
            return
        started = time.perf_counter()
        try:
            self.ctx.decode(batch)
        except DecodeError as e:
            raise EngineFailure(f"llama_decode failed ({e.code})") from e
        self._stats.add(decode_calls=1, decode_seconds=time.perf_counter() - started, prompt_tokens=n_prompt_tokens,
                        busy_per_decode=len(active))
        for slot in active:
            if slot.prompt_rows:
                n_top = slot.handle.request.logprobs or 0
                slot.prompt_logprobs += [token_logprob(logits_at(self.ctx, i, self.model.n_vocab), tok, n_top)
                                         for i, tok in slot.prompt_rows]
                slot.prompt_rows = []
            if slot.busy and slot.batch_index >= 0:
                self._update(slot)

    def _update(self, slot: _Slot) -> None:
        """Sample the slot's next token and deliver it, or finish the request."""
        handle, request = slot.handle, slot.handle.request
        if slot.first_token_at is None:
            now = slot.first_token_at = time.monotonic()
            if slot.prompt_logprobs is not None:
                handle.prompt_logprobs = tuple(slot.prompt_logprobs)
            self._stats.add(ttft_seconds_sum=now - handle.submitted, ttft_count=1)
        if request.max_tokens == 0:  # the prompt only: evaluated, cached (and scored), nothing drawn
            self._finish(slot, FinishReason.LENGTH)
            return
        token = slot.sampler.sample(self.ctx, slot.batch_index)
        if self.model.is_eog(token) and (not request.ignore_eos or slot.sampler.exhausted):  # grammar complete
            self._finish(slot, FinishReason.STOP)
            return
        slot.n_generated += 1
        self._stats.add(generated_tokens=1)
        if request.logprobs is not None:
            logits = logits_at(self.ctx, slot.batch_index, self.model.n_vocab)
            slot.logprobs.append(token_logprob(logits, token, request.logprobs))
        text = slot.text.push(self.model.piece(token))
        released = ()
        if slot.logprobs and slot.text.settled and slot.text.stopped_by is None:
            released, slot.logprobs = tuple(slot.logprobs), []
        handle._emit(TokenOutput(token, text, released))
        if slot.text.stopped_by is not None:
            self._finish(slot, FinishReason.STOP)
        elif request.max_tokens is not None and slot.n_generated >= request.max_tokens:
            self._finish(slot, FinishReason.LENGTH)
        elif slot.position >= self.n_ctx_seq:  # no cell left for this token
            self._finish(slot, FinishReason.LENGTH, context_full=True)
        else:
            slot.next_token = token

    def _finish(
        self, slot: _Slot, reason: FinishReason, *, error: HostError | None = None, context_full: bool = False
    ) -> None:
        """End the slot's request and free the slot (the KV cache stays for prefix reuse)."""
        handle, text = slot.handle, slot.text
        tail = text.finish() if reason is not FinishReason.ERROR else ""
        started = slot.first_token_at
        result = Result(
            finish_reason=reason,
            prompt_tokens=slot.n_prompt,
            cached_tokens=slot.n_cached,
            completion_tokens=slot.n_generated,
            stop=text.stopped_by,
            context_full=context_full,
            time_to_first_token=None if started is None else started - handle.submitted,
            prompt_seconds=None if started is None else started - slot.admitted_at,
            generation_seconds=None if started is None else time.monotonic() - started,
            error=error,
            slot=slot.seq_id,
        )
        # Held-back text is out now, with its tokens' log-probabilities; after a stop string,
        # the tokens it cut are not part of the answer.
        released = () if text.stopped_by is not None or reason is FinishReason.ERROR else tuple(slot.logprobs)
        slot.sampler.close()
        slot.handle = slot.sampler = slot.text = slot.next_token = None
        slot.pending = []  # cancelled mid-prompt: ``cached`` already says what the KV cache holds
        slot.logprobs, slot.prompt_logprobs, slot.prompt_rows = [], None, []
        slot.last_used = time.monotonic()
        self._stats.add(requests_finished=1, prompt_seconds=result.prompt_seconds or 0.0,
                        generation_seconds=result.generation_seconds or 0.0)
        self._stats.set(busy_sequences=sum(s.busy for s in self._slots))
        self._stats.peak(n_tokens_max=slot.position)
        # Last, so that a caller woken by the end sees the engine's state after it.
        if tail or released:
            handle._emit(TokenOutput(-1, tail, released))
        handle._finish(result)
