"""``llama-host``: serve GGUF models behind the OpenAI API.

    llama-host --nn-preload default:GGML:GPU:model.gguf default llama-2-chat
    llama-host -hf user/repo[:QUANT]        # a model from the Hugging Face hub (or its cache)
    llama-host pull user/repo[:QUANT]       # download it without serving; llama-host list: the cached ones
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
import uvicorn

from llama_host import __version__, modelgen
from llama_host import config as config_file
from llama_host.bridge.runner import GuestLoadError, RunnerConfig
from llama_host.engine import devices, lib
from llama_host.engine.engine import EngineConfig
from llama_host.engine.model import LoadCancelled, Target
from llama_host.http_protocol import BoundedHttpToolsProtocol
from llama_host.preload import Preload, PreloadError, PreloadFetchError, parse_preloads
from llama_host.models_dir import ModelFile, scan
from llama_host.registry import Limits, LoadError, ModelRegistry
from llama_host.server import Settings, State, create_app
from llama_host.serving import ModelRoute, Serving, TemplateNotFound, template_names
from llama_host.vendor import templates_dir

log = logging.getLogger("llama_host")

DEMO_PRESET = "small"


class UsageError(Exception):
    """A bad option value: printed as one line, exit status 2."""


def parse_socket_addr(value: str, port: int | None) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    # (an IPv6 address in brackets, whole: "[::1:80" is no address, not [::1]:80)
    bracketed = host.startswith("[") or host.endswith("]")
    if not sep or not host or (bracketed and not (host.startswith("[") and host.endswith("]") and len(host) > 2)):
        raise UsageError(f"--socket-addr must be HOST:PORT (e.g. 0.0.0.0:8080, [::1]:8080), not {value!r}")
    try:
        parsed = int(port_text)
    except ValueError:
        raise UsageError(f"--socket-addr: the port must be a number, not {port_text!r}") from None
    parsed = port if port is not None else parsed
    if not 0 <= parsed <= 65535:
        raise UsageError(f"the port must be between 0 and 65535, not {parsed}")
    return host.strip("[]"), parsed


POOLING = {"mean": lib.C.LLAMA_POOLING_TYPE_MEAN, "cls": lib.C.LLAMA_POOLING_TYPE_CLS,
           "last": lib.C.LLAMA_POOLING_TYPE_LAST, "none": lib.C.LLAMA_POOLING_TYPE_NONE}  # (--pooling)


MAX_KEEP_ALIVE = 365 * 86400  # (a timer's wait past time_t would end the keep-alive thread)


def _tensor_split(value: str) -> tuple[float, ...]:
    parts = [p.strip() for p in value.replace("/", ",").split(",")]
    try:
        shares = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--tensor-split must be numbers separated by commas (e.g. 3,1), not {value!r}") from None
    if any(not 0 <= x < float("inf") for x in shares) or not any(shares):
        raise UsageError(f"--tensor-split shares must be non-negative and not all 0, not {value!r}")
    if len(shares) > lib.C.llama_max_devices():
        raise UsageError(f"--tensor-split has {len(shares)} shares; llama.cpp splits over at most "
                         f"{lib.C.llama_max_devices()} devices")
    return shares


def _device_view(free_before: dict[str, int]) -> list[dict]:
    """The devices, for /v1/info and the log: memory, and how much of it the preloads took."""
    view = []
    for d in devices.devices():
        before = free_before.get(d.name, d.free_bytes)
        # (a CPU, also a worker's, reports its total as free: what the models took is not known)
        used = None if d.free_bytes == d.total_bytes == before else max(0, before - d.free_bytes)
        view.append({"name": d.name, "description": d.description, "type": d.kind, "total_bytes": d.total_bytes,
                     "free_bytes": d.free_bytes, "used_by_models_bytes": used})
        if d.kind != "cpu":
            log.info("device %s (%s): %.0f MiB of %.0f MiB free%s", d.name, d.description, d.free_bytes / 2**20,
                     d.total_bytes / 2**20, "" if used is None else f", {used / 2**20:.1f} MiB taken by the models")
    return view


def demo_preload() -> Preload:
    path = modelgen.build(DEMO_PRESET, cache_dir=modelgen.user_cache_dir())
    log.warning("=" * 72)
    log.warning("no --nn-preload given: serving a DEMO model with RANDOM weights (%s)", path)
    log.warning("its answers are gibberish; pass --nn-preload NAME:GGML:AUTO:model.gguf for a real model")
    log.warning("=" * 72)
    return Preload("default", "GGML", Target.AUTO, path)


def _on_demand(models_dir: Path | None, preloads: list[Preload]) -> list[ModelFile]:
    """The models of --models-dir, but those a preload of the same name replaces."""
    if models_dir is None:
        return []
    preloaded = {p.name for p in preloads}
    return [m for m in scan(models_dir) if m.name not in preloaded]


def positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, not {value}")


def _load_config(ctx: typer.Context, value: Optional[Path]) -> None:
    """--config: the file's values become the defaults of every other option."""
    if value is None:
        return
    try:
        defaults = config_file.load(value, {p.name for p in ctx.command.params})
    except config_file.ConfigError as e:
        raise UsageError(str(e)) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def serve(
    model_alias: Annotated[str, typer.Argument(
        help="The model to serve by default: its name in --nn-preload (or a --models-dir model's id).")] = "default",
    prompt_template: Annotated[str, typer.Argument(
        help="Prompt template: a name in templates/ (llama-2-chat, chatml, ...), a .jinja file, or 'auto' "
             "(the chat template inside the GGUF).")] = "auto",
    nn_preload: Annotated[Optional[list[str]], typer.Option(
        help="NAME:ENCODING:TARGET:PATH, e.g. default:GGML:GPU:model.gguf (repeatable; WasmEdge syntax). "
             "Encoding GGML; target CPU, GPU (offload all layers) or AUTO. Without any: a demo model.")] = None,
    hf_repo: Annotated[Optional[str], typer.Option(
        "-hf", "--hf-repo", help="user/repo[:QUANT] on the Hugging Face hub (default Q4_K_M, else Q8_0, else the "
                                 "first GGUF): from the cache or downloaded, served as the preload 'default'.")] = None,
    hf_file: Annotated[Optional[str], typer.Option(
        help="With -hf: this file of the repo, not one picked by quantization.")] = None,
    socket_addr: Annotated[str, typer.Option(envvar="SOCKET_ADDRESS", help="Address to listen on.")] = "0.0.0.0:8080",
    port: Annotated[Optional[int], typer.Option(help="Port (overrides the port of --socket-addr).")] = None,
    model_name: Annotated[Optional[str], typer.Option(
        help="Public model ids for MODEL_ALIAS, comma-separated (default: the alias), e.g. default,gpt-3.5-turbo.")] = None,
    models_dir: Annotated[Optional[Path], typer.Option(
        help="A folder of GGUF files (not recursive): each is a model, its id the file name without .gguf "
             "(a split model: without -00001-of-0000N), template auto, loaded by the first request for it.")] = None,
    models_max: Annotated[int, typer.Option(
        help="--models-dir models loaded at once (0: no limit); past it the least recently used idle one is "
             "unloaded. Preloads do not count.")] = 4,
    models_max_memory: Annotated[Optional[int], typer.Option(
        help="MiB that all loaded models may take together (estimated: file size + KV cache), preloads "
             "included; a --models-dir model that does not fit is refused with a 503.")] = None,
    keep_alive: Annotated[float, typer.Option(
        help="Seconds an idle --models-dir model stays loaded (negative: no limit; 0: unloaded as soon as its "
             "last request ends).")] = -1.0,
    ctx_size: Annotated[int, typer.Option(help="Tokens of context per request.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Tokens per llama_decode call.")] = 512,
    parallel: Annotated[int, typer.Option(help="Requests generated at once (continuous batching).")] = 4,
    n_predict: Annotated[int, typer.Option(help="Default max tokens per answer (-1: until the context is full).")] = -1,
    n_gpu_layers: Annotated[Optional[int], typer.Option(help="Layers to offload to the GPU (default: by the preload's target).")] = None,
    rpc: Annotated[Optional[str], typer.Option(
        help="llama.cpp RPC workers (HOST:PORT,...; 'llama-host rpc-server' starts one): their devices hold the "
             "offloaded layers of the GPU and AUTO preloads. No authentication or encryption: a trusted network only.")] = None,
    tensor_split: Annotated[Optional[str], typer.Option(
        help="Shares of the offloaded layers per device, in the order /v1/info lists them (e.g. 3,1). "
             "Default: by free memory.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: llama.cpp's choice).")] = None,
    temp: Annotated[Optional[float], typer.Option(help="Default sampling temperature.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Default top-p.")] = None,
    repeat_penalty: Annotated[Optional[float], typer.Option(help="Default repeat penalty.")] = None,
    presence_penalty: Annotated[Optional[float], typer.Option(help="Default presence penalty.")] = None,
    frequency_penalty: Annotated[Optional[float], typer.Option(help="Default frequency penalty.")] = None,
    reverse_prompt: Annotated[Optional[str], typer.Option(help="A stop string added to every request.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="API_KEY", help="Require 'Authorization: Bearer KEY' on /v1.")] = None,
    cors_origins: Annotated[Optional[str], typer.Option(help="Allowed CORS origins, comma-separated ('*' for any, 'localhost' for this machine's on any port).")] = None,
    web_ui: Annotated[Optional[Path], typer.Option(help="Serve this folder's static files at /.")] = None,
    reranking: Annotated[bool, typer.Option(help="Serve /rerank with the model's classification head even where its GGUF "
                                            "declares no rank pooling (a reranker's always is).")] = False,
    pooling: Annotated[Optional[str], typer.Option(
        help="How embeddings pool a text's tokens: mean, cls, last, or none (llama-server's /embedding then "
             "answers a vector per token). Default: the GGUF's own, else mean.")] = None,
    slots: Annotated[bool, typer.Option("--slots/--no-slots", help="llama-server's /slots endpoints (slot state and actions).")] = True,
    slot_save_path: Annotated[Optional[Path], typer.Option(
        help="A folder for /slots/{id}?action=save|restore files (without it those actions are off).")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 past it).")] = 16 << 20,
    timeout_head: Annotated[float, typer.Option(
        help="Seconds a client may take to send a request line and headers (408 past it; also an idle new connection).")] = 10.0,
    timeout_body: Annotated[float, typer.Option(help="Seconds a client may take to send a request body (408 past it).")] = 60.0,
    timeout_keep_alive: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    shutdown_grace: Annotated[float, typer.Option(
        help="On SIGTERM/Ctrl-C, seconds running requests get to finish before they end with an error.")] = 10.0,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait for a free sequence (503 past it); as many "
                                            "again may wait for the one their id_slot names.")] = 64,
    stall_timeout: Annotated[float, typer.Option(
        help="Seconds one decode step may run before /health reports the model stalled (503; e.g. an RPC worker "
             "that stopped answering without closing its connection). 0: never.")] = 300.0,
    cache_ram: Annotated[int, typer.Option(
        help="MiB of host memory that keep the KV state of conversations whose sequence went to another "
             "request, for their next turn (0: off; -1: no limit but the memory free).")] = 8192,
    log_level: Annotated[str, typer.Option(envvar="LLAMA_LOG", help="debug, info, warning or error.")] = "info",
    seed: Annotated[Optional[int], typer.Option(help="Default sampling seed (requests without 'seed').")] = None,
    reasoning_format: Annotated[str, typer.Option(
        help="deepseek: a <think> block of a chat answer is its reasoning_content; none: it stays in the content.")] = "deepseek",
    config: Annotated[Optional[Path], typer.Option(
        is_eager=True, callback=_load_config, expose_value=False,
        help="A YAML file of option values (these option names, or the keys of llm-api's config.yaml). "
             "The command line wins, then LLAMA_HOST_<OPTION> / LLM_API_<KEY> variables, then the file.")] = None,
) -> None:
    """Serve GGUF models behind the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models).

    Also: 'llama-host pull REPO[:QUANT]' (download from the Hugging Face hub), 'llama-host list' (cached)."""
    level = getattr(logging, log_level.upper(), None)
    if log_level.lower() not in ("debug", "info", "warning", "error") or level is None:
        raise UsageError(f"the log level must be debug, info, warning or error, not {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:  # huggingface_hub's client logs each request: at debug only, like the access log
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    host, bound_port = parse_socket_addr(socket_addr, port)
    for name, value in (("--ctx-size", ctx_size), ("--batch-size", batch_size), ("--parallel", parallel),
                        ("--threads", threads), ("--max-body-bytes", max_body_bytes)):
        positive(name, value)
    positive("--queue-size", queue_size, 0)
    positive("--cache-ram", cache_ram, -1)
    for name, seconds in (("--timeout-head", timeout_head), ("--timeout-body", timeout_body),
                          ("--timeout-keep-alive", timeout_keep_alive), ("--shutdown-grace", shutdown_grace)):
        if not 0 < seconds <= 86400:
            raise UsageError(f"{name} must be more than 0 and at most 86400 seconds, not {seconds}")
    if not 0 <= stall_timeout <= 86400:
        raise UsageError(f"--stall-timeout must be 0 (off) to 86400 seconds, not {stall_timeout}")
    # (NaN and infinity would reach every request's sampling and the guest's JSON config)
    for name, value in (("--temp", temp), ("--top-p", top_p), ("--repeat-penalty", repeat_penalty),
                        ("--presence-penalty", presence_penalty), ("--frequency-penalty", frequency_penalty)):
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, not {value}")
    if not (keep_alive < 0 or keep_alive <= MAX_KEEP_ALIVE):  # (NaN fails both)
        raise UsageError(f"--keep-alive must be negative (no limit) or 0 to {MAX_KEEP_ALIVE} seconds, not {keep_alive}")
    positive("--n-predict", n_predict, -1)
    if reasoning_format not in ("deepseek", "none"):
        raise UsageError(f"--reasoning-format must be deepseek or none, not {reasoning_format!r}")
    positive("--n-gpu-layers", n_gpu_layers, 0)
    positive("--models-max", models_max, 0)
    positive("--models-max-memory", models_max_memory)
    if models_dir is not None and not models_dir.is_dir():
        raise UsageError(f"--models-dir: {models_dir} is not a folder")
    try:
        endpoints = [devices.parse_endpoint(e) for e in (rpc or "").split(",") if e.strip()]
    except devices.RpcError as e:
        raise UsageError(str(e)) from None
    split = _tensor_split(tensor_split) if tensor_split is not None else None
    if pooling is not None and pooling not in POOLING:
        raise UsageError(f"--pooling must be {', '.join(POOLING)}, not {pooling!r}")
    if web_ui is not None and not web_ui.is_dir():
        raise UsageError(f"--web-ui: {web_ui} is not a folder")
    if slot_save_path is not None and not slot_save_path.is_dir():
        raise UsageError(f"--slot-save-path: {slot_save_path} is not a folder")
    try:
        entries = [*_hf_preloads(hf_repo, hf_file), *(nn_preload or [])]
        preloads = parse_preloads(entries) if entries else [] if models_dir is not None else [demo_preload()]
    except PreloadFetchError as e:
        raise StartError(str(e)) from None
    except PreloadError as e:
        raise UsageError(str(e)) from None
    on_demand = _on_demand(models_dir, preloads)
    names = [p.name for p in preloads] + [m.name for m in on_demand]
    if not names:
        raise UsageError(f"--models-dir {models_dir} has no .gguf file, and no --nn-preload is given")
    if model_alias == "default" and not preloads and model_alias not in names:
        model_alias = names[0]  # (--models-dir alone: its first model answers requests that name none)
    if model_alias not in names:
        also = " or --models-dir file" if models_dir is not None else ""
        raise UsageError(f"the model alias {model_alias!r} names no --nn-preload{also} (have: {', '.join(names)})")
    ids = [i.strip() for i in (model_name or model_alias).split(",") if i.strip()]
    try:
        routes = [ModelRoute.create(i, model_alias, prompt_template) for i in ids]
        routes += [ModelRoute.create(p.name, p.name, prompt_template) for p in preloads if p.name != model_alias]
    except TemplateNotFound as e:
        raise UsageError(str(e)) from None
    routes += [ModelRoute(m.name, m.name) for m in on_demand if m.name != model_alias and m.name not in ids]
    limits = Limits(max_loaded=models_max, memory_bytes=None if models_max_memory is None else models_max_memory << 20,
                    keep_alive=keep_alive)

    defaults = {k: v for k, v in {
        "n-predict": n_predict, "temp": temp, "top-p": top_p, "repeat-penalty": repeat_penalty,
        "presence-penalty": presence_penalty, "frequency-penalty": frequency_penalty, "reverse-prompt": reverse_prompt,
        "seed": seed,
    }.items() if v is not None}
    engine_config = EngineConfig(ctx_size=ctx_size, parallel=parallel, batch_size=batch_size, threads=threads,
                                 queue_size=queue_size, cache_bytes=(1 << 62) if cache_ram < 0 else cache_ram << 20,
                                 stall_seconds=stall_timeout)

    origins = tuple(o.strip() for o in (cors_origins or "").split(",") if o.strip())
    settings = Settings(api_key=api_key or None, cors_origins=origins, max_body_bytes=max_body_bytes, web_ui=web_ui,
                        worker_threads=parallel + 2 * queue_size + 8, slots=slots, slot_save_path=slot_save_path,
                        reranking=reranking, per_token_embeddings=pooling == "none",
                        info={"ctx_size": ctx_size, "batch_size": batch_size, "parallel": parallel,
                              "queue_size": queue_size, "prompt_template": prompt_template, "defaults": defaults,
                              "reasoning_format": reasoning_format,
                              "templates": template_names()})
    if endpoints:
        try:
            devices.check_workers(endpoints)
            devices.add_workers(endpoints)
        except devices.RpcError as e:
            raise StartError(str(e)) from None
    free_before = {d.name: d.free_bytes for d in devices.devices()}
    stop = _stop_on_signals()
    registry, serving = _load(preloads, engine_config, n_gpu_layers, routes, defaults, reasoning_format,
                              POOLING.get(pooling), on_demand=on_demand, limits=limits, tensor_split=split, stop=stop)
    settings = dataclasses.replace(settings, devices=_device_view(free_before))
    state = State(settings, registry, serving)
    log.info("llama-host %s listening on http://%s:%d, serving %s", __version__, host, bound_port,
             ", ".join(r.id for r in routes))
    protocol = BoundedHttpToolsProtocol.with_timeouts(head=timeout_head, body=timeout_body)
    config = uvicorn.Config(create_app(state), host=host, port=bound_port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=shutdown_grace + SHUTDOWN_DRAIN_S,
                            timeout_keep_alive=timeout_keep_alive, access_log=level <= logging.DEBUG, http=protocol)
    _Server(config, state, shutdown_grace, stop).run()  # a port it cannot bind: uvicorn logs why and exits 1


SHUTDOWN_DRAIN_S = 5.0  # after the shutdown grace, how long the ending errors get to reach their clients


class StartError(Exception):
    """The server cannot start (a model does not load): one line, exit status 1."""


def _stop_on_signals() -> threading.Event:
    """From now until the server takes over its signals, SIGTERM and Ctrl-C only set the event
    returned: the load checks it between steps (and llama.cpp at each progress report of a model
    load), then stops with exit 130. (Raising KeyboardInterrupt from the handler is not safe here:
    it can land in llama.cpp's log callback, where ctypes swallows it, and the load would go on
    into a server nobody has stopped.)"""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    return stop


def _load(preloads: list[Preload], engine_config: EngineConfig, n_gpu_layers: int | None,
          routes: list[ModelRoute], defaults: dict, reasoning_format: str,
          pooling: int | None = None, *, on_demand: list[ModelFile] | None = None, limits: Limits = Limits(),
          tensor_split: tuple[float, ...] | None = None, stop: threading.Event) -> tuple[ModelRegistry, Serving]:
    """Loads every model before the server listens, so a model that cannot be served stops it
    with one line instead of leaving a server up that answers nothing. ``stop`` set meanwhile
    frees what was loaded and raises KeyboardInterrupt."""
    try:
        registry = ModelRegistry.load(preloads, engine_config, n_gpu_layers=n_gpu_layers, pooling=pooling,
                                      tensor_split=tensor_split, on_demand=on_demand or (), limits=limits,
                                      cancel=stop)
    except LoadError as e:
        raise StartError(str(e)) from None
    except LoadCancelled:
        raise KeyboardInterrupt from None
    try:
        if not stop.is_set():
            serving = Serving(registry, routes, defaults=defaults, runner_config=RunnerConfig(templates_dir=templates_dir()),
                              system_fingerprint=f"llama-host-{__version__}", reasoning_format=reasoning_format)
    except GuestLoadError as e:
        registry.close()
        raise StartError(f"cannot load the guest: {e}") from None
    except BaseException:
        registry.close()
        raise
    if stop.is_set():
        registry.close()
        raise KeyboardInterrupt
    return registry, serving


class _Server(uvicorn.Server):
    """uvicorn's server with llama-host's shutdown: on SIGTERM/SIGINT it stops accepting, lets
    running requests finish for ``grace`` seconds, then ends the rest with an OpenAI error (a
    stream: an error event and ``[DONE]``) and exits 0 (uvicorn would cancel them mid-body, then
    re-raise the signal and so kill the process)."""

    def __init__(self, config: uvicorn.Config, state: State, grace: float, stop: threading.Event) -> None:
        super().__init__(config)
        self.state = state
        self.grace = grace
        self.stop = stop  # a signal that came after the load: it stops the server as soon as it is up

    async def shutdown(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
        deadline = asyncio.get_running_loop().call_later(self.grace, self.state.end_streams)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.stop.is_set():
            self.handle_exit(signal.SIGTERM, None)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _hf_preloads(repo: str | None, file: str | None) -> list[str]:
    """-hf/--hf-file: the hub's model as the preload 'default'."""
    if repo is None:
        if file is not None:
            raise UsageError("--hf-file needs -hf/--hf-repo (the repo to take it from)")
        return []
    return [f"default:GGML:AUTO:{_hub_path(repo, file)}"]


def _hub_path(repo: str, file: str | None, refresh: bool = False) -> Path:
    from llama_host import hub  # (here: importing huggingface_hub takes a while, and most models are local)

    try:
        spec = hub.parse_repo(repo, file)
    except hub.SpecError as e:
        raise UsageError(str(e)) from None
    try:
        return hub.resolve(spec, refresh=refresh)
    except hub.HubError as e:
        raise StartError(str(e)) from None


def pull(
    repo: Annotated[str, typer.Argument(
        help="user/repo[:QUANT] or user/repo@REVISION[:QUANT]; default quant Q4_K_M, else Q8_0, else the first GGUF.")],
    hf_file: Annotated[Optional[str], typer.Option(
        help="This file of the repo, not one picked by quantization.")] = None,
) -> None:
    """Download a GGUF model from the Hugging Face hub into its cache (a cached one: check it is the newest)
    and print its path. HF_TOKEN: private repos; HF_HOME: the cache's folder; HF_HUB_OFFLINE=1: the cache only."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # llama-host's progress lines on stderr, not every HTTP request
    print(_hub_path(repo, hf_file, refresh=True))


def list_cached() -> None:
    """The GGUF files in the Hugging Face hub cache: repo, file, size, path."""
    from llama_host import hub

    rows = [(g.repo_id, g.file, _size(g.size), str(g.path)) for g in hub.cached_ggufs()]
    if not rows:
        print(f"no GGUF files in {hub.cache_root()}")
        return
    rows.insert(0, ("REPO", "FILE", "SIZE", "PATH"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), row[3], sep="  ")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def rpc_server(
    host: Annotated[str, typer.Option(help="Address to listen on. The RPC protocol has no authentication or "
                                           "encryption: a trusted network only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50052,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: the machine's cores).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="A folder where the worker caches tensors it was sent "
                                                       "(later loads of the same model send less).")] = None,
) -> None:
    """A worker for 'llama-host --rpc HOST:PORT': llama.cpp's RPC server on this machine's GPUs (else
    its CPU), built from the same llama.cpp source. Stops on Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    positive("--threads", threads)
    if cache is not None and not cache.is_dir():
        raise UsageError(f"--cache: {cache} is not a folder")
    try:
        serve_rpc = devices.worker(host, port, threads or os.cpu_count() or 1, cache)
    except devices.RpcError as e:
        raise StartError(str(e)) from None
    worker = threading.Thread(target=serve_rpc, daemon=True, name="rpc-server")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    worker.start()  # (llama.cpp's loop never returns: it ends with the process)
    while worker.is_alive():
        worker.join(0.5)
    raise StartError(f"the RPC server on {host}:{port} stopped (the log above says why)")


SUBCOMMANDS = {"pull": pull, "list": list_cached, "rpc-server": rpc_server}  # anything else is serve's


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    name = args[0] if args and args[0] in SUBCOMMANDS else None
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(SUBCOMMANDS[name] if name else serve)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args[1:] if name else args, prog_name=" ".join(filter(None, ("llama-host", name))),
                            standalone_mode=False, auto_envvar_prefix="LLAMA_HOST")
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except (UsageError, typer.TyperException) as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"llama-host: error: {message}", file=sys.stderr)
        sys.exit(2)
    except StartError as e:
        print(f"llama-host: error: {e}", file=sys.stderr)
        sys.exit(1)
    if code == 130:  # (typer returns a KeyboardInterrupt as the exit status 130)
        print("llama-host: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
