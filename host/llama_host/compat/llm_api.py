"""1b5d's llm-api: ``POST /generate`` (the text, as a JSON string), ``POST /agenerate`` (server-sent
events, each new piece of text), ``POST /embeddings`` (``{"text"}`` -> a list of floats),
``GET /check`` (``"Ok"``). ``params``: ``n_predict`` 300, ``temp`` 0.1, ``top_k`` 40, ``top_p`` 0.95,
``stop`` [], ``repeat_penalty`` 1.3. Its config.yaml is read by ``llama-host --config``
(llama_host.config).
"""

from __future__ import annotations

from typing import Any

from llama_host.compat import CompatError, Endpoint, field, object_body


def _params(body: dict) -> dict:
    params = field(body, "params", dict, {})
    try:
        return {
            "prompt": field(body, "prompt", str, required=True),
            "max_tokens": field(params, "n_predict", int, 300),
            "temperature": field(params, "temp", (int, float), 0.1),
            "top_k": field(params, "top_k", int, 40),
            "top_p": field(params, "top_p", (int, float), 0.95),
            "stop": field(params, "stop", (list, str), []),
            "repeat_penalty": field(params, "repeat_penalty", (int, float), 1.3),
        }
    except CompatError as e:
        if e.param in ("prompt", "params"):
            raise
        raise CompatError(f"params.{e.param}", str(e).replace(f"'{e.param}'", f"'params.{e.param}'")) from None


def generate_request(body: Any) -> dict:
    return _params(object_body(body))


def stream_request(body: Any) -> dict:
    return {**_params(object_body(body)), "stream": True}


def embeddings_request(body: Any) -> dict:
    return {"input": field(object_body(body), "text", str, required=True), "encoding_format": "float"}


ENDPOINTS = [
    Endpoint("/generate", "POST", "complete", generate_request, lambda _r, a, _s: a["choices"][0]["text"]),
    Endpoint("/agenerate", "POST", "complete", stream_request, lambda _r, a, _s: None,
             event=lambda chunk: chunk["choices"][0]["text"] if chunk.get("choices") else ""),
    Endpoint("/embeddings", "POST", "embed", embeddings_request, lambda _r, a, _s: a["data"][0]["embedding"]),
]
