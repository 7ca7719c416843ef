"""A loaded GGUF model: metadata, tokenizer, and the offload decision for a WASI-NN target."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import functools
import logging
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from llama_host.engine import lib
from llama_host.engine.amx import LibraryState, library_state
from llama_host.resource import Resource

C = lib.C
log = logging.getLogger(__name__)


class Target(enum.IntEnum):
    """WASI-NN execution targets (the numbers are the ABI's)."""

    CPU = 0
    GPU = 1
    TPU = 2
    AUTO = 3


class ModelLoadError(RuntimeError):
    """llama.cpp could not load the file (corrupt, unsupported architecture, out of memory)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"llama.cpp cannot load {path}: {reason}")
        self.reason = reason


class LoadCancelled(Exception):
    """The load stopped because its ``cancel`` event was set (the server was told to stop)."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    path: Path
    name: str
    architecture: str
    description: str  # llama.cpp's one-line summary, e.g. "llama ?B Q4_0"
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_params: int
    size_bytes: int
    chat_template: str | None
    tool_use_template: str | None  # tokenizer.chat_template.tool_use: for requests with tools
    bos_id: int | None
    eos_id: int | None
    bos_token: str  # token text, as chat templates use it ("" when the model has none)
    eos_token: str
    add_bos: bool
    n_gpu_layers: int


def offload_layers(target: Target) -> int:
    """Layers to offload for a target: CPU none; GPU and AUTO all (a negative count means all)."""
    if target is Target.CPU:
        return 0
    if not lib.supports_gpu_offload():
        if target is Target.GPU:
            log.warning("target GPU requested, but this llama.cpp build has no GPU backend: running on the CPU")
        return 0
    return -1


@functools.cache
def _extra_buffer_types_safe() -> bool:
    """Extra buffer types carry AMX kernels and weight repacking. Turn them off only when the
    library has AMX compiled in and its AMX code faults here (decided by running it in a child
    process: engine/amx.py); build.sh avoids that case for a library it builds on this machine."""
    if lib.system_features().get("AMX_INT8") != "1":
        return True
    try:
        faulting = library_state() is LibraryState.FAULTING
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log.warning("cannot tell whether llama.cpp's AMX code runs here (%s): loading without it", e)
        return False
    if faulting:
        log.warning(
            "llama.cpp was built with AMX, but its AMX code crashes on this machine: loading without "
            "extra buffer types (no AMX, no weight repacking, slower). Run ./build.sh here to rebuild without AMX."
        )
    return not faulting


class Model(Resource):
    """One ``llama_model``; free it with ``close()`` or a ``with`` block, never the GC."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        target: Target = Target.CPU,
        n_gpu_layers: int | None = None,
        vocab_only: bool = False,
        extra_buffer_types: bool | None = None,
        tensor_split: Sequence[float] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """``extra_buffer_types``: AMX and weight-repacking kernels; None: where they run here.
        ``tensor_split``: the share of the offloaded layers each device holds, in ggml's device
        order (llama-server's --tensor-split); None: by their free memory. ``cancel``: once set,
        llama.cpp stops the load at its next progress report and this raises LoadCancelled."""
        lib.init_backend()
        self.path = Path(path)
        self._pieces_read: dict[int, bytes] = {}  # (piece: the engine asks for one per generated token)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        params = C.llama_model_default_params()
        params.n_gpu_layers = offload_layers(target) if n_gpu_layers is None else n_gpu_layers
        params.vocab_only = vocab_only
        params.use_extra_bufts = _extra_buffer_types_safe() if extra_buffer_types is None else extra_buffer_types
        if tensor_split:
            split = (ctypes.c_float * C.llama_max_devices())(*tensor_split[:C.llama_max_devices()])
            params.tensor_split = split  # (read during the load only)
        if cancel is not None:
            progress = C.llama_progress_callback(lambda _done, _data: not cancel.is_set())
            params.progress_callback = progress  # (called during the load only)
        with lib.errors() as said:
            self._ptr = C.llama_model_load_from_file(os.fsencode(self.path), params)
        if not self._ptr and cancel is not None and cancel.is_set():
            raise LoadCancelled(f"loading {self.path} was cancelled")
        if not self._ptr:
            raise ModelLoadError(self.path, lib.reason(said, "unknown error"))
        for line in said:
            log.warning("%s: %s", self.path.name, line)
        self.vocab = C.llama_model_get_vocab(self._ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.info = self._read_info(params.n_gpu_layers)

    # --- lifetime ---------------------------------------------------------------------------

    @property
    def ptr(self):
        if not self._ptr:
            raise RuntimeError("model is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr:
            C.llama_model_free(self._ptr)
            self._ptr = None
            self.vocab = None

    # --- metadata ---------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when absent."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token (e.g. ``<s>``), as chat templates see it."""
        raw = C.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def _read_info(self, n_gpu_layers: int) -> ModelInfo:
        def token_id(value: int) -> int | None:
            return value if 0 <= value < self.n_vocab else None

        bos = token_id(C.llama_vocab_bos(self.vocab))
        eos = token_id(C.llama_vocab_eos(self.vocab))
        desc = ctypes.create_string_buffer(256)
        C.llama_model_desc(self.ptr, desc, len(desc))
        return ModelInfo(
            path=self.path,
            name=self.meta("general.name") or self.path.stem,
            architecture=self.meta("general.architecture") or "",
            description=desc.value.decode("utf-8", "replace"),
            n_ctx_train=C.llama_model_n_ctx_train(self.ptr),
            n_embd=C.llama_model_n_embd(self.ptr),
            n_vocab=self.n_vocab,
            n_params=C.llama_model_n_params(self.ptr),
            size_bytes=C.llama_model_size(self.ptr),
            chat_template=self.chat_template(),
            tool_use_template=self.chat_template("tool_use"),
            bos_id=bos,
            eos_id=eos,
            bos_token=self.token_text(bos) if bos is not None else "",
            eos_token=self.token_text(eos) if eos is not None else "",
            add_bos=bool(C.llama_vocab_get_add_bos(self.vocab)),
            n_gpu_layers=n_gpu_layers,
        )

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token of context takes: f16 keys and values in every layer.
        An upper bound (sliding-window and MLA layers take less), for refusing contexts early."""
        arch = self.info.architecture
        n_head = max(1, C.llama_model_n_head(self.ptr))
        n_head_kv = C.llama_model_n_head_kv(self.ptr) or n_head
        head_k = int(self.meta(f"{arch}.attention.key_length") or 0) or self.info.n_embd // n_head
        head_v = int(self.meta(f"{arch}.attention.value_length") or 0) or head_k
        return C.llama_model_n_layer(self.ptr) * n_head_kv * (head_k + head_v) * 2

    # --- tokens -----------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, *, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Tokens of ``text``. ``special`` parses special-token text such as ``<|im_start|>``;
        BOS is added when the model asks for it (``add_bos`` overrides), never twice: a text that
        already starts with the BOS token keeps just that one."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        add = self.info.add_bos if add_bos is None else add_bos
        bos_text = self.info.bos_token
        if add and special and bos_text and data.startswith(bos_text.encode()):
            add = False  # the text brings its BOS (chat templates write it); llama.cpp would warn
        capacity = len(data) + 2
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, capacity, add, special)
            if n >= 0:
                break
            if -n <= capacity:  # INT32_MIN: overflow, cannot happen for sizes we allocate
                raise ValueError(f"cannot tokenize a text of {len(data)} bytes")
            capacity = -n
        tokens = buf[:n]
        bos = self.info.bos_id
        if add and bos is not None and len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            del tokens[0]
        return tokens

    def fewest_tokens(self, text: str | bytes) -> int:
        """The fewest tokens ``text`` can be (no token is longer than the longest piece): a text
        too long for a context by this count is refused without the tokenizer's work, which
        grows with the square of the special tokens in it."""
        n = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
        return -(-n // max(1, self._longest_piece))

    @functools.cached_property
    def _longest_piece(self) -> int:
        """Bytes of the longest token text (special tokens as text); read once, kept as a number."""
        return max((len(self._read_piece(t, True)) for t in range(self.n_vocab)), default=1)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token. A piece may be part of a UTF-8 character (byte tokens), so
        callers join pieces as bytes and decode once a character is complete. (Kept once read:
        the engine asks for one per generated token.)"""
        if special:
            return self._read_piece(token, True)
        piece = self._pieces_read.get(token)
        if piece is None:
            piece = self._pieces_read[token] = self._read_piece(token, False)
        return piece

    def _read_piece(self, token: int, special: bool) -> bytes:
        # (llama.cpp indexes its vocabulary with .at(): an id outside it is a C++ exception
        # through the C API, which aborts the process)
        if not (isinstance(token, int) and 0 <= token < self.n_vocab):
            raise ValueError(f"token id {token!r} is not in the model's vocabulary (0 to {self.n_vocab - 1})")
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """Text of a token list; bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", "replace")

    @functools.cached_property
    def _pieces(self) -> tuple[dict[bytes, int], int]:
        """Each token text (special tokens as text) -> a token that has it; the longest's length."""
        out: dict[bytes, int] = {}
        for t in range(self.n_vocab):
            p = self.piece(t, special=True)
            if p and p[0] != 0:  # (llama.cpp's grammar refuses empty pieces and NUL)
                out.setdefault(p, t)
        return out, max(map(len, out), default=0)

    def spell(self, text: bytes) -> list[int] | None:
        """Tokens whose pieces join to exactly ``text``, longest first, or None where no token
        goes on. Tokenizing does not promise that (a space prefix, merges across the start)."""
        pieces, longest = self._pieces
        out, at = [], 0
        while at < len(text):
            for n in range(min(longest, len(text) - at), 0, -1):
                token = pieces.get(text[at : at + n])
                if token is not None:
                    out.append(token)
                    at += n
                    break
            else:
                return None
        return out

    @functools.cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token (EOS, EOT, <|im_end|>, ...), for ignore_eos."""
        return tuple(t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t))

    def chat_template(self, name: str | None = None) -> str | None:
        """A chat template the GGUF carries: the default, or a named one (``tool_use``, ``rerank``)."""
        raw = C.llama_model_chat_template(self.ptr, name.encode() if name else None)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def sep_id(self) -> int | None:
        """The separator token (BERT's [SEP]), if the vocabulary has one."""
        t = C.llama_vocab_sep(self.vocab)
        return t if 0 <= t < self.n_vocab else None

    @functools.cached_property
    def fim_tokens(self) -> dict[str, int]:
        """The fill-in-the-middle tokens the vocabulary has (llama.cpp finds them by GGUF key or by
        their usual texts): of ``pre``, ``suf``, ``mid``, ``rep`` (repository) and ``sep`` (file)."""
        found = {"pre": C.llama_vocab_fim_pre, "suf": C.llama_vocab_fim_suf, "mid": C.llama_vocab_fim_mid,
                 "rep": C.llama_vocab_fim_rep, "sep": C.llama_vocab_fim_sep}
        ids = {name: get(self.vocab) for name, get in found.items()}
        return {name: t for name, t in ids.items() if 0 <= t < self.n_vocab}

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT, and whatever else the vocabulary marks so."""
        return bool(C.llama_vocab_is_eog(self.vocab, token))
