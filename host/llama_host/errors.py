"""Every error kind llama-host reports, in one table: OpenAI error type, HTTP status, code.

Code raises a typed :class:`HostError` subclass; the HTTP layer turns ``error.kind`` into the
response. Nothing classifies an error by its message text.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    #                     (OpenAI type,             HTTP, code)
    INVALID_REQUEST = ("invalid_request_error", 400, None)
    CONTEXT_LENGTH = ("invalid_request_error", 400, "context_length_exceeded")
    INVALID_GRAMMAR = ("invalid_request_error", 400, "invalid_grammar")
    TEMPLATE_ERROR = ("invalid_request_error", 400, "template_error")
    MODEL_NOT_FOUND = ("invalid_request_error", 404, "model_not_found")
    UNAUTHORIZED = ("invalid_request_error", 401, "invalid_api_key")
    NOT_FOUND = ("invalid_request_error", 404, "not_found")
    METHOD_NOT_ALLOWED = ("invalid_request_error", 405, "method_not_allowed")
    REQUEST_TIMEOUT = ("invalid_request_error", 408, "request_timeout")
    BODY_TOO_LARGE = ("invalid_request_error", 413, "request_too_large")
    HEADERS_TOO_LARGE = ("invalid_request_error", 431, "request_headers_too_large")
    NOT_SUPPORTED = ("not_supported_error", 501, "not_supported")  # the model cannot (llama-server's)
    QUEUE_FULL = ("server_error", 503, "queue_full")
    MODEL_PRELOADED = ("invalid_request_error", 400, "model_preloaded")  # (--nn-preload: never unloaded)
    MODEL_LOAD_FAILED = ("server_error", 500, "model_load_failed")
    MODEL_BUSY = ("server_error", 503, "model_busy")  # every loaded model serving requests: no room
    INSUFFICIENT_MEMORY = ("server_error", 503, "insufficient_memory")  # past --models-max-memory
    UNAVAILABLE = ("server_error", 503, "unavailable")
    ENGINE_BROKEN = ("server_error", 503, "engine_failed")  # llama.cpp aborted in it (a lost RPC worker)
    ENGINE_STALLED = ("server_error", 503, "engine_stalled")  # a step past --stall-timeout (a silent RPC worker)
    NON_FINITE_OUTPUT = ("server_error", 500, "non_finite_output")  # NaN from the model: broken weights or kernels
    INTERNAL = ("server_error", 500, None)

    @property
    def openai_type(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def code(self) -> str | None:
        return self.value[2]


def error_body(kind: ErrorKind, message: str, param: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind.openai_type, "param": param, "code": kind.code}}


class HostError(Exception):
    kind: ErrorKind = ErrorKind.INTERNAL
    param: str | None = None


class PromptTooLong(HostError):
    kind = ErrorKind.CONTEXT_LENGTH
    param = "messages"

    def __init__(self, n_prompt: int, n_ctx: int, *, at_least: bool = False) -> None:
        super().__init__(
            f"the prompt has {'at least ' if at_least else ''}{n_prompt} tokens, more than the {n_ctx} tokens of "
            "context a request can use"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


class InvalidGrammar(HostError):
    kind = ErrorKind.INVALID_GRAMMAR
    param = "grammar"


class QueueFull(HostError):
    kind = ErrorKind.QUEUE_FULL

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server is busy: {limit} requests are already waiting; retry shortly")
        self.limit = limit


class EngineClosed(HostError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("the model is shutting down")


class ModelNotFound(HostError):
    kind = ErrorKind.MODEL_NOT_FOUND
    param = "model"


class ModelPreloaded(HostError):
    """An unload of a model given with --nn-preload (those stay loaded)."""

    kind = ErrorKind.MODEL_PRELOADED
    param = "model"


class ModelLoadFailed(HostError):
    """An on-demand model whose file llama.cpp could not load (corrupt, unsupported, too large)."""

    kind = ErrorKind.MODEL_LOAD_FAILED


class ModelBusy(HostError):
    """No room to load a model (every loaded one is in use) within the wait, or an unload of a
    model that requests are using."""

    kind = ErrorKind.MODEL_BUSY


class InsufficientMemory(HostError):
    """Loading a model would take the loaded models past the memory budget (--models-max-memory)."""

    kind = ErrorKind.INSUFFICIENT_MEMORY


class SlotBusy(HostError):
    """A slot action on a sequence that is serving a request (retry when it is done)."""

    kind = ErrorKind.UNAVAILABLE
    param = "id_slot"

    def __init__(self, seq_id: int) -> None:
        super().__init__(f"slot {seq_id} is processing a request; retry when it is idle")


class SlotStateError(HostError):
    """A slot's KV state that llama.cpp could not write, or a file it would not read."""

    kind = ErrorKind.INVALID_REQUEST
    param = "filename"


class EngineFailure(HostError):
    kind = ErrorKind.INTERNAL


class NonFiniteOutput(HostError):
    """The model computed NaN (or infinite) numbers where an answer needs real ones (embeddings,
    scores, log-probabilities): its weights or a kernel are broken; no number would be true."""

    kind = ErrorKind.NON_FINITE_OUTPUT

    def __init__(self, what: str) -> None:
        super().__init__(f"the model computed {what} that are not finite numbers (NaN or infinite): its weights, or "
                         "the kernels computing them, are broken")


class EngineBroken(HostError):
    """llama.cpp aborted inside this model's engine (a lost RPC worker, a failed check of its
    own): the model answers nothing more until the server restarts; the rest keeps serving."""

    kind = ErrorKind.ENGINE_BROKEN

    def __init__(self, reason: str) -> None:
        super().__init__(f"the model's engine failed and serves no more requests until the server restarts: {reason}")
        self.reason = reason


class APIError(HostError):
    """An error answer of the guest, raised by the Python API (``llama_host.Llama``): ``kind``
    (an :class:`ErrorKind`) says which error, ``param`` names the request field, ``status`` is the
    HTTP status the server answers with."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param

    @property
    def status(self) -> int:
        return self.kind.http_status

    @property
    def code(self) -> str | None:
        return self.kind.code

    def body(self) -> dict:
        """The OpenAI error object the server answers with."""
        return error_body(self.kind, self.message, self.param)

    def __repr__(self) -> str:
        return f"APIError({self.kind.name.lower()}, {self.message!r}, param={self.param!r})"
