"""``wasi_ephemeral_nn``: WasmEdge's GGML plugin ABI, implemented on the engine.

One :class:`NnSession` per guest instance holds that guest's graphs and execution contexts; ids
are the guest's own and mean nothing to another guest. Every pointer and length coming from the
guest is checked against its memory; a host function never lets a Python exception reach
wasmtime (which would trap the guest): problems become errno values.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_host.bridge.abi import (
    BUILDER_STRUCT,
    ENCODING_GGML,
    INPUT_METADATA,
    INPUT_PROMPT,
    OUTPUT_LOGPROBS,
    OUTPUT_METADATA,
    OUTPUT_PROMPT_LOGPROBS,
    OUTPUT_TEXT,
    OUTPUT_TOKENS,
    TENSOR_I32,
    TENSOR_STRUCT,
    Errno,
    NnError,
    parse_metadata,
)
from llama_host.bridge.memory import GuestMemory
from llama_host.engine import Cancellation, EngineConfig, FinishReason, GenerationRequest, RequestHandle, Result, SamplingParams, Target
from llama_host.engine.logprobs import MAX_TOP, TokenLogprob
from llama_host.engine.sampling import grammar_from_json_schema, grammar_from_schemas
from llama_host.errors import (
    EngineBroken, EngineClosed, HostError, InsufficientMemory, InvalidGrammar, ModelBusy, ModelNotFound,
    NonFiniteOutput, PromptTooLong, QueueFull,
)
from llama_host.registry import Lease, ModelRegistry, ServedModel
from llama_host.vendor import LLAMA_CPP_PYTHON_VERSION

log = logging.getLogger(__name__)

MODULE = "wasi_ephemeral_nn"
MAX_DIMS = 16
MAX_BUILDERS = 16
MAX_TRIGGERS, MAX_TRIGGER_BYTES = 16, 256  # lazy grammars: words searched for at every token
MAX_BREAKERS, MAX_BREAKER_BYTES = 32, 256  # DRY: each costs llama.cpp a pass over the vocabulary

# Sampling defaults when neither the graph config nor the request sets a key (llama.cpp's).
_DEFAULTS = SamplingParams()


@dataclasses.dataclass
class Graph:
    served: ServedModel
    config: dict[str, Any]  # metadata from load_by_name_with_config or the load builder
    owned: bool  # loaded by this guest from bytes or a path: freed with the graph
    lease: Lease | None = None  # a registry model (load_by_name): in use until the graph goes


@dataclasses.dataclass
class ExecContext:
    graph: Graph
    metadata: dict[str, Any]
    prompt: bytes | list[int] | None = None  # text, or token ids (an i32 tensor)
    output: bytearray = dataclasses.field(default_factory=bytearray)
    last_piece: bytes = b""
    logprobs: list[dict] = dataclasses.field(default_factory=list)  # compute: all; compute_single: the last output's
    tokens: list[int] = dataclasses.field(default_factory=list)  # generated ids, as logprobs (`return-tokens`)
    held: list[int] = dataclasses.field(default_factory=list)  # compute_single: ids whose text is not out yet
    prompt_logprobs: list[dict | None] = dataclasses.field(default_factory=list)
    handle: RequestHandle | None = None  # compute_single in progress
    result: Result | None = None
    input_tokens: int = 0
    generated: int = 0  # tokens so far in compute_single


class NnSession:
    """WASI-NN state of one guest instance."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        allow_host_paths: bool = False,
        stream_stdout: Callable[[bytes], None] | None = None,
        cancel: Cancellation | None = None,
    ) -> None:
        self.registry = registry
        self.cancel = cancel or Cancellation()  # set when nobody waits for this run's answer
        self.allow_host_paths = allow_host_paths  # `load` with "preload:<path>": trusted runs only
        self.stream_stdout = stream_stdout
        # the host's typed error behind the last failed generation, which an errno cannot carry
        # to the guest (the server answers its kind where the guest could say only "internal")
        self.failure: HostError | None = None
        self.graphs: dict[int, Graph] = {}
        self.contexts: dict[int, ExecContext] = {}
        self._next_id = 0

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def close(self) -> None:
        """The instance is gone: stop its generations, free what it loaded."""
        for ctx in self.contexts.values():
            self._stop_single(ctx)
        self.contexts.clear()
        for graph in self.graphs.values():
            _free(graph)
        self.graphs.clear()

    # --- lookups ------------------------------------------------------------------------------

    def _graph(self, graph_id: int) -> Graph:
        graph = self.graphs.get(graph_id)
        if graph is None:
            raise NnError(Errno.INVALID_ARGUMENT, f"no graph {graph_id}")
        return graph

    def _context(self, ctx_id: int) -> ExecContext:
        ctx = self.contexts.get(ctx_id)
        if ctx is None:
            raise NnError(Errno.INVALID_ARGUMENT, f"no execution context {ctx_id}")
        if ctx.graph not in self.graphs.values():
            raise NnError(Errno.INVALID_ARGUMENT, f"the graph of execution context {ctx_id} was unloaded")
        return ctx

    def _add_graph(self, graph: Graph, mem: GuestMemory, graph_out: int) -> None:
        mem.check(graph_out, 4)
        graph_id = self._new_id()
        self.graphs[graph_id] = graph
        mem.write_u32(graph_out, graph_id)

    # --- imports ------------------------------------------------------------------------------

    def load(self, mem: GuestMemory, builders_ptr: int, count: int, encoding: int, target: int, graph_out: int) -> None:
        if encoding != ENCODING_GGML:
            raise NnError(Errno.INVALID_ENCODING, f"encoding {encoding} is not GGML ({ENCODING_GGML})")
        if target not in (t.value for t in Target) or target == Target.TPU:
            raise NnError(Errno.INVALID_ARGUMENT, f"unsupported target {target}")
        count = mem.u32(count)
        if not 1 <= count <= MAX_BUILDERS:
            raise NnError(Errno.INVALID_ARGUMENT, f"expected 1 to {MAX_BUILDERS} builders, got {count}")
        table = mem.read(builders_ptr, count * BUILDER_STRUCT.size)
        builders = [mem.read(*BUILDER_STRUCT.unpack_from(table, i * BUILDER_STRUCT.size)) for i in range(count)]
        config = parse_metadata(builders[1]) if count > 1 else {}
        weights = builders[0]
        mem.check(graph_out, 4)
        if weights.startswith(b"preload:"):
            if not self.allow_host_paths:
                raise NnError(Errno.UNSUPPORTED_OPERATION, "loading a host path is not allowed here")
            path = Path(os.fsdecode(weights[8:]))
            served = self._load_file(path, Target(target), config)
        else:
            if not weights.startswith(b"GGUF"):
                raise NnError(Errno.INVALID_ARGUMENT, "the model bytes are not a GGUF file")
            with tempfile.NamedTemporaryFile(suffix=".gguf") as f:  # llama.cpp loads from files
                f.write(weights)
                f.flush()
                served = self._load_file(Path(f.name), Target(target), config)
        self._add_graph(Graph(served, config, owned=True), mem, graph_out)

    def _load_file(self, path: Path, target: Target, config: dict) -> ServedModel:
        if not path.is_file():
            raise NnError(Errno.NOT_FOUND, f"model file not found: {path}")
        engine_config = EngineConfig(
            ctx_size=config.get("ctx-size", 4096), parallel=1, batch_size=config.get("batch-size", 512),
            threads=config.get("threads"),
        )
        try:
            return ServedModel.load(path.name, path, engine_config, target=target)
        except Exception as e:
            raise NnError(Errno.INVALID_ARGUMENT, f"cannot load {path}: {e}") from e

    def load_by_name(self, mem: GuestMemory, name_ptr: int, name_len: int, graph_out: int) -> None:
        self._load_by_name(mem, name_ptr, name_len, {}, graph_out)

    def load_by_name_with_config(
        self, mem: GuestMemory, name_ptr: int, name_len: int, config_ptr: int, config_len: int, graph_out: int
    ) -> None:
        config = parse_metadata(mem.read(config_ptr, config_len))
        self._load_by_name(mem, name_ptr, name_len, config, graph_out)

    def _load_by_name(self, mem: GuestMemory, name_ptr: int, name_len: int, config: dict, graph_out: int) -> None:
        name = mem.read_str(name_ptr, name_len)
        try:
            lease = self.registry.acquire(name)  # (an on-demand model: loaded here, if the server has not)
        except ModelNotFound as e:
            raise NnError(Errno.MODEL_NOT_FOUND, f"no preloaded model {name!r} (have: {', '.join(self.registry.names)})") from e
        except (ModelBusy, InsufficientMemory, EngineClosed) as e:
            raise NnError(Errno.BUSY, str(e)) from e
        except HostError as e:
            raise NnError(Errno.RUNTIME_ERROR, str(e)) from e
        try:
            self._add_graph(Graph(lease.served, config, owned=False, lease=lease), mem, graph_out)
        except BaseException:
            lease.release()
            raise

    def init_execution_context(self, mem: GuestMemory, graph_id: int, ctx_out: int) -> None:
        graph = self._graph(graph_id)
        mem.check(ctx_out, 4)
        ctx_id = self._new_id()
        self.contexts[ctx_id] = ExecContext(graph, dict(graph.config))
        mem.write_u32(ctx_out, ctx_id)

    def set_input(self, mem: GuestMemory, ctx_id: int, index: int, tensor_ptr: int) -> None:
        ctx = self._context(ctx_id)
        self._check_not_streaming(ctx)
        dims_ptr, dims_len, kind, data_ptr, data_len = TENSOR_STRUCT.unpack(mem.read(tensor_ptr, TENSOR_STRUCT.size))
        if dims_len > MAX_DIMS:
            raise NnError(Errno.INVALID_ARGUMENT, f"a tensor has at most {MAX_DIMS} dimensions")
        mem.read(dims_ptr, 4 * dims_len)
        data = mem.read(data_ptr, data_len)
        if index == INPUT_PROMPT:
            ctx.prompt = _token_ids(data, ctx.graph.served.model.n_vocab) if kind == TENSOR_I32 else data
        elif index == INPUT_METADATA:
            ctx.metadata.update(parse_metadata(data))
        else:
            raise NnError(Errno.INVALID_ARGUMENT, f"input index {index}: 0 is the prompt, 1 the metadata")

    def compute(self, mem: GuestMemory, ctx_id: int) -> Errno:
        ctx = self._context(ctx_id)
        self._check_not_streaming(ctx)
        ctx.output.clear()
        ctx.result = None
        if ctx.metadata.get("embedding"):
            return self._embed(ctx)
        ctx.logprobs, ctx.tokens = [], []
        handle = self._submit(ctx)
        echo = self.stream_stdout if ctx.metadata.get("stream-stdout") else None
        try:
            if echo is not None or handle.request.logprobs is not None or ctx.metadata.get("return-tokens"):
                for out in handle:
                    piece = out.text.encode()
                    ctx.output += piece
                    ctx.logprobs += self._logprob_entries(ctx, out.logprobs)
                    if out.token >= 0:
                        ctx.tokens.append(out.token)
                    if piece and echo is not None:
                        echo(piece)
            else:
                ctx.output += handle.text().encode()  # woken once, at the end
            ctx.prompt_logprobs = self._prompt_entries(ctx, handle)
        except NnError:
            handle.cancel()  # (nobody will read the rest)
            raise
        return self._finished(ctx, handle.result, single=False)

    def compute_single(self, mem: GuestMemory, ctx_id: int) -> Errno:
        ctx = self._context(ctx_id)
        if ctx.handle is None:
            ctx.output.clear()
            ctx.result = None
            ctx.generated = 0
            ctx.held = []
            ctx.prompt_logprobs = []
            ctx.handle = self._submit(ctx)
        out = ctx.handle.next()
        if not ctx.prompt_logprobs:  # (set by the engine before its first output)
            ctx.prompt_logprobs = self._prompt_entries(ctx, ctx.handle)
        if out is None:  # (the ids still held: tokens a stop string cut, whose text never comes)
            ctx.logprobs, ctx.tokens, ctx.held = [], ctx.held, []
            return self._finished(ctx, ctx.handle.result, single=True)
        ctx.generated += out.token >= 0
        if out.token >= 0:
            ctx.held.append(out.token)
        ctx.last_piece = out.text.encode()
        ctx.logprobs = self._logprob_entries(ctx, out.logprobs)
        # A token's id comes with its text, as its log-probability does (with the same output).
        n = len(out.logprobs) if ctx.handle.request.logprobs is not None else len(ctx.held) if out.text else 0
        ctx.tokens, ctx.held = ctx.held[:n], ctx.held[n:]
        ctx.output += ctx.last_piece
        return Errno.SUCCESS

    def fini_single(self, mem: GuestMemory, ctx_id: int) -> None:
        self._stop_single(self._context(ctx_id))

    def get_output(self, mem: GuestMemory, ctx_id: int, index: int, buf: int, buf_max: int, written: int) -> Errno:
        ctx = self._context(ctx_id)
        data = bytes(ctx.output) if index == OUTPUT_TEXT else self._output_metadata(ctx, index)
        return mem.write_output(buf, buf_max, written, data)

    _OUTPUTS = "0 is the text, 1 the metadata, 2 the log-probabilities, 3 the prompt's, 4 the token ids"

    def get_output_single(self, mem: GuestMemory, ctx_id: int, index: int, buf: int, buf_max: int, written: int) -> Errno:
        ctx = self._context(ctx_id)
        data = ctx.last_piece if index == OUTPUT_TEXT else self._output_metadata(ctx, index)
        return mem.write_output(buf, buf_max, written, data)

    def unload(self, mem: GuestMemory, graph_id: int) -> None:
        graph = self._graph(graph_id)
        for ctx in self.contexts.values():
            if ctx.graph is graph:
                self._stop_single(ctx)
        del self.graphs[graph_id]
        _free(graph)

    def finalize_execution_context(self, mem: GuestMemory, ctx_id: int) -> None:
        ctx = self.contexts.get(ctx_id)
        if ctx is None:
            raise NnError(Errno.INVALID_ARGUMENT, f"no execution context {ctx_id}")
        self._stop_single(ctx)
        del self.contexts[ctx_id]

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _prompt(ctx: ExecContext) -> bytes | list[int]:
        if ctx.prompt is None:
            raise NnError(Errno.INVALID_ARGUMENT, "no prompt: call set_input with index 0 first")
        return ctx.prompt

    def _submit(self, ctx: ExecContext) -> RequestHandle:
        served, md = ctx.graph.served, ctx.metadata
        prompt = self._prompt(ctx)
        n_ctx = served.engine.n_ctx_seq
        if not isinstance(prompt, list) and (least := served.model.fewest_tokens(prompt)) >= n_ctx:
            raise NnError(Errno.PROMPT_TOO_LONG, str(PromptTooLong(least, n_ctx, at_least=True)))
        tokens = prompt if isinstance(prompt, list) else served.model.tokenize(prompt)
        ctx.input_tokens = len(tokens)
        n_predict = md.get("n-predict", -1)
        n_top = md.get("logprobs")
        if n_top is not None and not 0 <= n_top <= MAX_TOP:
            raise NnError(Errno.INVALID_ARGUMENT, f"metadata 'logprobs' must be 0 to {MAX_TOP} alternatives, not {n_top}")
        if md.get("prompt-logprobs") and n_top is None:
            n_top = 0
        stop = list(md.get("stop", []))
        if md.get("reverse-prompt"):
            stop.append(md["reverse-prompt"])
        slot, parallel = md.get("id-slot", -1), served.engine.config.parallel
        if not -1 <= slot < parallel:
            raise NnError(Errno.INVALID_ARGUMENT, f"metadata 'id-slot' must be -1 (any) or a sequence from 0 to {parallel - 1}")
        breakers = md.get("dry-sequence-breakers", [])
        if len(breakers) > MAX_BREAKERS or not all(len(b.encode()) <= MAX_BREAKER_BYTES for b in breakers):
            raise NnError(Errno.INVALID_ARGUMENT, f"metadata 'dry-sequence-breakers' takes up to {MAX_BREAKERS} "
                                                  f"strings of at most {MAX_BREAKER_BYTES} bytes")
        triggers = md.get("grammar-triggers", [])
        if len(triggers) > MAX_TRIGGERS or not all(0 < len(t.encode()) <= MAX_TRIGGER_BYTES for t in triggers):
            raise NnError(Errno.INVALID_ARGUMENT,
                          f"metadata 'grammar-triggers' takes up to {MAX_TRIGGERS} words of 1 to {MAX_TRIGGER_BYTES} bytes")
        try:
            grammar = md.get("grammar") or (
                grammar_from_json_schema(md["json-schema"]) if md.get("json-schema") else None
            )
            if grammar and md.get("grammar-schemas"):  # rules the guest's grammar refers to
                grammar += "\n" + grammar_from_schemas(json.dumps(md["grammar-schemas"], sort_keys=True))
            sampling = SamplingParams(
                temperature=md.get("temp", _DEFAULTS.temperature),
                top_k=md.get("top-k", _DEFAULTS.top_k),
                top_p=md.get("top-p", _DEFAULTS.top_p),
                min_p=md.get("min-p", _DEFAULTS.min_p),
                typical_p=md.get("typical-p", _DEFAULTS.typical_p),
                top_n_sigma=md.get("top-n-sigma", _DEFAULTS.top_n_sigma),
                dynatemp_range=md.get("dynatemp-range", _DEFAULTS.dynatemp_range),
                dynatemp_exponent=md.get("dynatemp-exponent", _DEFAULTS.dynatemp_exponent),
                xtc_probability=md.get("xtc-probability", _DEFAULTS.xtc_probability),
                xtc_threshold=md.get("xtc-threshold", _DEFAULTS.xtc_threshold),
                mirostat=md.get("mirostat", _DEFAULTS.mirostat),
                mirostat_tau=md.get("mirostat-tau", _DEFAULTS.mirostat_tau),
                mirostat_eta=md.get("mirostat-eta", _DEFAULTS.mirostat_eta),
                dry_multiplier=md.get("dry-multiplier", _DEFAULTS.dry_multiplier),
                # (llama-server's rule: a base under 1 is the default)
                dry_base=md["dry-base"] if md.get("dry-base", 0) >= 1 else _DEFAULTS.dry_base,
                dry_allowed_length=md.get("dry-allowed-length", _DEFAULTS.dry_allowed_length),
                dry_penalty_last_n=md.get("dry-penalty-last-n", _DEFAULTS.dry_penalty_last_n),
                dry_sequence_breakers=tuple(md.get("dry-sequence-breakers", _DEFAULTS.dry_sequence_breakers)),
                repeat_penalty=md.get("repeat-penalty", _DEFAULTS.repeat_penalty),
                presence_penalty=md.get("presence-penalty", _DEFAULTS.presence_penalty),
                frequency_penalty=md.get("frequency-penalty", _DEFAULTS.frequency_penalty),
                penalty_last_n=md.get("repeat-last-n", _DEFAULTS.penalty_last_n),
                seed=md.get("seed"),
                logit_bias=md.get("logit-bias", {}),
                grammar=grammar,
                grammar_triggers=tuple(triggers) if grammar else (),
            )
            request = GenerationRequest(
                tokens, sampling, max_tokens=None if n_predict < 0 else n_predict, stop=stop,
                ignore_eos=md.get("ignore-eos", False), logprobs=n_top,
                prompt_logprobs=md.get("prompt-logprobs", False), slot=None if slot < 0 else slot,
            )
            handle = served.engine.submit(request)
        except PromptTooLong as e:
            raise NnError(Errno.PROMPT_TOO_LONG, str(e)) from e
        except InvalidGrammar as e:
            raise NnError(Errno.INVALID_ARGUMENT, str(e)) from e
        except QueueFull as e:
            raise NnError(Errno.BUSY, str(e)) from e
        except (EngineClosed, EngineBroken) as e:
            self.failure = e
            raise NnError(Errno.RUNTIME_ERROR, str(e)) from e
        self.cancel.register(handle)
        return handle

    def _finished(self, ctx: ExecContext, result: Result, *, single: bool) -> Errno:
        ctx.result = result
        if result.finish_reason is FinishReason.ERROR or result.error is not None:  # (also: the engine closed under it)
            self.failure = result.error
            raise NnError(Errno.RUNTIME_ERROR, str(result.error))
        if result.context_full:
            return Errno.CONTEXT_FULL
        return Errno.END_OF_SEQUENCE if single else Errno.SUCCESS

    def _embed(self, ctx: ExecContext) -> Errno:
        prompt = self._prompt(ctx)
        embedder = ctx.graph.served.embedder()
        if embedder.per_token:
            raise NnError(Errno.INVALID_ARGUMENT, "the server pools no embeddings (--pooling none): OpenAI's embeddings "
                          "are one vector per input; use llama-server's /embedding for per-token vectors, or another --pooling")
        try:
            if isinstance(prompt, list):
                vector, n_tokens = embedder.embed_tokens(prompt), len(prompt)
            else:
                [(vector, n_tokens)] = embedder.embed([prompt.decode("utf-8", "replace")])
        except PromptTooLong as e:
            raise NnError(Errno.PROMPT_TOO_LONG, str(e)) from e
        except NonFiniteOutput as e:
            self.failure = e
            raise NnError(Errno.RUNTIME_ERROR, str(e)) from e
        ctx.input_tokens = n_tokens
        ctx.output[:] = json.dumps({"n_embedding": len(vector), "embedding": vector.tolist()}).encode()
        return Errno.SUCCESS

    def _logprob_entries(self, ctx: ExecContext, logprobs: tuple[TokenLogprob, ...]) -> list[dict]:
        """Log-probabilities as OpenAI's chat answers carry them (``ChatCompletionTokenLogprob``)."""
        model = ctx.graph.served.model
        if any(lp.logprob != lp.logprob for lp in logprobs):  # (NaN logits: every log-probability is NaN)
            self.failure = NonFiniteOutput("log-probabilities")
            raise NnError(Errno.RUNTIME_ERROR, str(self.failure))
        return [{**_token_entry(model, lp.token, lp.logprob), "top_logprobs": [_token_entry(model, *t) for t in lp.top]}
                for lp in logprobs]

    def _prompt_entries(self, ctx: ExecContext, handle: RequestHandle) -> list[dict]:
        """The prompt's log-probabilities, one entry per token of the text: a BOS the tokenizer
        added has none (it is not in the text); the first token has a null logprob (and null
        alternatives) unless a BOS precedes it."""
        if not handle.prompt_logprobs:
            return []
        model, tokens = ctx.graph.served.model, handle.request.prompt
        entries = [{**_token_entry(model, tokens[0], None), "top_logprobs": None},
                   *self._logprob_entries(ctx, handle.prompt_logprobs[1:])]
        return entries[1:] if tokens[0] == model.info.bos_id else entries

    def _output_metadata(self, ctx: ExecContext, index: int) -> bytes:
        if index == OUTPUT_LOGPROBS:
            return json.dumps(ctx.logprobs).encode()
        if index == OUTPUT_PROMPT_LOGPROBS:
            return json.dumps(ctx.prompt_logprobs).encode()
        if index == OUTPUT_TOKENS:
            return json.dumps(ctx.tokens).encode()
        if index != OUTPUT_METADATA:
            raise NnError(Errno.INVALID_ARGUMENT, f"output index {index}: {self._OUTPUTS}")
        result = ctx.result
        meta = {
            "input_tokens": ctx.input_tokens,
            "output_tokens": result.completion_tokens if result else 0,
            "llama_build_number": LLAMA_BUILD[0],
            "llama_commit": LLAMA_BUILD[1],
            # llama-host additions
            "cached_tokens": result.cached_tokens if result else ctx.handle.cached_tokens if ctx.handle else 0,
            "finish_reason": result.finish_reason.value if result else None,
            "context_full": result.context_full if result else False,
            "stop_word": result.stop if result else None,
            "timings": _timings(result) if result else None,
            "id_slot": result.slot if result else -1,
        }
        if result is None:  # compute_single still running
            meta["output_tokens"] = ctx.generated
        return json.dumps(meta).encode()

    def _check_not_streaming(self, ctx: ExecContext) -> None:
        if ctx.handle is not None:
            if ctx.handle.result is None:
                raise NnError(Errno.BUSY, "compute_single is in progress; call fini_single first")
            ctx.handle = None  # finished; the guest just did not call fini_single

    def _stop_single(self, ctx: ExecContext) -> None:
        if ctx.handle is not None:
            ctx.handle.cancel()
            for _ in ctx.handle:  # wait for the engine to free the sequence
                pass
            ctx.result = ctx.handle.result
            ctx.handle = None


