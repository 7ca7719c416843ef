"""Render a chat template twice: in the guest (its Jinja interpreter, under wasmtime) and with
Python's jinja2 set up as Hugging Face's transformers sets it up. Tests compare the two."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import jinja2
import jinja2.ext
import jinja2.sandbox

from llama_host.bridge.runner import Guest, GuestRunner, RunnerConfig
from llama_host.registry import ModelRegistry
from llama_host.vendor import guest_wasm, templates_dir

NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC: the fixed clock of strftime_now on both sides


class TemplateFailed(Exception):
    """The template raised (raise_exception, undefined variable, syntax error, limit)."""


@dataclass
class Rendered:
    text: str | None  # None when the template failed
    error: str | None = None


# --- jinja2 as transformers uses it (transformers/utils/chat_template_utils.py) ---------------


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.fromtimestamp(NOW, tz=datetime.timezone.utc).strftime(fmt)


def jinja2_environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def render_jinja2(source: str, context: dict) -> Rendered:
    try:
        return Rendered(jinja2_environment().from_string(source).render(**context))
    except Exception as e:  # noqa: BLE001 - any failure of the oracle is "it raised"
        return Rendered(None, f"{type(e).__name__}: {e}")


# --- the guest ----------------------------------------------------------------------------------


class GuestRenderer:
    """Runs the guest's `jinja` command: one fresh sandboxed instance per render."""

    def __init__(self) -> None:
        self.runner = GuestRunner(ModelRegistry(), RunnerConfig(templates_dir=templates_dir()))
        self.guest: Guest = self.runner.load(guest_wasm())

    def render(self, source: str, context: dict, now: int = NOW) -> Rendered:
        request = json.dumps({"template": source, "context": context, "now": now}).encode()
        result = self.runner.run(self.guest, argv=["guest", "jinja"], request=request)
        if result.trap is not None:
            raise AssertionError(f"the guest trapped: {result.trap}")
        [frame] = result.emitted
        tag, payload = frame[:1], frame[1:]
        if tag == b"B":
            return Rendered(payload.decode("utf-8"))
        assert tag == b"E", frame
        return Rendered(None, json.loads(payload)["message"])

    def close(self) -> None:
        self.runner.close()


# --- conversations ------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "Hello, who are you?"}
ASSISTANT = {"role": "assistant", "content": "I am an assistant."}

CONVERSATIONS: dict[str, list[dict]] = {
    "user": [USER],
    "system-user": [SYSTEM, USER],
    "multi-turn": [SYSTEM, USER, ASSISTANT, {"role": "user", "content": "Tell me a joke."}],
    "multi-turn-no-system": [USER, ASSISTANT, {"role": "user", "content": "And then?"}],
    "ends-with-assistant": [SYSTEM, USER, ASSISTANT],
    "unicode": [{"role": "user", "content": "Grüße, 世界! 🦙 — «ça va?»\nnew line\ttab"}],
    "empty-content": [SYSTEM, {"role": "user", "content": ""}],
    "whitespace": [{"role": "user", "content": "  padded  \n"}],
    "tool": [
        USER,
        {"role": "assistant", "content": "Let me check the weather."},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "user", "content": "Thanks!"},
    ],
}

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def contexts(messages: list[dict]) -> list[dict]:
    """The template variables HF passes, with and without the generation prompt."""
    return [
        {"messages": messages, "add_generation_prompt": add, **SPECIAL_TOKENS} for add in (True, False)
    ]
