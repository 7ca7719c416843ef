"""OpenAI's Responses API: ``POST /v1/responses`` (and ``GET /v1/responses/{id}``).

A request becomes a chat completion (input items -> messages, function tools flattened back into
chat's shape, ``text.format`` -> ``response_format``); the answer's reasoning, text and tool calls
become output items, streamed as Responses' typed events. ``store`` (OpenAI's default: true)
keeps a response in memory, the last ``STORE_ENTRIES`` and at most ``STORE_BYTES`` of them, so that
``previous_response_id`` continues its conversation; they are gone when the server restarts.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Any

import orjson

from llama_host.compat import CompatError, Endpoint, cached_tokens, field, input_tokens, object_body, streaming, typed_event

STORE_ENTRIES = 1024
STORE_BYTES = 64 << 20

# Fields of the API that a local server cannot honour: a 400, never accepted and ignored.
UNSUPPORTED = {
    "background": "background responses are not supported; leave 'background' false",
    "conversation": "conversations are not stored here; send the history in 'input' or use 'previous_response_id'",
    "prompt": "stored prompt templates are not supported; send 'input' and 'instructions'",
}


class Store:
    """Stored responses: id -> (the response object, the chat messages of its conversation)."""

    def __init__(self, entries: int = STORE_ENTRIES, max_bytes: int = STORE_BYTES) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._items: collections.OrderedDict[str, tuple[dict, list[dict], int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response: dict, messages: list[dict]) -> None:
        size = len(orjson.dumps(messages)) + len(orjson.dumps(response))
        if size > self.max_bytes:
            return
        with self._lock:
            self._items[response["id"]] = (response, messages, size)
            self._bytes += size
            while len(self._items) > self.entries or self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get(self, response_id: str) -> tuple[dict, list[dict]] | None:
        with self._lock:
            found = self._items.get(response_id)
        return None if found is None else found[:2]


STORE = Store()


MAX_METADATA = 16  # OpenAI's bounds: pairs, key characters, value characters
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512


def _metadata(body: dict) -> dict[str, str]:
    """``metadata``: up to 16 string pairs, as OpenAI takes them (it is kept with the answer)."""
    metadata = field(body, "metadata", dict, {})
    if len(metadata) > MAX_METADATA or not all(
            isinstance(v, str) and len(k) <= MAX_METADATA_KEY and len(v) <= MAX_METADATA_VALUE for k, v in metadata.items()):
        raise CompatError("metadata", f"'metadata' holds up to {MAX_METADATA} pairs of strings: keys of at most "
                                      f"{MAX_METADATA_KEY} characters, values of at most {MAX_METADATA_VALUE}")
    return metadata


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- request --------------------------------------------------------------------------------


def _content(value: Any, where: str) -> str | list[dict]:
    """A message's content: a string, or parts (input_text, output_text) as chat text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise CompatError(where, f"'{where}' must be a string or a list of content parts")
    parts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise CompatError(f"{where}[{i}].text", f"'{where}[{i}].text' must be a string")
            parts.append({"type": "text", "text": text})
        elif kind in ("input_image", "input_file", "input_audio"):
            raise CompatError(f"{where}[{i}].type", f"'{kind}' parts are not supported: the models served here read text")
        else:
            raise CompatError(f"{where}[{i}].type", f"'{where}[{i}]' must be an input_text or output_text part")
    return parts


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise CompatError(f"{where}.{name}", f"'{where}.{name}' must be a non-empty string")
    return value


