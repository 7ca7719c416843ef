"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request becomes a chat completion (``system`` -> a system message, ``tool_use`` blocks -> an
assistant's ``tool_calls``, ``tool_result`` blocks -> ``tool`` messages, ``input_schema`` tools ->
function tools, ``thinking`` -> the template's ``enable_thinking``); the answer's reasoning, text
and calls become ``thinking``, ``text`` and ``tool_use`` blocks, streamed as Anthropic's events.
Errors take Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from llama_host.compat import CompatError, Endpoint, cached_tokens, field, object_body, streaming, typed_event

# Anthropic's error type for each HTTP status its API uses (anything else: api_error).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def error(status: int, body: dict) -> dict:
    message = (body.get("error") or {}).get("message", "")
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


# --- request --------------------------------------------------------------------------------


def _text_of(value: Any, where: str) -> str:
    """Text content: a string, or text blocks joined."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise CompatError(where, f"'{where}' must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise CompatError(f"{where}[{i}]", f"'{where}[{i}]' must be a text block")
        texts.append(block["text"])
    return "\n".join(texts)


def _message(m: Any, i: int) -> list[dict]:
    """One Anthropic message as chat messages: a user's tool results become ``tool`` messages."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise CompatError(where, f"'{where}' must be an object")
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise CompatError(f"{where}.role", f"'{where}.role' must be user or assistant")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise CompatError(f"{where}.content", f"'{where}.content' must be a string or a list of blocks")
    texts, calls, results = [], [], []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise CompatError(at, f"'{at}' needs an 'id' and a 'name'")
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise CompatError(f"{at}.input", f"'{at}.input' must be an object")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(arguments).decode()}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise CompatError(f"{at}.tool_use_id", f"'{at}.tool_use_id' must be a string")
            text = _text_of(block.get("content", ""), f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier thinking: templates drop it from the history
        elif kind in ("image", "document"):
            raise CompatError(f"{at}.type", f"'{kind}' blocks are not supported: the models served here read text")
        else:
            raise CompatError(f"{at}.type", f"'{at}' is not a block a {role} message can hold")
    out = results  # the results answer the previous turn's calls, before anything new
    if calls:
        out.append({"role": "assistant", "content": "\n".join(texts) or None, "tool_calls": calls})
    elif texts or not results:
        out.append({"role": role, "content": "\n".join(texts)})
    return out


def _tools(value: list) -> list[dict]:
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise CompatError(f"tools[{i}]", f"'tools[{i}]' must be an object")
        if tool.get("type") not in (None, "custom"):
            raise CompatError(f"tools[{i}].type", f"'{tool['type']}' is one of Anthropic's server tools; only custom "
                              "tools (name, description, input_schema) run here")
        # (a description Anthropic leaves optional; chat templates read it unguarded)
        function = {"name": tool.get("name"), "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema", {"type": "object"})}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: dict, chat: dict) -> None:
    kind = value.get("type")
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": value.get("name")}}
    elif kind in ("auto", "any", "none"):
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise CompatError("tool_choice.type", "'tool_choice.type' must be auto, any, tool or none")
    if value.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def chat_request(body: Any) -> dict:
    body = object_body(body)
    max_tokens = field(body, "max_tokens", int, required=True)
    if max_tokens < 1:
        raise CompatError("max_tokens", "'max_tokens' must be at least 1")
    return {**_conversation(body), "max_tokens": max_tokens}