def _free(graph: Graph) -> None:
    """A graph is gone: its own model is freed, a registry model's use ends."""
    if graph.owned:
        graph.served.close()
    elif graph.lease is not None:
        graph.lease.release()


def _token_ids(data: bytes, n_vocab: int) -> list[int]:
    """A prompt given as token ids (little-endian i32), each checked against the vocabulary."""
    if not data or len(data) % 4:
        raise NnError(Errno.INVALID_ARGUMENT, "a token-id prompt needs at least one 4-byte token id")
    tokens = array.array("i", data)
    if sys.byteorder != "little":  # pragma: no cover
        tokens.byteswap()
    for i, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise NnError(Errno.INVALID_ARGUMENT,
                          f"token id {token} (at position {i}) is not in the model's vocabulary (0 to {n_vocab - 1})")
    return tokens.tolist()


def _token_entry(model, token: int, logprob: float | None) -> dict:
    piece = model.piece(token)
    # (-inf has no JSON spelling; OpenAI writes -9999 for "never")
    return {"id": token, "token": piece.decode("utf-8", "replace"),
            "logprob": None if logprob is None else max(logprob, -9999.0), "bytes": list(piece)}


# The sdist that llama.cpp is built from carries no git metadata, so there is no build number to
# report; the commit field names the pinned release instead.
LLAMA_BUILD = (0, f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}")


def _timings(result: Result) -> dict | None:
    """llama-server's ``timings`` of a finished generation (milliseconds; the prompt's part
    counts the tokens evaluated, not those reused from the cache)."""
    if result.prompt_seconds is None or result.generation_seconds is None:
        return None
    prompt_n = result.prompt_tokens - result.cached_tokens
    prompt_ms, predicted_ms = result.prompt_seconds * 1000, result.generation_seconds * 1000
    # the first token is sampled at the end of the prompt's evaluation: the others take predicted_ms
    predicted_n = max(result.completion_tokens - 1, 0)
    return {
        "cache_n": result.cached_tokens, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / result.prompt_seconds if prompt_n and result.prompt_seconds > 0 else 0.0,
        "predicted_n": result.completion_tokens, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": predicted_n / result.generation_seconds if predicted_n and result.generation_seconds > 0 else 0.0,
    }
