"""Other APIs than OpenAI's chat and completions: those of older local-LLM servers, kept working
unchanged for their clients, and the newer ones agents speak (OpenAI Responses, Anthropic Messages).

Each API is a set of :class:`Endpoint`: its request body becomes an OpenAI request, which runs
through the same guest as /v1 (validation, templates, tool calls, sampling), and the OpenAI answer
becomes that API's response. Only the translation lives here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from llama_host.errors import ErrorKind


class CompatError(ValueError):
    """A request field of the older API is missing or wrong: a 400 naming it (or the ``kind``
    given, e.g. a request the model cannot serve)."""

    def __init__(self, param: str | None, message: str, kind: ErrorKind = ErrorKind.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.param = param
        self.kind = kind


class Stream(Protocol):
    """One streamed answer, translated: the SSE bytes for each of the guest's events."""

    def event(self, payload: bytes) -> bytes:
        """An OpenAI chunk (``b"[DONE]"`` at the end) -> what to send for it (maybe nothing)."""

    def error(self, body: dict) -> bytes:
        """The stream's last event, for an OpenAI error body."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    command: str  # the guest command: chat, complete or embed
    request: Callable[[Any], dict]  # the parsed body -> the OpenAI request
    response: Callable[[dict, dict, float], Any]  # OpenAI request, its answer, seconds taken -> the response
    event: Callable[[dict], str] | None = None  # streamed: an OpenAI chunk -> the event's data
    stream: Callable[[dict], Stream] | None = None  # streamed, with state: the OpenAI request -> its Stream
    error: Callable[[int, dict], dict] | None = None  # HTTP status, OpenAI error body -> this API's
    count_tokens: bool = False  # an apply-template answer, given to ``response`` as {"prompt_tokens": n}
    # the served model, the translated request -> the request completed with what only the model
    # knows (tokens); run before the guest when the request names a served model
    prepare: Callable[[Any, dict], dict] | None = None


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object", bool: "a boolean"}


def field(body: dict, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
    """``body[name]`` checked against ``kind`` (a bool is not a number here, unlike in Python)."""
    if body.get(name) is None:
        if required:
            raise CompatError(name, f"'{name}' is required")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if int in kinds and isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # (3.0 is 3, as the guest and Python's json-based servers take it)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_KIND_NAMES[k] for k in kinds if not (k is int and float in kinds))
        raise CompatError(name, f"'{name}' must be {expected}")
    return value


def streaming(body: dict) -> dict:
    """``stream`` as the OpenAI request's fields: a translated stream needs the usage chunk at
    its end (the APIs here report usage in their last event)."""
    if field(body, "stream", bool, False):
        return {"stream": True, "stream_options": {"include_usage": True}}
    return {}


def cached_tokens(usage: dict) -> int:
    """The prompt tokens an OpenAI answer's usage says were reused from the cache."""
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)


def typed_event(kind: str, data: dict) -> bytes:
    """A server-sent event named by its type, the type repeated in its data (Responses', Anthropic's)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def input_tokens(_request: dict, answer: dict, _seconds: float) -> dict:
    """A token count (of an ``Endpoint`` with ``count_tokens``) as OpenAI's input_tokens answer."""
    return {"object": "response.input_tokens", "input_tokens": answer["prompt_tokens"]}


def object_body(body: Any, what: str = "the request body") -> dict:
    if not isinstance(body, dict):
        raise CompatError(None, f"{what} must be a JSON object")
    return body


def _all() -> list[Endpoint]:
    from llama_host.compat import anthropic, llama2, llama_go, llama_server, llm_api, responses

    return [*llama2.ENDPOINTS, *llama_go.ENDPOINTS, *llm_api.ENDPOINTS, *llama_server.ENDPOINTS, *responses.ENDPOINTS,
            *anthropic.ENDPOINTS]


ENDPOINTS: list[Endpoint] = _all()
