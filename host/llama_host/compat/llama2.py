"""Meta's Llama-2 reference chat server: ``PUT /put/text``.

The body is a list of messages, or ``{"messages": [...], "max_gen_len", "temperature", "top_p"}``;
the answer ``{"worker_id", "choices": {"role": "assistant", "content"}, "version", "latency"}``.
"""

from __future__ import annotations

from typing import Any

from llama_host import __version__
from llama_host.compat import CompatError, Endpoint, field


def request(body: Any) -> dict:
    if isinstance(body, list):
        body = {"messages": body}
    if not isinstance(body, dict):
        raise CompatError(None, "the body must be a list of messages or an object with 'messages'")
    messages = field(body, "messages", list, required=True)
    out = {
        "messages": messages,
        "temperature": field(body, "temperature", (int, float), 0.6),
        "top_p": field(body, "top_p", (int, float), 0.9),
    }
    max_gen_len = field(body, "max_gen_len", int)  # default: as much as the context allows
    if max_gen_len is not None:
        out["max_tokens"] = max_gen_len
    return out


def response(request: dict, answer: dict, seconds: float) -> dict:
    message = answer["choices"][0]["message"]
    return {
        "worker_id": 0,
        "choices": {"role": message["role"], "content": message["content"]},
        "version": f"llama-host-{__version__}",
        "latency": round(seconds, 6),
    }


ENDPOINTS = [Endpoint("/put/text", "PUT", "chat", request, response)]