def _conversation(body: dict) -> dict:
    """What the prompt is made of, shared by messages and count_tokens."""
    messages = field(body, "messages", list, required=True)
    if not messages:
        raise CompatError("messages", "'messages' must hold at least one message")
    chat: dict = {"messages": []}
    if (model := field(body, "model", str)) is not None:  # (absent: the first model)
        chat["model"] = model
    if body.get("system") is not None:
        chat["messages"].append({"role": "system", "content": _text_of(body["system"], "system")})
    for i, m in enumerate(messages):
        chat["messages"] += _message(m, i)
    if (tools := field(body, "tools", list)) is not None:
        chat["tools"] = _tools(tools)
    if (choice := field(body, "tool_choice", dict)) is not None:
        _tool_choice(choice, chat)
    thinking = field(body, "thinking", dict)
    if thinking is not None:  # absent: the template's default
        kind = thinking.get("type")
        if kind not in ("enabled", "adaptive", "between_tools", "disabled"):
            raise CompatError("thinking.type", "'thinking.type' must be enabled, adaptive or disabled")
        chat["chat_template_kwargs"] = {"enable_thinking": kind != "disabled"}
    output = field(body, "output_config", dict, {})
    if (fmt := field(output, "format", dict)) is not None:  # structured outputs
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise CompatError("output_config.format", "'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if (effort := field(output, "effort", str)) is not None:  # (templates know low, medium and high)
        chat["reasoning_effort"] = {"xhigh": "high", "max": "high"}.get(effort, effort)
    for name in ("temperature", "top_p"):
        if (value := field(body, name, (int, float))) is not None:
            chat[name] = value
    if (top_k := field(body, "top_k", int)) is not None:
        chat["top_k"] = top_k
    if (seed := field(body, "seed", int)) is not None:  # (not Anthropic's: llama-host's, for reproducible runs)
        chat["seed"] = seed
    if (stop := field(body, "stop_sequences", list)) is not None:
        if not all(isinstance(s, str) for s in stop):
            raise CompatError("stop_sequences", "'stop_sequences' must be a list of strings")
        chat["stop"] = stop
    chat.update(streaming(body))
    if "stream_options" in chat:  # (message_start tells the input tokens: every chunk says them)
        chat["stream_options"]["continuous_usage_stats"] = True
    return chat


def count_request(body: Any) -> dict:
    return _conversation(object_body(body))


# --- answer ---------------------------------------------------------------------------------


def _usage(usage: dict | None) -> dict:
    usage = usage or {}
    cached = cached_tokens(usage)
    return {"input_tokens": usage.get("prompt_tokens", 0) - cached, "output_tokens": usage.get("completion_tokens", 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _input(arguments: str) -> dict:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _stop(choice: dict) -> tuple[str, str | None]:
    """stop_reason and stop_sequence (the guest's ``stop_word``: the stop string that ended the text)."""
    if choice.get("finish_reason") == "stop" and isinstance(choice.get("stop_word"), str):
        return "stop_sequence", choice["stop_word"]
    return STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), None


def response(chat: dict, answer: dict, _seconds: float) -> dict:
    choice = answer["choices"][0]
    message = choice["message"]
    content: list[dict] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _input(call["function"].get("arguments"))})
    stop_reason, stop_sequence = _stop(choice)
    return {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant", "model": answer["model"],
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage(answer.get("usage"))}


def count_response(_chat: dict, answer: dict, _seconds: float) -> dict:
    return {"input_tokens": answer["prompt_tokens"]}



class MessageStream:
    """Anthropic's events from the chat chunks: ``message_start`` and a ``ping``, then per block
    ``content_block_start``, its deltas and ``content_block_stop``, then ``message_delta`` (the
    stop reason and usage) and ``message_stop``."""

    def __init__(self, chat: dict) -> None:
        self.chat = chat
        self.started = False
        self.index = -1
        self.open: str | None = None  # the kind of the block being streamed
        self.usage: dict | None = None
        self.choice: dict = {}

    def event(self, payload: bytes) -> bytes:
        if payload == b"[DONE]":
            return self._finish()
        chunk = orjson.loads(payload)
        out = []
        if not self.started:
            self.started = True
            message = {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
                       "model": chunk.get("model", self.chat.get("model", "")), "content": [], "stop_reason": None,
                       "stop_sequence": None, "usage": _usage(chunk.get("usage"))}
            out += [typed_event("message_start", {"message": message}), typed_event("ping", {})]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out.append(self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                                       {"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
            if delta.get("content"):
                out.append(self._block("text", {"type": "text", "text": ""},
                                       {"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if call.get("id"):
                    out.append(self._close())
                    out.append(self._start("tool_use", {"type": "tool_use", "id": call["id"],
                                                        "name": function.get("name", ""), "input": {}}))
                if function.get("arguments") and self.open == "tool_use":
                    out.append(typed_event("content_block_delta", {"index": self.index, "delta": {
                        "type": "input_json_delta", "partial_json": function["arguments"]}}))
            if choice.get("finish_reason"):
                self.choice = choice
        return b"".join(out)

    def _start(self, kind: str, block: dict) -> bytes:
        self.index += 1
        self.open = kind
        return typed_event("content_block_start", {"index": self.index, "content_block": block})

    def _block(self, kind: str, block: dict, delta: dict) -> bytes:
        out = b""
        if self.open != kind:
            out += self._close() + self._start(kind, block)
        return out + typed_event("content_block_delta", {"index": self.index, "delta": delta})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return typed_event("content_block_stop", {"index": self.index})

    def _finish(self) -> bytes:
        stop_reason, stop_sequence = _stop(self.choice)
        return self._close() + typed_event("message_delta", {
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": _usage(self.usage),
        }) + typed_event("message_stop", {})

    def error(self, body: dict) -> bytes:
        error_type = "overloaded_error" if (body.get("error") or {}).get("type") == "server_error" else "api_error"
        return typed_event("error", {"error": {"type": error_type, "message": (body.get("error") or {}).get("message", "")}})


ENDPOINTS = [
    Endpoint("/v1/messages", "POST", "chat", chat_request, response, stream=MessageStream, error=error),
    Endpoint("/v1/messages/count_tokens", "POST", "apply-template", count_request, count_response, error=error,
             count_tokens=True),
]
