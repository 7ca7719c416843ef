"""Answers OpenAI requests by running the guest: one fresh sandboxed instance per request.

The guest does the protocol work (validation, templates, response shapes); this module gives it
the request, collects the frames it emits (guest/ABI.md: ``B`` body, ``S`` stream event, ``E``
error) and turns them into an HTTP-ready :class:`Reply`. It knows nothing of HTTP frameworks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from llama_host import vendor
from llama_host.bridge.runner import Guest, GuestRunner, RunnerConfig
from llama_host.engine import Cancellation
from llama_host.errors import ErrorKind, error_body
from llama_host.registry import ModelRegistry
from llama_host.resource import Resource

log = logging.getLogger(__name__)

COMMANDS = ("chat", "complete", "embed", "apply-template")


class TemplateNotFound(ValueError):
    """A prompt template that is neither a name in templates/, a .jinja file, nor ``auto``."""


@dataclasses.dataclass(frozen=True)
class ModelRoute:
    """A public model id, the preload it is served by, and its prompt template."""

    id: str
    preload: str
    template: str = "auto"  # a name in templates/, or "auto" (the GGUF's own)
    template_source: str | None = None  # the text of a template given as a file path

    @classmethod
    def create(cls, id: str, preload: str, template: str, templates_dir: Path | None = None) -> ModelRoute:
        """``template``: ``auto``, a name in templates/ (``llama-2-chat``) or a path to a ``.jinja`` file."""
        if template == "auto":
            return cls(id, preload)
        if "/" not in template and (templates_dir or vendor.templates_dir()).joinpath(f"{template}.jinja").is_file():
            return cls(id, preload, template)
        path = Path(template)
        if path.suffix == ".jinja" and path.is_file():
            return cls(id, preload, path.stem, path.read_text(encoding="utf-8"))
        raise TemplateNotFound(
            f"unknown prompt template {template!r}: use auto, a .jinja file, or one of {', '.join(template_names(templates_dir))}"
        )


def template_names(templates_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (templates_dir or vendor.templates_dir()).glob("*.jinja"))


@dataclasses.dataclass(frozen=True)
class GuestError:
    kind: ErrorKind
    message: str
    param: str | None = None

    def body(self) -> dict:
        return error_body(self.kind, self.message, self.param)


@dataclasses.dataclass
class Reply:
    """A finished request. ``error`` before any event: an error response (``status``);
    ``error`` after events: the stream ended with it."""

    status: int = 200
    body: bytes | None = None  # the JSON body of a non-streamed answer or of an error
    events: list[bytes] = dataclasses.field(default_factory=list)  # SSE data, when not passed on
    streamed: bool = False
    error: GuestError | None = None


class Serving(Resource):
    """Runs guest requests against the models of a registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        routes: Sequence[ModelRoute],
        *,
        defaults: dict | None = None,
        runner_config: RunnerConfig | None = None,
        system_fingerprint: str = "llama-host",
        reasoning_format: str = "deepseek",
        wasm: Path | None = None,
    ) -> None:
        self.routes = list(routes)
        config = runner_config or RunnerConfig(templates_dir=vendor.templates_dir())
        self.runner = GuestRunner(registry, config)
        self.guest: Guest = self.runner.load(wasm or vendor.guest_wasm())
        self.config = json.dumps(
            {
                "models": [dataclasses.asdict(r) for r in self.routes],
                "defaults": defaults or {},
                "system_fingerprint": system_fingerprint,
                "reasoning_format": reasoning_format,
            }
        )

    def call(self, command: str, body: bytes, on_event: Callable[[bytes], bool | None] | None = None,
             cancel: Cancellation | None = None) -> Reply:
        """Runs one request (blocking: call from a worker thread). Stream events go to
        ``on_event`` as they come (or collect in ``Reply.events``); ``on_event`` returning False
        means nobody reads any more: the guest stops and its sequence is cancelled. Setting
        ``cancel`` (from any thread) cancels the request's generation, streamed or not."""
        if command not in COMMANDS:
            raise ValueError(f"unknown guest command {command!r}")
        reply = Reply()

        def frame(data: bytes) -> bool | None:
            tag, payload = data[:1], data[1:]
            if reply.error is not None:
                log.warning("the guest emitted after its error frame; ignored")
            elif tag == b"B":
                reply.body = payload
            elif tag == b"S":
                reply.streamed = True
                if on_event is not None:
                    return on_event(payload)
                reply.events.append(payload)
            elif tag == b"E":
                reply.error = _guest_error(payload)
            else:
                reply.error = GuestError(ErrorKind.INTERNAL, f"the guest emitted an unknown frame {tag!r}")

        result = self.runner.run(self.guest, argv=["guest", command, self.config], request=body, on_emit=frame,
                                 cancel=cancel)
        if result.trap is not None or result.exit_code != 0:
            why = result.trap or f"exit code {result.exit_code}"
            reply.error = reply.error or GuestError(ErrorKind.INTERNAL, f"the request failed inside the guest: {why}")
        elif reply.error is None and reply.body is None and not reply.streamed:
            reply.error = GuestError(ErrorKind.INTERNAL, "the guest answered nothing")
        elif reply.error is not None and reply.error.kind is ErrorKind.INTERNAL and result.failure is not None:
            failure = result.failure  # (the kind the guest could not be told: e.g. a broken engine's 503)
            reply.error = GuestError(failure.kind, str(failure), failure.param)
        if reply.error is not None and not reply.streamed:
            reply.status = reply.error.kind.http_status
            reply.body = json.dumps(reply.error.body()).encode()
        return reply

    def close(self) -> None:
        self.runner.close()


def _guest_error(payload: bytes) -> GuestError:
    try:
        data = json.loads(payload)
        return GuestError(ErrorKind[data["kind"].upper()], data["message"], data.get("param"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return GuestError(ErrorKind.INTERNAL, "the guest emitted a malformed error frame")
