"""The HTTP server: Starlette routes over :class:`Serving` (the guest) and the model registry.

Guest runs block, so they go to worker threads; stream events cross back to the event loop
through a queue. The routes do transport only: bodies go to the guest as received, and what the
guest emits goes to the client as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from llama_host import __version__, compat
from llama_host.bridge.wasi_nn import LLAMA_BUILD
from llama_host.compat import llama_server, responses
from llama_host.engine import Cancellation
from llama_host.errors import ErrorKind, HostError, error_body
from llama_host.metrics import Metrics
from llama_host.registry import Lease, ModelRegistry, ModelState, ModelStatus
from llama_host.serving import GuestError, Reply, Serving

log = logging.getLogger(__name__)

# The OpenAI routes: served at /v1/... and, as llama-server does, without the prefix (many clients
# are configured with a base URL that has no /v1).
OPENAI_ROUTES = (("/chat/completions", "chat"), ("/completions", "complete"), ("/embeddings", "embed"),
                 ("/apply-template", "apply-template"))

# What an API key guards: everything that reaches a model, and /metrics (as llama-server does).
# Left open, as llama-server leaves them, for the probes of load balancers and OpenAI clients:
# /health, GET of the model list and of one model, and the chat page (it asks for the key itself).
RERANK_PATHS = ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking")  # (llama-server's aliases)
PROTECTED = ("/v1", "/metrics", "/models", "/tokenize", "/detokenize", "/props", "/slots", *RERANK_PATHS, *(path for path, _ in OPENAI_ROUTES),
             *(e.path for e in compat.ENDPOINTS))
PUBLIC_GET = re.compile(r"/(?:v1/)?models(?:/.*)?")
REQUEST_ID = "x-request-id"
# --cors-origins localhost: a web UI served from this machine, on any port (its dev server's)
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@dataclasses.dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16 << 20
    web_ui: Path | None = None
    worker_threads: int = 64  # guest runs at once (waiting ones mostly sleep in the engine queue)
    slots: bool = True  # llama-server's /slots (--no-slots: off)
    slot_save_path: Path | None = None  # where /slots/{id}?action=save|restore keep files
    reranking: bool = False  # /rerank with any model (--reranking), not only those whose GGUF says so
    per_token_embeddings: bool = False  # --pooling none: /embedding answers a vector per token
    info: dict = dataclasses.field(default_factory=dict)  # settings shown by /v1/info
    devices: list[dict] = dataclasses.field(default_factory=list)  # ggml's devices at start (/v1/info)


class State:
    """What the routes share: the loaded models (the CLI loads them before it serves) and the
    streams in flight, which a shutdown ends (:meth:`end_streams`)."""

    def __init__(self, settings: Settings, registry: ModelRegistry, serving: Serving) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.registry = registry
        self.serving = serving
        self.metrics.watch(registry)
        self.limiter = anyio.CapacityLimiter(settings.worker_threads)
        self.replies: set[asyncio.Queue] = set()  # the queue of every request awaiting the guest

    def end_streams(self) -> None:
        """The shutdown grace is over: every request still running ends now, a stream with a
        final error event and ``[DONE]``, any other with a 503 (event loop thread only)."""
        for replies in self.replies:
            replies.put_nowait(SHUTDOWN)

    def close(self) -> None:
        self.serving.close()
        self.registry.close()


SHUTDOWN = object()  # put in a request's queue by State.end_streams


def error_response(kind: ErrorKind, message: str, param: str | None = None, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(error_body(kind, message, param)), kind.http_status,
                    headers=headers, media_type="application/json")


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


def _answer_id(data: bytes) -> str | None:
    """The ``id`` of a guest answer (a completion's, or a stream's first chunk's), if it has one."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    value = answer.get("id") if isinstance(answer, dict) else None
    return value if isinstance(value, str) and value.isascii() and value.isprintable() else None


class RequestTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


# --- routes ---------------------------------------------------------------------------------


async def _request_body(request: Request) -> bytes | Response:
    """The body of a request for the guest, or the response refusing it."""
    state: State = request.app.state.llama
    try:
        return await read_body(request, state.settings.max_body_bytes)
    except RequestTooLarge:
        return error_response(ErrorKind.BODY_TOO_LARGE,
                              f"the request body is larger than {state.settings.max_body_bytes} bytes")
    except ClientDisconnect:
        return Response(status_code=400)


def guest_route(command: str, route: str) -> Callable:
    async def endpoint(request: Request) -> Response:
        body = await _request_body(request)
        if isinstance(body, Response):
            return body
        return await run_guest(request, command, route, body)

    return endpoint


def compat_route(api: compat.Endpoint) -> Callable:
    """An older API's endpoint: its body is translated to an OpenAI request for the guest, and
    the answer back (llama_host.compat)."""

    async def endpoint(request: Request) -> Response:
        body = await _request_body(request)
        if isinstance(body, Response):
            return body
        return await _run_compat(request, api, body)

    return endpoint


async def _run_compat(request: Request, api: compat.Endpoint, body: bytes, parsed: dict | None = None) -> Response:
    """``parsed``: the body, where the route has parsed it already (to tell the APIs apart)."""
    state: State = request.app.state.llama
    lease: Lease | None = None  # the model prepare used: held until the guest holds it too (no unload between)
    try:
        try:
            translated = api.request(load_json(body) if parsed is None else parsed)
            if api.prepare is not None and (route := _route_for(state, translated.get("model"))) is not None:
                lease = await anyio.to_thread.run_sync(state.registry.acquire, route.preload, limiter=state.limiter)
                translated = await anyio.to_thread.run_sync(api.prepare, lease.served, translated,
                                                            limiter=state.limiter)
        except orjson.JSONDecodeError as e:
            return _compat_error(api, ErrorKind.INVALID_REQUEST, f"the request body is not valid JSON ({e})")
        except compat.CompatError as e:
            return _compat_error(api, e.kind, str(e), e.param)
        except HostError as e:  # (the model could not be loaded)
            return _compat_error(api, e.kind, str(e), e.param)
        sent = {k: v for k, v in translated.items() if not k.startswith("_")}  # "_...": the translation's own
        return await run_guest(request, api.command, api.path, orjson.dumps(sent), translation=(api, translated))
    finally:
        if lease is not None:
            await anyio.to_thread.run_sync(lease.release)


def _compat_error(api: compat.Endpoint, kind: ErrorKind, message: str, param: str | None = None) -> Response:
    if api.error is None:
        return error_response(kind, message, param)
    body = api.error(kind.http_status, error_body(kind, message, param))
    return Response(orjson.dumps(body), kind.http_status, media_type="application/json")


LLM_API_EMBEDDINGS = next(e for e in compat.ENDPOINTS if e.path == "/embeddings")


MAX_BODY_CONTAINERS = 1 << 20  # arrays and objects in a request body the host parses


class BodyTooComplex(orjson.JSONDecodeError):
    def __init__(self) -> None:
        super().__init__(f"more than {MAX_BODY_CONTAINERS} arrays and objects", "", 0)

    def __str__(self) -> str:
        return self.msg


def load_json(body: bytes) -> Any:
    """A request body parsed on the host (the guest parses OpenAI's itself, off the GIL). orjson
    holds the GIL while it parses, so that time stops every thread, the event loop's too: the
    body may hold at most MAX_BODY_CONTAINERS arrays and objects (its brackets counted, an upper
    bound), and the collector waits (5 million ``[]`` took 2.7 s with it, 0.5 s without)."""
    if body.count(b"[") + body.count(b"{") > MAX_BODY_CONTAINERS:
        raise BodyTooComplex()
    collecting = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(body)
    finally:
        if collecting:
            gc.enable()


def _parsed(body: bytes) -> Any:
    try:
        return load_json(body)
    except orjson.JSONDecodeError:
        return None


async def embeddings_route(request: Request) -> Response:
    """``POST /embeddings`` is OpenAI's (unprefixed), llama-server's and llm-api's: a body with
    ``input`` is OpenAI's, one with ``content`` llama-server's, any other llm-api's (``{"text"}``)."""
    body = await _request_body(request)
    if isinstance(body, Response):
        return body
    parsed = _parsed(body)
    if isinstance(parsed, dict) and "input" in parsed:
        return await run_guest(request, "embed", "/embeddings", body)
    if isinstance(parsed, dict) and "content" in parsed:
        if request.app.state.llama.settings.per_token_embeddings:
            return await run_model_tool(request, llama_server.token_embeddings, body)
        return await _run_compat(request, llama_server.NATIVE_EMBEDDINGS, body, parsed)
    return await _run_compat(request, LLM_API_EMBEDDINGS, body, parsed if isinstance(parsed, dict) else None)


async def completions_route(request: Request) -> Response:
    """``POST /completions`` is OpenAI's (unprefixed) and llama-server's (its /completion): the
    rule is llama_server.is_native_completion's."""
    body = await _request_body(request)
    if isinstance(body, Response):
        return body
    if llama_server.is_native_completion(parsed := _parsed(body)):
        return await _run_compat(request, llama_server.NATIVE_COMPLETIONS, body, parsed)
    return await run_guest(request, "complete", "/completions", body)


async def run_guest(
    request: Request, command: str, route: str, body: bytes, translation: tuple[compat.Endpoint, dict] | None = None
) -> Response:
    """Runs the guest in a worker thread. Answers as soon as the first frame is known: a stream
    starts with its first event, anything else waits for the end of the run. A client that goes
    away meanwhile cancels the generation, streamed or not. ``translation``: the older API whose
    response shape to answer in, and the OpenAI request it became."""
    state: State = request.app.state.llama
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = Cancellation()  # client gone or shutdown: the guest's generations stop
    started = time.perf_counter()

    def on_event(payload: bytes) -> bool:
        if cancel.is_set:
            return False
        loop.call_soon_threadsafe(queue.put_nowait, payload)
        return True

    def work() -> Reply:
        try:
            with _model_of(state, body):
                return state.serving.call(command, body, on_event, cancel=cancel)
        except HostError as e:  # (an on-demand model that could not be loaded)
            error = GuestError(e.kind, str(e), e.param)
            return Reply(status=e.kind.http_status, body=orjson.dumps(error.body()), error=error)

    async def run() -> None:
        try:
            reply = await anyio.to_thread.run_sync(work, limiter=state.limiter)
        except Exception as e:  # noqa: BLE001 - a bug in the host must still answer
            log.exception("%s failed", command)
            reply = Reply(status=500, body=orjson.dumps(error_body(ErrorKind.INTERNAL, f"internal error: {e}")))
        queue.put_nowait(reply)

    task = asyncio.create_task(run())
    state.replies.add(queue)
    try:
        first = await _first_or_disconnect(queue, request)
    except BaseException:
        state.replies.discard(queue)
        cancel.set()
        raise
    if first is None:  # the client is gone: nobody reads the answer
        state.replies.discard(queue)
        cancel.set()
        state.metrics.finished(route, 499, time.perf_counter() - started)
        return Response(status_code=499)
    if first is SHUTDOWN or isinstance(first, Reply):
        state.replies.discard(queue)
        if first is SHUTDOWN:
            cancel.set()
            first = Reply(status=503, body=orjson.dumps(error_body(ErrorKind.UNAVAILABLE, SHUTDOWN_MESSAGE)))
        else:
            await task
        state.metrics.finished(route, first.status, time.perf_counter() - started)
        headers = {REQUEST_ID: _answer_id(first.body) or new_request_id()}
        if first.status == 503:
            headers["Retry-After"] = "1"
        if translation is not None and first.status == 200:
            api, translated = translation
            answer = orjson.loads(first.body)
            if api.count_tokens:
                answer = {"prompt_tokens": await anyio.to_thread.run_sync(_count_tokens, state, translated, answer)}
            data = api.response(translated, answer, time.perf_counter() - started)
            return Response(orjson.dumps(data), headers=headers, media_type="application/json")
        if translation is not None and translation[0].error is not None:
            data = translation[0].error(first.status, orjson.loads(first.body))
            return Response(orjson.dumps(data), first.status, headers=headers, media_type="application/json")
        return Response(first.body, first.status, headers=headers, media_type="application/json")
    state.metrics.first_token(time.perf_counter() - started)
    stream = None
    if translation is None:
        to_event = _openai_event
    elif translation[0].stream is not None:
        stream = translation[0].stream(translation[1])
        to_event = stream.event
    else:
        to_event = _compat_event(translation[0])

    async def events() -> AsyncIterator[bytes]:
        item = first
        try:
            while not isinstance(item, Reply) and item is not SHUTDOWN:
                if event := to_event(item):
                    yield event
                item = await queue.get()
            # The stream had started: an error is its last event.
            if item is SHUTDOWN:
                error = error_body(ErrorKind.UNAVAILABLE, SHUTDOWN_MESSAGE)
            else:
                error = item.error.body() if item.error is not None else None
            if error is not None and stream is not None:
                yield stream.error(error)
            elif error is not None:
                yield b"data: " + orjson.dumps(error) + b"\n\n"
                if translation is None:
                    yield b"data: [DONE]\n\n"
            state.metrics.finished(route, 200, time.perf_counter() - started)
        finally:
            state.replies.discard(queue)
            cancel.set()  # also on disconnect (the generator is closed): stop the guest
            if not task.done() and item is not SHUTDOWN:
                state.metrics.finished(route, 499, time.perf_counter() - started)

    headers = {**SSE_HEADERS, REQUEST_ID: _answer_id(first) or new_request_id()}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


SHUTDOWN_MESSAGE = "the server is shutting down; retry on another instance or later"


def _count_tokens(state: State, request: dict, answer: dict) -> int:
    """The tokens of a rendered prompt (an apply-template answer), with the model it was for."""
    route = _route_for(state, request.get("model")) or state.serving.routes[0]  # (the guest found it)
    with state.registry.use(route.preload) as served:
        return len(served.model.tokenize(answer["prompt"]))


def _model_of(state: State, body: bytes) -> contextlib.AbstractContextManager:
    """Where on-demand models are served: the model a guest request names, in use (loaded
    first, in this worker thread) for the whole run, so that a load's failure is a typed error
    (the guest, which loads by name too, would only see an errno). Anything else: nothing."""
    if not state.registry.has_on_demand:
        return contextlib.nullcontext()
    parsed = _parsed(body)
    route = _route_for(state, parsed.get("model") if isinstance(parsed, dict) else None)
    return state.registry.use(route.preload) if route is not None else contextlib.nullcontext()  # (the guest 404s)


async def _first_or_disconnect(queue: asyncio.Queue, request: Request) -> object | None:
    """The first item the guest run puts in ``queue``, or None if the client disconnects first
    (a non-streamed request would otherwise generate to the end for nobody)."""
    first = asyncio.ensure_future(queue.get())
    try:
        done = await _done_before_disconnect(first, request)
    finally:
        if not first.done():
            first.cancel()
    return first.result() if done and not first.cancelled() else None


async def _done_before_disconnect(future: asyncio.Future, request: Request) -> bool:
    """Waits for ``future`` or for the client to go, whichever is first; True: ``future`` is done."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((future, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return future.done()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by then, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _openai_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _compat_event(api: compat.Endpoint) -> Callable[[bytes], bytes]:
    """Server-sent events as sse-starlette writes them (CRLF, a data line per text line)."""

    def event(payload: bytes) -> bytes:
        if payload == b"[DONE]":
            return b""
        text = api.event(orjson.loads(payload))
        if not text:
            return b""
        return "".join(f"data: {line}\r\n" for line in text.split("\n")).encode() + b"\r\n"

    return event


def _model_object(state: State, model_id: str, status: ModelStatus | None = None) -> dict:
    """OpenAI's model object, with llama-server's router ``status``: ``{"value": "loaded"}``,
    ``"loading"`` or ``"unloaded"`` (plus ``"failed": true`` and the ``"error"`` after a load
    that failed); ``"preloaded": true`` for --nn-preload models, which are always loaded."""
    if status is None:
        preload = next(r.preload for r in state.serving.routes if r.id == model_id)
        status = state.registry.statuses()[preload]
    described: dict[str, Any] = {"value": status.state.value}
    if status.preloaded:
        described["preloaded"] = True
    if status.failure is not None and status.state is ModelState.UNLOADED:
        described |= {"failed": True, "error": status.failure}
    return {"id": model_id, "object": "model", "created": int(state.metrics.started), "owned_by": "llama-host",
            "status": described}


def models_route(request: Request) -> Response:
    state: State = request.app.state.llama
    statuses = state.registry.statuses()
    return JSONResponse({"object": "list",
                         "data": [_model_object(state, r.id, statuses[r.preload]) for r in state.serving.routes]})


async def model_action_route(request: Request) -> Response:
    """llama-server's router: ``POST /models/load`` and ``/models/unload``, body ``{"model": id}``,
    answered ``{"success": true}``. A load waits for the model; an unload refuses a preloaded
    model and one that requests are using."""
    state: State = request.app.state.llama
    body = await _request_body(request)
    if isinstance(body, Response):
        return body
    parsed = _parsed(body)
    model_id = parsed.get("model") if isinstance(parsed, dict) else None
    if not isinstance(model_id, str):
        return error_response(ErrorKind.INVALID_REQUEST, "the body must be {\"model\": \"<id>\"}", "model")
    route = _route_for(state, model_id)
    if route is None:
        ids = ", ".join(r.id for r in state.serving.routes)
        return error_response(ErrorKind.MODEL_NOT_FOUND, f"the model '{echo(model_id)}' does not exist; available: {ids}",
                              "model")
    action = state.registry.load_model if request.url.path.endswith("/load") else state.registry.unload
    try:
        await anyio.to_thread.run_sync(action, route.preload, limiter=state.limiter)
    except HostError as e:
        return host_error_response(e)
    return JSONResponse({"success": True})


def host_error_response(e: HostError) -> Response:
    return error_response(e.kind, str(e), e.param, headers={"Retry-After": "1"} if e.kind.http_status == 503 else None)


def model_route(request: Request) -> Response:
    """One model (the SDK's ``models.retrieve``); an id may hold slashes (``org/name``)."""
    state: State = request.app.state.llama
    model_id = request.path_params["model"]
    ids = [r.id for r in state.serving.routes]
    if model_id not in ids:
        return error_response(ErrorKind.MODEL_NOT_FOUND,
                              f"the model '{echo(model_id)}' does not exist; available: {', '.join(ids)}", "model")
    return JSONResponse(_model_object(state, model_id))


def info_route(request: Request) -> Response:
    state: State = request.app.state.llama
    models = []
    statuses = state.registry.statuses()
    for r in state.serving.routes:
        status = statuses[r.preload]
        model = {"id": r.id, "preload": r.preload, "template": r.template, "file": str(status.path),
                 "status": status.state.value}
        with state.registry.peek(r.preload) as served:  # (an unloaded model shows no more: it is not loaded for this)
            if served is not None:
                info = served.model.info
                model |= {"architecture": info.architecture, "n_ctx": served.engine.n_ctx_seq,
                          "n_ctx_train": info.n_ctx_train, "n_vocab": info.n_vocab, "n_embd": info.n_embd,
                          "n_gpu_layers": info.n_gpu_layers}
        models.append(model)
    return JSONResponse({
        "server": {"name": "llama-host", "version": __version__},
        "llama_cpp": {"build_number": LLAMA_BUILD[0], "commit": LLAMA_BUILD[1]},
        "models": models,
        "devices": state.settings.devices,
        "settings": state.settings.info,
    })


def stored_response_route(request: Request) -> Response:
    """A response kept by ``store`` (llama_host.compat.responses), as the SDK's ``responses.retrieve``."""
    response_id = request.path_params["id"]
    found = responses.retrieve(response_id)
    if found is None:
        return error_response(ErrorKind.NOT_FOUND, f"no stored response '{echo(response_id)}'", "response_id")
    return JSONResponse(found)


def _route_for(state: State, model_id: Any):
    """The served route a body's ``model`` names (absent: the first), or None."""
    routes = state.serving.routes
    if model_id is None:
        return routes[0]
    return next((r for r in routes if r.id == model_id), None)


def _with_model(state: State, preload: str, work: Callable, *args: Any) -> Any:
    """``work(served, *args)`` with the model in use (loaded first if it is on demand; blocking)."""
    with state.registry.use(preload) as served:
        return work(served, *args)


def model_tool(work: Callable) -> Callable:
    """llama-server's /tokenize, /detokenize and /rerank: ``work(served, body, cancel)`` (a
    ServedModel; a Cancellation set when the client goes) on the model the body names."""

    async def endpoint(request: Request) -> Response:
        body = await _request_body(request)
        return body if isinstance(body, Response) else await run_model_tool(request, work, body)

    return endpoint


async def run_model_tool(request: Request, work: Callable, body: bytes) -> Response:
    """``work(served, parsed body, cancel)`` answered as JSON, its errors as OpenAI's. It runs
    among the guest runs (their limiter: never in the pool that /health's thread comes from),
    and a client that goes cancels it."""
    state: State = request.app.state.llama
    cancel = Cancellation()
    try:
        parsed = load_json(body)
        route = _route_for(state, parsed.get("model") if isinstance(parsed, dict) else None)
        if route is None:
            return error_response(ErrorKind.MODEL_NOT_FOUND, f"the model '{echo(str(parsed['model']))}' does not exist", "model")
        job = asyncio.ensure_future(anyio.to_thread.run_sync(_with_model, state, route.preload, work, parsed, cancel,
                                                             limiter=state.limiter))
        if not await _done_before_disconnect(job, request):
            cancel.set()
            with contextlib.suppress(Exception):  # (it stops at its next check; what it says, nobody reads)
                await job
            return Response(status_code=499)
        answer = job.result()
    except orjson.JSONDecodeError as e:
        return error_response(ErrorKind.INVALID_REQUEST, f"the request body is not valid JSON ({e})")
    except compat.CompatError as e:
        return error_response(e.kind, str(e), e.param)
    except HostError as e:  # (an input longer than the context)
        return error_response(e.kind, str(e), e.param)
    except ValueError as e:  # (a text too long to tokenize)
        return error_response(ErrorKind.INVALID_REQUEST, str(e), "content")
    return Response(orjson.dumps(answer), media_type="application/json")


TOKEN_EMBEDDINGS = model_tool(llama_server.token_embeddings)  # (no guest: its answers are pooled vectors)


def model_view(view: Callable) -> Callable:
    """llama-server's GET /props and /slots: ``view(served, route, defaults)`` for the model
    ``?model=`` names (absent: the first); ``defaults``: the CLI's sampling defaults."""

    async def endpoint(request: Request) -> Response:
        state: State = request.app.state.llama
        model_id = request.query_params.get("model")
        route = _route_for(state, model_id)
        if route is None:
            return error_response(ErrorKind.MODEL_NOT_FOUND, f"the model '{echo(model_id)}' does not exist", "model")
        try:  # (among the guest runs: an on-demand model is loaded first)
            answer = await anyio.to_thread.run_sync(_with_model, state, route.preload, view, route,
                                                    state.settings.info.get("defaults", {}), limiter=state.limiter)
        except HostError as e:  # (an on-demand model that could not be loaded)
            return host_error_response(e)
        if view is llama_server.slots and request.query_params.get("fail_on_no_slot") in ("1", "true") \
                and all(s["is_processing"] for s in answer):
            return error_response(ErrorKind.UNAVAILABLE, "no slot is free")
        return JSONResponse(answer)

    return endpoint


def slots_disabled(request: Request) -> Response:
    return error_response(ErrorKind.NOT_SUPPORTED, "this server's slots endpoint is off (--no-slots)")


# A slot file's name: one path component, no hidden files.
SLOT_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


async def slot_action_route(request: Request) -> Response:
    """``POST /slots/{id}?action=erase|save|restore`` (body ``{"filename"}`` to save or restore,
    a file in --slot-save-path), as llama-server; ``?model=`` picks the model (absent: the first)."""
    state: State = request.app.state.llama
    route = _route_for(state, request.query_params.get("model"))
    if route is None:
        return error_response(ErrorKind.MODEL_NOT_FOUND, f"the model '{echo(request.query_params.get('model'))}' does not exist", "model")
    action = request.query_params.get("action", "")
    if action not in ("erase", "save", "restore"):
        return error_response(ErrorKind.INVALID_REQUEST, f"'action' must be erase, save or restore, not '{echo(action)}'", "action")
    try:
        seq_id = int(request.path_params["id"])
    except ValueError:
        return error_response(ErrorKind.INVALID_REQUEST, f"the slot id must be an integer, not '{echo(request.path_params['id'])}'", "id_slot")
    path = None
    if action in ("save", "restore"):
        if state.settings.slot_save_path is None:
            return error_response(ErrorKind.NOT_SUPPORTED, "saving and restoring slots needs --slot-save-path")
        body = await _request_body(request)
        if isinstance(body, Response):
            return body
        parsed = _parsed(body)
        name = parsed.get("filename") if isinstance(parsed, dict) else None
        if not isinstance(name, str) or not SLOT_FILE.fullmatch(name):
            return error_response(ErrorKind.INVALID_REQUEST, "'filename' must be a file name (letters, digits, '_', '-', '.'; "
                                  "no folders, not starting with '.')", "filename")
        path = str(state.settings.slot_save_path / name)
        if action == "restore" and not os.path.isfile(path):
            return error_response(ErrorKind.NOT_FOUND, f"no slot file '{name}' in --slot-save-path", "filename")
    def act(served) -> dict:  # noqa: ANN001 - a ServedModel
        return served.engine.slot_action(seq_id, action, path)

    try:
        return JSONResponse(await anyio.to_thread.run_sync(_with_model, state, route.preload, act))
    except ValueError as e:  # (no such slot)
        return error_response(ErrorKind.INVALID_REQUEST, str(e), "id_slot")
    except HostError as e:
        return error_response(e.kind, str(e), e.param)


def health_route(request: Request) -> Response:
    """200 once listening (its models are loaded by then); 503 while a loaded model's engine is
    broken (llama.cpp aborted in it, e.g. it lost an RPC worker) or stalled (one step past
    --stall-timeout, e.g. a worker that stopped answering), so that an orchestrator restarts it."""
    registry = request.app.state.llama.registry
    for name in registry.names:
        with registry.peek(name) as served:
            if served is None:
                continue
            if served.engine.broken is not None:
                body = error_body(ErrorKind.ENGINE_BROKEN, f"model '{name}': {served.engine.broken}")
                return JSONResponse({"status": "error", **body}, status_code=503)
            if (stalled := served.engine.stalled) is not None:
                body = error_body(ErrorKind.ENGINE_STALLED, f"model '{name}': one decode step has run for "
                                  f"{stalled:.0f} s (past --stall-timeout); is an RPC worker unreachable?")
                return JSONResponse({"status": "error", **body}, status_code=503)
    return JSONResponse({"status": "ok"})


CHAT_PAGE = Path(__file__).with_name("static") / "index.html"


def chat_page(request: Request) -> Response:
    """The built-in chat page (one self-contained file), when no --web-ui is given."""
    return HTMLResponse(CHAT_PAGE.read_bytes())


def metrics_route(request: Request) -> Response:
    data, content_type = request.app.state.llama.metrics.render()
    return Response(data, media_type=content_type)


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(ErrorKind.NOT_FOUND, f"no route {echo(request.method)} {echo(request.url.path)}")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(ErrorKind.METHOD_NOT_ALLOWED, f"{echo(request.method)} is not allowed on {echo(request.url.path)}")


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug's answer: an OpenAI error object, not Starlette's plain text (the traceback is logged)."""
    return error_response(ErrorKind.INTERNAL, f"internal error: {type(exc).__name__}")


def echo(text: str, limit: int = 100) -> str:
    """A client's value as an error message repeats it: bounded, so a huge path is not sent back."""
    return text if len(text) <= limit else text[:limit] + "…"


# --- middleware -----------------------------------------------------------------------------


class ApiKeyMiddleware:
    """With an API key set, every route that reaches a model (/v1 and the older APIs) needs
    ``Authorization: Bearer <key>`` (the scheme's case is free, as HTTP's) or (Anthropic's SDKs)
    ``x-api-key: <key>``, once; the key is compared in constant time and never logged."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.expected is not None and scope["type"] == "http" and scope["method"] != "OPTIONS"
                and scope["path"].startswith(PROTECTED)
                and not (scope["method"] in ("GET", "HEAD") and PUBLIC_GET.fullmatch(scope["path"]))):
            keys = [v for k, v in scope["headers"] if k == b"authorization"]
            scheme, _, given = (keys[0] if keys else b"").partition(b" ")
            if scheme.lower() != b"bearer":
                given = b""
            if not keys:
                keys = [v for k, v in scope["headers"] if k == b"x-api-key"]
                given = keys[0] if keys else b""
            # (two keys are refused: which one a proxy or the application reads would differ)
            if len(keys) > 1 or not hmac.compare_digest(given.strip(), self.expected):
                message = "invalid API key" if given else "missing API key: send 'Authorization: Bearer <key>'"
                await error_response(ErrorKind.UNAUTHORIZED, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Every HTTP answer carries ``x-request-id`` (the routes that run the guest set it to the
    answer's id; any other answer gets a fresh one) and is logged with it: one INFO line per
    request, but for the probes (/health, /metrics)."""

    QUIET = ("/health", "/metrics")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                found = [v for k, v in headers if k.lower() == REQUEST_ID.encode()]
                request_id = found[0].decode("latin-1") if found else new_request_id()
                if not found:
                    headers.append((REQUEST_ID.encode(), request_id.encode()))
                    message = {**message, "headers": headers}
                if scope["path"] not in self.QUIET:
                    log.info("%s %s %d %s", scope["method"], echo(scope["path"]), message["status"], request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(state: State) -> Starlette:
    routes = [
        Route("/health", health_route, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/info", info_route, methods=["GET"]),
    ]
    # llama-server's router endpoints (before /models/{id}, whose GET they are not)
    routes += [Route(f"/models/{action}", model_action_route, methods=["POST"]) for action in ("load", "unload")]
    for prefix in ("/v1", ""):
        routes += [Route(f"{prefix}/models", models_route, methods=["GET", "POST"]),
                   Route(prefix + "/models/{model:path}", model_route, methods=["GET"])]
    routes += [Route(f"/v1{path}", guest_route(command, f"/v1{path}"), methods=["POST"]) for path, command in OPENAI_ROUTES]
    routes += [Route(path, guest_route(command, path), methods=["POST"]) for path, command in OPENAI_ROUTES
               if path not in ("/embeddings", "/completions")]  # (shared with other APIs: below)
    routes.append(Route("/embeddings", embeddings_route, methods=["POST"]))
    routes.append(Route("/completions", completions_route, methods=["POST"]))
    if state.settings.per_token_embeddings:  # (before the guest's /embedding, which it replaces)
        routes.append(Route(llama_server.NATIVE_EMBEDDINGS.path, TOKEN_EMBEDDINGS, methods=["POST"]))
    routes += [Route(e.path, compat_route(e), methods=[e.method]) for e in compat.ENDPOINTS if e is not LLM_API_EMBEDDINGS]
    routes.append(Route("/check", lambda _r: JSONResponse("Ok"), methods=["GET"]))  # llm-api's status check
    routes.append(Route("/v1/responses/{id}", stored_response_route, methods=["GET"]))
    routes += [Route("/tokenize", model_tool(llama_server.tokenize), methods=["POST"]),
               Route("/detokenize", model_tool(llama_server.detokenize), methods=["POST"]),
               *(Route(path, model_tool(functools.partial(llama_server.rerank, forced=state.settings.reranking)),
                       methods=["POST"]) for path in RERANK_PATHS),
               Route("/props", model_view(llama_server.props), methods=["GET"]),
               # (the sequences of a model's engine; no prompt text is shown)
               Route("/slots", model_view(llama_server.slots) if state.settings.slots
                     else slots_disabled, methods=["GET"]),
               Route("/slots/{id}", slot_action_route if state.settings.slots else slots_disabled, methods=["POST"])]
    web_ui = state.settings.web_ui
    if web_ui is not None:
        routes.append(Mount("/", StaticFiles(directory=web_ui, html=True), name="web-ui"))
    else:
        routes.append(Route("/", chat_page, methods=["GET"]))
    middleware = [Middleware(RequestIdMiddleware), Middleware(ApiKeyMiddleware, api_key=state.settings.api_key)]
    if state.settings.cors_origins:
        # outermost, so preflight and 401s carry the CORS headers too
        # '*' as llama-server has it: any Origin is reflected, credentials allowed (a browser
        # refuses a literal '*' to a request that sends them)
        given = state.settings.cors_origins
        origins = [o for o in given if o not in ("localhost", "*")]
        regex = ".*" if "*" in given else LOCAL_ORIGINS if "localhost" in given else None
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=regex,
                                        allow_credentials=True,
                                        allow_methods=["GET", "POST", "PUT", "OPTIONS"],
                                        allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
                                        expose_headers=[REQUEST_ID]))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)  # cancels what still runs, frees the models

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal_error})
    app.state.llama = state
    return app
