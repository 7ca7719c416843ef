"""``llama-host``: serve GGUF models behind the OpenAI API.

    llama-host --nn-preload default:GGML:GPU:model.gguf default llama-2-chat
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import uvicorn

from llama_host import __version__, modelgen
from llama_host import config as config_file
from llama_host.bridge.runner import GuestLoadError, RunnerConfig
from llama_host.engine.engine import EngineConfig
from llama_host.engine.model import Target
from llama_host.http_protocol import BoundedHttpToolsProtocol
from llama_host.preload import Preload, PreloadError, parse_preloads
from llama_host.registry import LoadError, ModelRegistry
from llama_host.server import Settings, State, create_app
from llama_host.serving import ModelRoute, Serving, TemplateNotFound, template_names
from llama_host.vendor import templates_dir

log = logging.getLogger("llama_host")

DEMO_PRESET = "small"


class UsageError(Exception):
    """A bad option value: printed as one line, exit status 2."""


def parse_socket_addr(value: str, port: int | None) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--socket-addr must be HOST:PORT (e.g. 0.0.0.0:8080), not {value!r}")
    try:
        parsed = int(port_text)
    except ValueError:
        raise UsageError(f"--socket-addr: the port must be a number, not {port_text!r}") from None
    parsed = port if port is not None else parsed
    if not 0 <= parsed <= 65535:
        raise UsageError(f"the port must be between 0 and 65535, not {parsed}")
    return host.strip("[]"), parsed


def demo_preload() -> Preload:
    path = modelgen.build(DEMO_PRESET, cache_dir=modelgen.user_cache_dir())
    log.warning("=" * 72)
    log.warning("no --nn-preload given: serving a DEMO model with RANDOM weights (%s)", path)
    log.warning("its answers are gibberish; pass --nn-preload NAME:GGML:AUTO:model.gguf for a real model")
    log.warning("=" * 72)
    return Preload("default", "GGML", Target.AUTO, path)


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
    model_alias: Annotated[str, typer.Argument(help="The preload to serve by default (its name in --nn-preload).")] = "default",
    prompt_template: Annotated[str, typer.Argument(
        help="Prompt template: a name in templates/ (llama-2-chat, chatml, ...), a .jinja file, or 'auto' "
             "(the chat template inside the GGUF).")] = "auto",
    nn_preload: Annotated[Optional[list[str]], typer.Option(
        help="NAME:ENCODING:TARGET:PATH, e.g. default:GGML:GPU:model.gguf (repeatable; WasmEdge syntax). "
             "Encoding GGML; target CPU, GPU (offload all layers) or AUTO. Without any: a demo model.")] = None,
    socket_addr: Annotated[str, typer.Option(envvar="SOCKET_ADDRESS", help="Address to listen on.")] = "0.0.0.0:8080",
    port: Annotated[Optional[int], typer.Option(help="Port (overrides the port of --socket-addr).")] = None,
    model_name: Annotated[Optional[str], typer.Option(
        help="Public model ids for MODEL_ALIAS, comma-separated (default: the alias), e.g. default,gpt-3.5-turbo.")] = None,
    ctx_size: Annotated[int, typer.Option(help="Tokens of context per request.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Tokens per llama_decode call.")] = 512,
    parallel: Annotated[int, typer.Option(help="Requests generated at once (continuous batching).")] = 4,
    n_predict: Annotated[int, typer.Option(help="Default max tokens per answer (-1: until the context is full).")] = -1,
    n_gpu_layers: Annotated[Optional[int], typer.Option(help="Layers to offload to the GPU (default: by the preload's target).")] = None,
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
    queue_size: Annotated[int, typer.Option(help="Requests that may wait for a free sequence (503 past it).")] = 64,
    log_level: Annotated[str, typer.Option(envvar="LLAMA_LOG", help="debug, info, warning or error.")] = "info",
    seed: Annotated[Optional[int], typer.Option(help="Default sampling seed (requests without 'seed').")] = None,
    reasoning_format: Annotated[str, typer.Option(
        help="deepseek: a <think> block of a chat answer is its reasoning_content; none: it stays in the content.")] = "deepseek",
    config: Annotated[Optional[Path], typer.Option(
        is_eager=True, callback=_load_config, expose_value=False,
        help="A YAML file of option values (these option names, or the keys of llm-api's config.yaml). "
             "The command line wins, then LLAMA_HOST_<OPTION> / LLM_API_<KEY> variables, then the file.")] = None,
) -> None:
    """Serve GGUF models behind the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models)."""
    level = getattr(logging, log_level.upper(), None)
    if log_level.lower() not in ("debug", "info", "warning", "error") or level is None:
        raise UsageError(f"the log level must be debug, info, warning or error, not {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, bound_port = parse_socket_addr(socket_addr, port)
    for name, value in (("--ctx-size", ctx_size), ("--batch-size", batch_size), ("--parallel", parallel),
                        ("--threads", threads), ("--max-body-bytes", max_body_bytes)):
        positive(name, value)
    positive("--queue-size", queue_size, 0)
    for name, seconds in (("--timeout-head", timeout_head), ("--timeout-body", timeout_body),
                          ("--timeout-keep-alive", timeout_keep_alive), ("--shutdown-grace", shutdown_grace)):
        if not 0 < seconds <= 86400:
            raise UsageError(f"{name} must be more than 0 and at most 86400 seconds, not {seconds}")
    positive("--n-predict", n_predict, -1)
    if reasoning_format not in ("deepseek", "none"):
        raise UsageError(f"--reasoning-format must be deepseek or none, not {reasoning_format!r}")
    positive("--n-gpu-layers", n_gpu_layers, 0)
    if web_ui is not None and not web_ui.is_dir():
        raise UsageError(f"--web-ui: {web_ui} is not a folder")
    if slot_save_path is not None and not slot_save_path.is_dir():
        raise UsageError(f"--slot-save-path: {slot_save_path} is not a folder")
    try:
        preloads = parse_preloads(nn_preload) if nn_preload else [demo_preload()]
    except PreloadError as e:
        raise UsageError(str(e)) from None
    names = [p.name for p in preloads]
    if model_alias not in names:
        raise UsageError(f"the model alias {model_alias!r} names no --nn-preload (have: {', '.join(names)})")
    ids = [i.strip() for i in (model_name or model_alias).split(",") if i.strip()]
    try:
        routes = [ModelRoute.create(i, model_alias, prompt_template) for i in ids]
        routes += [ModelRoute.create(p.name, p.name, prompt_template) for p in preloads if p.name != model_alias]
    except TemplateNotFound as e:
        raise UsageError(str(e)) from None

    defaults = {k: v for k, v in {
        "n-predict": n_predict, "temp": temp, "top-p": top_p, "repeat-penalty": repeat_penalty,
        "presence-penalty": presence_penalty, "frequency-penalty": frequency_penalty, "reverse-prompt": reverse_prompt,
        "seed": seed,
    }.items() if v is not None}
    engine_config = EngineConfig(ctx_size=ctx_size, parallel=parallel, batch_size=batch_size, threads=threads,
                                 queue_size=queue_size)

    origins = tuple(o.strip() for o in (cors_origins or "").split(",") if o.strip())
    settings = Settings(api_key=api_key or None, cors_origins=origins, max_body_bytes=max_body_bytes, web_ui=web_ui,
                        worker_threads=parallel + queue_size + 8, slots=slots, slot_save_path=slot_save_path,
                        reranking=reranking,
                        info={"ctx_size": ctx_size, "batch_size": batch_size, "parallel": parallel,
                              "queue_size": queue_size, "prompt_template": prompt_template, "defaults": defaults,
                              "reasoning_format": reasoning_format,
                              "templates": template_names()})
    registry, serving = _load(preloads, engine_config, n_gpu_layers, routes, defaults, reasoning_format)
    state = State(settings, registry, serving)
    log.info("llama-host %s listening on http://%s:%d, serving %s", __version__, host, bound_port,
             ", ".join(r.id for r in routes))
    protocol = BoundedHttpToolsProtocol.with_timeouts(head=timeout_head, body=timeout_body)
    config = uvicorn.Config(create_app(state), host=host, port=bound_port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=shutdown_grace + SHUTDOWN_DRAIN_S,
                            timeout_keep_alive=timeout_keep_alive, access_log=level <= logging.DEBUG, http=protocol)
    _Server(config, state, shutdown_grace).run()  # a port it cannot bind: uvicorn logs why and exits 1


SHUTDOWN_DRAIN_S = 5.0  # after the shutdown grace, how long the ending errors get to reach their clients


class StartError(Exception):
    """The server cannot start (a model does not load): one line, exit status 1."""


def _load(preloads: list[Preload], engine_config: EngineConfig, n_gpu_layers: int | None,
          routes: list[ModelRoute], defaults: dict, reasoning_format: str) -> tuple[ModelRegistry, Serving]:
    """Loads every model before the server listens, so a model that cannot be served stops it
    with one line instead of leaving a server up that answers nothing. SIGTERM or Ctrl-C
    meanwhile stop it (exit 130)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        registry = ModelRegistry.load(preloads, engine_config, n_gpu_layers=n_gpu_layers)
        try:
            serving = Serving(registry, routes, defaults=defaults, runner_config=RunnerConfig(templates_dir=templates_dir()),
                              system_fingerprint=f"llama-host-{__version__}", reasoning_format=reasoning_format)
        except BaseException:
            registry.close()
            raise
    except LoadError as e:
        raise StartError(str(e)) from None
    except GuestLoadError as e:
        raise StartError(f"cannot load the guest: {e}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return registry, serving


class _Server(uvicorn.Server):
    """uvicorn's server with llama-host's shutdown: on SIGTERM/SIGINT it stops accepting, lets
    running requests finish for ``grace`` seconds, then ends the rest with an OpenAI error (a
    stream: an error event and ``[DONE]``) and exits 0 (uvicorn would cancel them mid-body, then
    re-raise the signal and so kill the process)."""

    def __init__(self, config: uvicorn.Config, state: State, grace: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace = grace

    async def shutdown(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
        deadline = asyncio.get_running_loop().call_later(self.grace, self.state.end_streams)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="llama-host", standalone_mode=False, auto_envvar_prefix="LLAMA_HOST")
    except (typer.Abort, KeyboardInterrupt):
        print("llama-host: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UsageError, typer.TyperException) as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"llama-host: error: {message}", file=sys.stderr)
        sys.exit(2)
    except StartError as e:
        print(f"llama-host: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
