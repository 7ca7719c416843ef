"""llama-go's server: ``POST /api/completion``.

Body: ``prompt`` and ``tokens`` (both required), ``top_k`` (40), ``top_p`` (0.9), ``temp`` (0.8),
``repeat_penalty`` (1.3), ``repeat_lastn`` (64). Answer: ``{"Prompt", "Text", "Tokens",
"CompleteReason"}`` with Tokens the number generated and CompleteReason ``"stop"`` (end of text)
or ``"length"`` (the token budget ran out).
"""

from __future__ import annotations

from typing import Any

from llama_host.compat import Endpoint, field, object_body


def request(body: Any) -> dict:
    body = object_body(body)
    return {
        "prompt": field(body, "prompt", str, required=True),
        "max_tokens": field(body, "tokens", int, required=True),
        "top_k": field(body, "top_k", int, 40),
        "top_p": field(body, "top_p", (int, float), 0.9),
        "temperature": field(body, "temp", (int, float), 0.8),
        "repeat_penalty": field(body, "repeat_penalty", (int, float), 1.3),
        "repeat_last_n": field(body, "repeat_lastn", int, 64),
    }


def response(request: dict, answer: dict, seconds: float) -> dict:
    choice = answer["choices"][0]
    return {
        "Prompt": request["prompt"],
        "Text": choice["text"],
        "Tokens": answer["usage"]["completion_tokens"],
        "CompleteReason": choice["finish_reason"],
    }


ENDPOINTS = [Endpoint("/api/completion", "POST", "complete", request, response)]