def _messages(value: Any) -> list[dict]:
    """``input``: a string (one user message) or a list of items, as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise CompatError("input", "'input' must be a string or a list of items")
    out: list[dict] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise CompatError(where, f"'{where}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise CompatError(f"{where}.role", f"'{where}.role' must be user, assistant, system or developer")
            out.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            arguments = item.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise CompatError(f"{where}.arguments", f"'{where}.arguments' must be a JSON string")
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # the text and calls of one turn
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                        "content": _content(output, f"{where}.output")})
        elif kind == "reasoning":
            continue  # the model's earlier thinking: templates drop it from the history
        else:
            raise CompatError(f"{where}.type", f"input items of type '{kind}' are not supported "
                              "(message, function_call, function_call_output and reasoning are)")
    return out


def _tools(value: list) -> list[dict]:
    out = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise CompatError(f"tools[{i}].type", f"only function tools are supported here, not '{kind}' "
                              "(OpenAI's hosted tools run on OpenAI's servers)")
        out.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters", "strict")
                                                      if k in tool}})
    return out


def _tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    if isinstance(value, dict):
        raise CompatError("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": ...}")
    return value


def _echoed_choice(choice: Any) -> Any:
    """A chat tool_choice in the Responses shape (a named function is flat there)."""
    return {"type": "function", "name": choice["function"]["name"]} if isinstance(choice, dict) else choice


def _response_format(text: dict) -> dict | None:
    fmt = field(text, "format", dict)
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise CompatError("text.format.schema", "'text.format.schema' is required: a JSON schema (an object)")
        if not isinstance(fmt.get("name", ""), str) or len(fmt.get("name", "")) > 64:
            raise CompatError("text.format.name", "'text.format.name' must be a string of at most 64 characters")
        schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise CompatError("text.format.type", "'text.format.type' must be text, json_object or json_schema")


def chat_request(body: Any) -> dict:
    """The chat request of a Responses request; keys starting with ``_`` are this module's own
    (what the answer repeats), not sent to the guest."""
    body = object_body(body)
    for name, why in UNSUPPORTED.items():
        if body.get(name):
            raise CompatError(name, why)
    history: list[dict] = []
    previous = field(body, "previous_response_id", str)
    if previous is not None:
        found = STORE.get(previous)
        if found is None:
            raise CompatError("previous_response_id", f"no stored response '{previous[:100]}': responses are kept "
                              f"in this server's memory (the last {STORE_ENTRIES}), until it restarts")
        history = [dict(m) for m in found[1]]
    if body.get("input") is None:
        raise CompatError("input", "'input' is required")
    conversation = history + _messages(body["input"])
    instructions = field(body, "instructions", str)
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + conversation
    # (an assistant message last in the input is history, a turn to answer after: not continued)
    chat: dict = {"messages": messages, "add_generation_prompt": True}
    if (model := field(body, "model", str)) is not None:  # (absent: the first model)
        chat["model"] = model
    if (n := field(body, "max_output_tokens", int)) is not None:
        chat["max_tokens"] = n
    for name in ("temperature", "top_p"):
        if (value := field(body, name, (int, float))) is not None:
            chat[name] = value
    if (seed := field(body, "seed", int)) is not None:  # (not OpenAI's, as llama-server takes it)
        chat["seed"] = seed
    if (tools := field(body, "tools", list)) is not None:
        chat["tools"] = _tools(tools)
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if (parallel := field(body, "parallel_tool_calls", bool)) is not None:
        chat["parallel_tool_calls"] = parallel
    text = field(body, "text", dict, {})
    if (fmt := _response_format(text)) is not None:
        chat["response_format"] = fmt
    reasoning = field(body, "reasoning", dict, {})
    if (effort := field(reasoning, "effort", str)) is not None:
        chat["reasoning_effort"] = effort
    chat.update(streaming(body))
    # (what the answer echoes is what was understood, not what was sent: it is stored with the answer)
    chat["_echo"] = {
        "instructions": instructions, "previous_response_id": previous, "store": field(body, "store", bool, True),
        "metadata": _metadata(body), "tools": [{"type": "function", **t["function"]} for t in chat.get("tools", [])],
        "tool_choice": _echoed_choice(chat.get("tool_choice", "auto")),
        "parallel_tool_calls": True if parallel is None else parallel,
        "text": {"format": {"type": "text"} if fmt is None else {"type": fmt["type"], **fmt.get("json_schema", {})}},
        "temperature": chat.get("temperature", 1.0), "top_p": chat.get("top_p", 1.0), "max_output_tokens": chat.get("max_tokens"),
        "reasoning": {"effort": effort, "summary": field(reasoning, "summary", str)},
    }
    chat["_conversation"] = conversation
    return chat


# --- answer ---------------------------------------------------------------------------------


def _message_item(text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": _new_id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning_item(text: str) -> dict:
    return {"type": "reasoning", "id": _new_id("rs"), "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict, status: str = "completed") -> dict:
    return {"type": "function_call", "id": _new_id("fc"), "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"].get("arguments", ""), "status": status}


def _usage(usage: dict | None) -> dict:
    usage = usage or {}
    cached = cached_tokens(usage)
    return {"input_tokens": usage.get("prompt_tokens", 0), "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": usage.get("completion_tokens", 0), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens", 0)}


def _response(chat: dict, response_id: str, created: int, model: str, output: list[dict], finish: str | None,
              usage: dict | None, status: str | None = None) -> dict:
    echo = chat["_echo"]
    if status is None:
        status = "incomplete" if finish == "length" else "completed"
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": model, "output": output, "usage": _usage(usage) if usage is not None else None,
        "truncation": "disabled", "user": None, **echo,
    }


def _remember(chat: dict, response: dict) -> None:
    """Stores a finished response (``store``), with its conversation as chat messages."""
    if not chat["_echo"]["store"]:
        return
    turn: dict = {"role": "assistant", "content": None}
    for item in response["output"]:
        if item["type"] == "message":
            turn["content"] = (turn["content"] or "") + "".join(p["text"] for p in item["content"])
        elif item["type"] == "function_call":
            turn.setdefault("tool_calls", []).append({"id": item["call_id"], "type": "function",
                                                      "function": {"name": item["name"], "arguments": item["arguments"]}})
    STORE.put(response, [*chat["_conversation"], turn])


def response(chat: dict, answer: dict, _seconds: float) -> dict:
    choice = answer["choices"][0]
    message = choice["message"]
    output = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(message["reasoning_content"]))
    if message.get("content"):  # (a message max_output_tokens cut is incomplete, as OpenAI marks it)
        output.append(_message_item(message["content"], "incomplete" if choice["finish_reason"] == "length" else "completed"))
    output += [_call_item(call) for call in message.get("tool_calls") or []]
    result = _response(chat, _new_id("resp"), answer["created"], answer["model"], output, choice["finish_reason"],
                       answer.get("usage"))
    _remember(chat, result)
    return result



class ResponseStream:
    """The typed events of a streamed response, from the chat chunks: each output item is
    added, its text or arguments streamed as deltas, then done; ``response.completed`` (or
    ``response.incomplete``) carries the whole response and its usage."""

    def __init__(self, chat: dict) -> None:
        self.chat = chat
        self.id, self.created, self.model = _new_id("resp"), int(time.time()), chat.get("model", "")
        self.sequence = 0
        self.output: list[dict] = []
        self.open: dict | None = None  # the item being streamed
        self.usage: dict | None = None
        self.finish: str | None = None

    def _send(self, kind: str, **data: Any) -> bytes:
        out = typed_event(kind, {**data, "sequence_number": self.sequence})
        self.sequence += 1
        return out

    def _snapshot(self, status: str) -> dict:
        return _response(self.chat, self.id, self.created, self.model, self.output, self.finish, self.usage, status)

    def event(self, payload: bytes) -> bytes:
        if payload == b"[DONE]":
            return self._finish()
        chunk = orjson.loads(payload)
        out = []
        if self.sequence == 0:
            self.model = chunk.get("model", self.model)
            out += [self._send("response.created", response=self._snapshot("in_progress")),
                    self._send("response.in_progress", response=self._snapshot("in_progress"))]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out.append(self._text("reasoning", delta["reasoning_content"]))
            if delta.get("content"):
                out.append(self._text("message", delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _index(self) -> int:
        return len(self.output) - 1

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            item = _message_item("", "in_progress") if kind == "message" else _reasoning_item("")
            self.output.append(item)
            self.open = item
            out += self._send("response.output_item.added", output_index=self._index(), item={**item, "content": []})
            if kind == "message":
                out += self._send("response.content_part.added", item_id=item["id"], output_index=self._index(),
                                  content_index=0, part={**item["content"][0], "text": ""})
        part = self.open["content"][0]
        part["text"] += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        return out + self._send(name, item_id=self.open["id"], output_index=self._index(), content_index=0,
                                delta=text, **extra)

    def _call(self, call: dict) -> bytes:
        out = b""
        function = call.get("function") or {}
        if call.get("id"):  # a new call
            out += self._close()
            item = _call_item({"id": call["id"], "function": {"name": function.get("name", ""), "arguments": ""}},
                              "in_progress")
            self.output.append(item)
            self.open = item
            out += self._send("response.output_item.added", output_index=self._index(), item=dict(item))
        if function.get("arguments") and self.open is not None and self.open["type"] == "function_call":
            self.open["arguments"] += function["arguments"]
            out += self._send("response.function_call_arguments.delta", item_id=self.open["id"],
                              output_index=self._index(), delta=function["arguments"])
        return out

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        index, out = self._index(), b""
        if item["type"] == "message":
            part = item["content"][0]
            out += self._send("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=part["text"], logprobs=[])
            out += self._send("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=part)
        elif item["type"] == "reasoning":
            out += self._send("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=item["content"][0]["text"])
        else:
            out += self._send("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              arguments=item["arguments"])
        if "status" in item:  # (self.finish is known only when the last item closes)
            item["status"] = "incomplete" if item["type"] == "message" and self.finish == "length" else "completed"
        return out + self._send("response.output_item.done", output_index=index, item=item)

    def _finish(self) -> bytes:
        out = self._close()
        result = self._snapshot("incomplete" if self.finish == "length" else "completed")
        _remember(self.chat, result)
        return out + self._send(f"response.{result['status']}", response=result)

    def error(self, body: dict) -> bytes:
        error = body.get("error") or {}
        return self._send("error", code=error.get("code"), message=error.get("message", ""), param=error.get("param"))


def retrieve(response_id: str) -> dict | None:
    found = STORE.get(response_id)
    return None if found is None else found[0]


# (also without /v1, as llama-server serves it)
# The chat request's fields an error may name, as the Responses request calls them.
PARAMS = {"max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort",
          "response_format": "text.format", "response_format.json_schema": "text.format",
          "response_format.json_schema.schema": "text.format.schema"}


def error(_status: int, body: dict) -> dict:
    """An error in OpenAI's shape, naming the Responses field the guest's chat field came from."""
    param = (body.get("error") or {}).get("param")
    if not isinstance(param, str):
        return body
    head = param.split("[", 1)[0]
    if head == "messages":  # (the instructions come first there: an index would point elsewhere)
        renamed = "input"
    else:
        renamed = PARAMS[head] + param[len(head):] if head in PARAMS else param
    return {**body, "error": {**body["error"], "param": renamed}}


ENDPOINTS = [*(Endpoint(path, "POST", "chat", chat_request, response, stream=ResponseStream, error=error)
               for path in ("/v1/responses", "/responses")),
             Endpoint("/v1/responses/input_tokens", "POST", "apply-template", chat_request, input_tokens, count_tokens=True)]
