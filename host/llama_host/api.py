"""In-process Python API in the style of llama-cpp-python's ``Llama``.

    from llama_host import Llama

    llm = Llama("model.gguf", n_ctx=2048)
    llm("Q: Name the planets. A:", max_tokens=32)["choices"][0]["text"]
    llm.create_chat_completion([{"role": "user", "content": "hi"}])["choices"][0]["message"]
    for chunk in llm("Once upon a time", stream=True):
        print(chunk["choices"][0]["text"], end="")

Every call goes through the same sandboxed guest and engine as the HTTP server (a
:class:`~llama_host.serving.Serving` over a :class:`~llama_host.registry.ModelRegistry`, loaded
exactly as ``llama-host`` loads them), only without HTTP: the request is the OpenAI JSON body, the
answer the dict the server would send. An error answer raises :class:`~llama_host.errors.APIError`
(``kind``, ``message``, ``param``, ``status``). Calls are thread-safe; ``n_parallel`` sequences are
decoded together, the rest wait in the engine's queue.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_host import __version__, vendor
from llama_host.bridge.abi import Errno, NnError
from llama_host.bridge.runner import RunnerConfig
from llama_host.engine.engine import EngineConfig, UnservableConfig
from llama_host.engine.model import Target
from llama_host.engine.stats import EngineStats
from llama_host.errors import APIError, ErrorKind
from llama_host.preload import GGUF_MAGIC, Preload
from llama_host.registry import LoadError, ModelRegistry, ServedModel
from llama_host.resource import Resource
from llama_host.serving import GuestError, ModelRoute, Reply, Serving

__all__ = ["Llama", "APIError"]

PRELOAD = "default"  # the internal preload name; requests name the model by ``model_name``
QUIET_LOGGERS = ("llama_host", "llama_host.llama_cpp", "llama_host.guest")
STREAM_CLOSE_TIMEOUT = 10.0  # seconds close() waits for a cancelled stream's guest to stop

# llama-cpp-python's chat_format names that templates/ spells differently
CHAT_FORMAT_ALIASES = {
    "llama-2": "llama-2-chat",
    "llama-3": "llama-3-chat",
    "mistral": "mistral-instruct",
    "gemma": "gemma-instruct",
    "phi-3": "phi-3-chat",
    "vicuna": "vicuna-1.1-chat",
    "openchat": "openchat",
    "zephyr": "zephyr",
}


def _check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def _check_model_file(model_path: str | os.PathLike[str]) -> Path:
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return path


def _api_error(error: GuestError) -> APIError:
    return APIError(error.kind, error.message, error.param)


class _ReceiverGone(NnError):
    """Raised from the emit callback of a closed stream: the guest's ``emit`` fails, it stops,
    and its WASI-NN session cancels the sequence."""

    def __init__(self) -> None:
        super().__init__(Errno.RUNTIME_ERROR, "the receiver of the response is gone")


class _End:
    __slots__ = ("reply",)

    def __init__(self, reply: Reply | BaseException) -> None:
        self.reply = reply


class CompletionStream(Iterator[dict]):
    """The chunks of a streamed answer, as dicts (``[DONE]`` is not yielded). The guest runs in a
    worker thread; closing the stream (``close()``, a ``with`` block, or dropping it) stops the
    guest at its next token and frees the sequence. An error after the stream started raises
    :class:`APIError` from ``next()``."""

    def __init__(self, serving: Serving, command: str, body: bytes) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._gone = threading.Event()
        self._done = False
        # The worker must not reference the stream itself, so that dropping it runs __del__.
        q, gone = self._queue, self._gone

        def on_event(payload: bytes) -> bool:
            if gone.is_set():
                # Serving.call passes the guest's frames on; raising (rather than returning False)
                # fails the guest's emit whatever Serving does with the callback's result.
                raise _ReceiverGone()
            q.put(payload)
            return True

        def work() -> None:
            try:
                reply: Reply | BaseException = serving.call(command, body, on_event)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                reply = e
            q.put(_End(reply))

        self._thread = threading.Thread(target=work, name="llama-host-stream", daemon=True)
        self._thread.start()
        # Wait for the first frame so that a refused request raises here, not on the first next().
        try:
            self._first = self._queue.get()
        except BaseException:  # interrupted (Ctrl-C): nobody will read the stream
            gone.set()
            raise
        if isinstance(self._first, _End):
            reply = self._first.reply
            if isinstance(reply, BaseException):
                raise reply
            if reply.error is not None and not reply.streamed:
                self._done = True
                raise _api_error(reply.error)

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self) -> dict:
        while not self._done:
            if self._first is not None:
                item, self._first = self._first, None
            else:
                item = self._queue.get()
            if isinstance(item, bytes):
                if item.strip() == b"[DONE]":
                    continue
                return json.loads(item)
            self._done = True
            reply = item.reply
            if isinstance(reply, BaseException):
                raise reply
            if reply.error is not None:
                raise _api_error(reply.error)
            if reply.body is not None and not reply.streamed:  # a non-streamed answer
                return json.loads(reply.body)
        raise StopIteration

    def close(self, timeout: float | None = STREAM_CLOSE_TIMEOUT) -> None:
        """Stop the guest (at its next token) and wait up to ``timeout`` seconds for it to end,
        which frees its sequence."""
        self._gone.set()
        self._done = True
        self._first = None
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        gone = getattr(self, "_gone", None)
        if gone is not None:
            gone.set()  # no join: __del__ may run in any thread


class Llama(Resource):
    """A GGUF model served in-process through llama-host's guest and engine.

    ``model_path``: a GGUF file. ``n_gpu_layers``: layers to offload (None or 0: CPU, -1: all).
    ``n_ctx``: tokens of context per request. ``n_batch``: tokens per ``llama_decode``.
    ``n_threads``: CPU threads (None: llama.cpp's choice). ``n_parallel``: sequences decoded
    together (raise it for threads that call at once). ``chat_format`` (alias ``template``): a
    name in templates/ (``llama-2-chat``, ``chatml``, ...; llama-cpp-python's ``llama-2``,
    ``llama-3``, ``mistral`` ... are mapped), a ``.jinja`` file, or ``auto`` / None (the GGUF's own
    template). ``model_name``: the ``model`` of replies (default: the file's stem).
    ``verbose=False`` sets the ``llama_host`` loggers (llama.cpp's log and the guest's included) to
    WARNING; ``verbose=True`` leaves logging as the application configured it. ``embedding`` is
    accepted for llama-cpp-python compatibility: embeddings are always available.

    Free it with ``close()`` or a ``with`` block.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_gpu_layers: int | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_parallel: int = 1,
        chat_format: str | os.PathLike[str] | None = "auto",
        template: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        verbose: bool = True,
        embedding: bool = False,
    ) -> None:
        self._registry: ModelRegistry | None = None
        self._serving: Serving | None = None
        self._streams: weakref.WeakSet[CompletionStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        _check_int("n_ctx", n_ctx, 1)
        _check_int("n_batch", n_batch, 1)
        _check_int("n_parallel", n_parallel, 1)
        _check_int("n_threads", n_threads, 1, optional=True)
        _check_int("n_gpu_layers", n_gpu_layers, -1, optional=True)
        if template is not None and chat_format not in (None, "auto") and str(template) != str(chat_format):
            raise ValueError(f"chat_format={chat_format!r} and template={template!r} disagree: give one")
        fmt = str(template if template is not None else chat_format if chat_format is not None else "auto")
        if not (Path(fmt).suffix == ".jinja" or vendor.templates_dir().joinpath(f"{fmt}.jinja").is_file()):
            fmt = CHAT_FORMAT_ALIASES.get(fmt, fmt)
        self.model_path = str(model_path)
        path = _check_model_file(model_path)
        self.model_name = path.stem if model_name is None else model_name
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name must be a non-empty string, not {model_name!r}")
        route = ModelRoute.create(self.model_name, PRELOAD, fmt)  # TemplateNotFound is a ValueError
        self.chat_format = fmt
        self.verbose = verbose
        if not verbose:
            for name in QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)

        offload = n_gpu_layers not in (None, 0)
        preload = Preload(PRELOAD, "GGML", Target.GPU if offload else Target.CPU, path)
        self._config = EngineConfig(ctx_size=n_ctx, parallel=n_parallel, batch_size=n_batch, threads=n_threads)
        try:
            self._registry = ModelRegistry.load([preload], self._config, n_gpu_layers=n_gpu_layers if offload else None)
        except LoadError as e:
            if isinstance(e.__cause__, UnservableConfig):  # (n_ctx, n_parallel, n_threads: the arguments)
                raise ValueError(e.reason) from None
            raise
        try:
            self._serving = Serving(self._registry, [route],
                                    runner_config=RunnerConfig(templates_dir=vendor.templates_dir()),
                                    system_fingerprint=f"llama-host-{__version__}")
        except BaseException:
            self._registry.close()
            self._registry = None
            raise

    # --- generation ---------------------------------------------------------------------------

    def __call__(self, prompt: str, *args: Any, **kwargs: Any) -> dict | CompletionStream:
        """Same as :meth:`create_completion`."""
        return self.create_completion(prompt, *args, **kwargs)

    def create_completion(
        self,
        prompt: str,
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: dict[int, float] | None = None,
        **extra: Any,
    ) -> dict | CompletionStream:
        """A ``/v1/completions`` request; llama-cpp-python's parameters and defaults. Returns the
        ``text_completion`` dict, or with ``stream=True`` a :class:`CompletionStream` of chunk dicts.

        ``max_tokens`` None or <= 0: until the context is full. ``grammar``: GBNF text (or a
        llama-cpp-python ``LlamaGrammar``). ``**extra`` is merged into the request body last, for
        the server's other fields (``ignore_eos=True``, ``stream_options``, ``n``, ``user``, ...).
        ``tfs_z`` and ``mirostat_tau``/``mirostat_eta`` are ignored (llama.cpp dropped tail-free
        sampling); ``typical_p``, ``mirostat_mode``, ``stopping_criteria`` and ``logits_processor``
        are not supported (ValueError unless left at their defaults)."""
        _unsupported(typical_p=typical_p, mirostat_mode=mirostat_mode, stopping_criteria=stopping_criteria,
                     logits_processor=logits_processor)
        body: dict[str, Any] = {"model": model or self.model_name, "prompt": prompt}
        if suffix is not None:
            body["suffix"] = suffix
        if echo:
            body["echo"] = True
        if logprobs is not None:
            body["logprobs"] = logprobs
        self._sampling(body, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p, top_k=top_k,
                       stop=stop, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                       repeat_penalty=repeat_penalty, seed=seed, grammar=grammar, logit_bias=logit_bias)
        return self._request("complete", body, stream, extra)

    def create_chat_completion(
        self,
        messages: list[dict],
        functions: list[dict] | None = None,
        function_call: Any = None,
        tools: list[dict] | None = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        response_format: dict | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: dict[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        **extra: Any,
    ) -> dict | CompletionStream:
        """A ``/v1/chat/completions`` request; llama-cpp-python's parameters and defaults. Returns
        the ``chat.completion`` dict, or with ``stream=True`` a :class:`CompletionStream` of
        ``chat.completion.chunk`` dicts. ``messages``, ``tools``, ``tool_choice``,
        ``response_format`` (``json_object`` / ``json_schema``) go to the guest as given; the
        prompt is rendered by the model's template in the sandbox. ``**extra`` as in
        :meth:`create_completion`."""
        _unsupported(typical_p=typical_p, mirostat_mode=mirostat_mode, logits_processor=logits_processor)
        body: dict[str, Any] = {"model": model or self.model_name, "messages": messages}
        for key, value in (("functions", functions), ("function_call", function_call), ("tools", tools),
                           ("tool_choice", tool_choice), ("response_format", response_format),
                           ("logprobs", logprobs), ("top_logprobs", top_logprobs)):
            if value is not None:
                body[key] = value
        self._sampling(body, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p, top_k=top_k,
                       stop=stop, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                       repeat_penalty=repeat_penalty, seed=seed, grammar=grammar, logit_bias=logit_bias)
        return self._request("chat", body, stream, extra)

    @staticmethod
    def _sampling(body: dict, *, max_tokens, stop, seed, grammar, logit_bias, **numbers) -> None:
        if max_tokens is not None and max_tokens > 0:
            body["max_tokens"] = max_tokens
        body.update(numbers)
        if stop:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = seed
        if grammar is not None:
            body["grammar"] = grammar if isinstance(grammar, str) else getattr(grammar, "_grammar", grammar)
        if logit_bias is not None:
            body["logit_bias"] = {str(k): v for k, v in logit_bias.items()}

    # --- embeddings ---------------------------------------------------------------------------

    def create_embedding(self, input: str | list[str], model: str | None = None, **extra: Any) -> dict:
        """A ``/v1/embeddings`` request: ``{"object": "list", "data": [{"embedding": [...], ...}],
        "usage": ...}``. Vectors are mean-pooled and L2-normalised."""
        body = {"model": model or self.model_name, "input": input}
        return self._request("embed", body, False, extra)

    def embed(self, input: str | list[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False) -> list[float] | list[list[float]] | tuple[Any, int]:
        """Embedding vectors as lists: one for a string, a list of them for a list, as
        llama-cpp-python's ``embed``. Vectors are always unit length (``normalize`` changes
        nothing); an input longer than the context raises APIError ``context_length`` rather than
        being truncated (``truncate`` is accepted for compatibility)."""
        reply = self.create_embedding(input)
        vectors = [d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])]
        output = vectors[0] if isinstance(input, str) else vectors
        if return_count:
            return output, reply["usage"]["prompt_tokens"]
        return output

    # --- requests -----------------------------------------------------------------------------

    def _request(self, command: str, body: dict, stream: bool, extra: dict) -> dict | CompletionStream:
        serving = self._serving_or_fail()
        if stream:
            body["stream"] = True
        body.update(extra)
        data = json.dumps(body).encode()
        if body.get("stream"):
            s = CompletionStream(serving, command, data)
            with self._streams_lock:
                self._streams.add(s)
            return s
        reply = serving.call(command, data)
        if reply.error is not None:
            raise _api_error(reply.error)
        if reply.body is None:
            raise APIError(ErrorKind.INTERNAL, "the guest answered with a stream that was not asked for")
        return json.loads(reply.body)

    def _serving_or_fail(self) -> Serving:
        if self._serving is None:
            raise RuntimeError("this Llama is closed")
        return self._serving

    # --- model --------------------------------------------------------------------------------

    @property
    def served(self) -> ServedModel:
        if self._registry is None or (served := self._registry.get(PRELOAD)) is None:
            raise RuntimeError("this Llama is closed")
        return served

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text`` (llama-cpp-python's signature; ``str`` also accepted)."""
        return self.served.model.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        """The bytes of ``tokens`` (llama-cpp-python returns bytes too: a token may be part of a
        UTF-8 character)."""
        model = self.served.model
        return b"".join(model.piece(t, special=special) for t in tokens)

    def n_ctx(self) -> int:
        """Tokens of context each request can use (llama.cpp may round ``n_ctx`` up)."""
        return self.served.engine.n_ctx_seq

    def n_embd(self) -> int:
        return self.served.model.info.n_embd

    def n_vocab(self) -> int:
        return self.served.model.info.n_vocab

    def stats(self) -> EngineStats:
        """The engine's counters (``busy_sequences``, ``queue_depth``, ...)."""
        return self.served.engine.stats()

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop open streams, then free the guest runner, the engine and the model. Idempotent."""
        with self._streams_lock:
            streams, self._streams = list(self._streams), weakref.WeakSet()
        for s in streams:
            s.close()
        serving, self._serving = self._serving, None
        registry, self._registry = self._registry, None
        if serving is not None:
            serving.close()
        if registry is not None:
            registry.close()

    def __repr__(self) -> str:
        state = "closed" if self._serving is None else f"n_ctx={self.n_ctx()}, n_parallel={self._config.parallel}"
        return f"Llama({self.model_path!r}, model_name={self.model_name!r}, {state})"


def _unsupported(**values: Any) -> None:
    defaults = {"typical_p": 1.0, "mirostat_mode": 0, "stopping_criteria": None, "logits_processor": None}
    for name, value in values.items():
        if value != defaults[name]:
            raise ValueError(f"{name} is not supported by llama-host (leave it at {defaults[name]!r})")
