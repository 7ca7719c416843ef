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


class _AssistantTracker(jinja2.ext.Extension):
    """transformers' AssistantTracker as far as rendering goes: `{% generation %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_generation_support")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def jinja2_environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_AssistantTracker, jinja2.ext.loopcontrols]
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


def compile_jinja2(source: str):
    """A renderer for one template compiled once (the corpus test renders each many times):
    context -> Rendered. A template that does not compile fails every render."""
    try:
        template = jinja2_environment().from_string(source)
    except Exception as e:  # noqa: BLE001
        failure = Rendered(None, f"{type(e).__name__}: {e}")
        return lambda context: failure

    def render(context: dict) -> Rendered:
        try:
            return Rendered(template.render(**context))
        except Exception as e:  # noqa: BLE001
            return Rendered(None, f"{type(e).__name__}: {e}")

    return render


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

# --- tool use, as HF passes it: OpenAI function tools, tool_calls with dict arguments -----------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit"},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "description": "How many results"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

WEATHER_CALL = {
    "id": "call12345",  # 9 alphanumerics: Mistral's templates insist
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}
SEARCH_CALL = {
    "id": "call67890",
    "type": "function",
    "function": {"name": "search", "arguments": {"query": "llama \"facts\"", "limit": 3, "tags": ["a", "b"]}},
}

TOOL_CONVERSATIONS: dict[str, list[dict]] = {
    "tools-offered": [SYSTEM, {"role": "user", "content": "What's the weather in Paris?"}],
    "tool-call": [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21}'},
    ],
    "tool-round-trip": [
        {"role": "user", "content": "Weather in Paris, and search llamas."},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, SEARCH_CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": "call67890", "name": "search", "content": "Llamas are camelids."},
        {"role": "assistant", "content": "It is 21 degrees; llamas are camelids."},
        {"role": "user", "content": "Thanks!"},
    ],
}


def contexts(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """The template variables HF passes, with and without the generation prompt (and `tools`
    when given)."""
    extra = {"tools": tools} if tools is not None else {}
    return [
        {"messages": messages, "add_generation_prompt": add, **SPECIAL_TOKENS, **extra} for add in (True, False)
    ]


def all_contexts() -> list[tuple[str, dict]]:
    """(label, context) for every conversation: the plain ones, and the tool ones with TOOLS."""
    out = []
    for name, messages in CONVERSATIONS.items():
        out += [(f"{name}/{i}", c) for i, c in enumerate(contexts(messages))]
    for name, messages in TOOL_CONVERSATIONS.items():
        out += [(f"{name}/{i}", c) for i, c in enumerate(contexts(messages, TOOLS))]
    return out
