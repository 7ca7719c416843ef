"""llama.cpp's llama-server, its native endpoints: ``POST /completion``, ``POST /tokenize``,
``POST /detokenize``, ``GET /props`` (its OpenAI ones are llama-host's own).

``/completion`` becomes an OpenAI completion (the sampling keys have llama-server's names in both:
``temperature``, ``top_k``, ``min_p``, ``repeat_penalty``, ``grammar``, ``json_schema``, ...;
``n_predict`` is ``max_tokens``, ``n_probs`` is ``logprobs``), and its answer llama-server's shape:
``content``, ``stop``, ``stop_type``, ``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached``,
``generation_settings``, ``completion_probabilities``; streamed, one event per piece of text and a
last one with ``stop: true`` and the counts. ``cache_prompt`` and ``id_slot`` are accepted: every
prompt is cached, and the engine picks the slot whose cache shares the longest prefix.
Tokenizing needs no guest: ``tokenize`` and ``detokenize`` run on the model itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from llama_host.compat import CompatError, Endpoint, cached_tokens, field, object_body, streaming

# Keys /completion passes on as they are: the guest reads llama-server's names.
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
            "frequency_penalty", "seed", "stop", "ignore_eos", "logit_bias", "grammar", "json_schema", "model")
# Accepted for llama-server's clients; what they ask for is what llama-host does anyway.
ACCEPTED = ("cache_prompt", "id_slot", "samplers", "return_tokens", "timings_per_token")


def _prompt(value: Any) -> str | list:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value) and len(value) == 1:
        return value[0]
    raise CompatError("prompt", "'prompt' must be a string or a list of token ids")


def completion_request(body: Any) -> dict:
    body = object_body(body)
    if body.get("prompt") is None:
        raise CompatError("prompt", "'prompt' is required")
    out: dict = {"prompt": _prompt(body["prompt"])}
    n_predict = field(body, "n_predict", int, -1)
    if n_predict == 0:
        raise CompatError("n_predict", "'n_predict' 0 (evaluate the prompt only) is not supported; use /tokenize to count tokens")
    if n_predict > 0:
        out["max_tokens"] = n_predict
    for name in SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if (n_probs := field(body, "n_probs", int, 0)) > 0:
        out["logprobs"] = n_probs
    out.update(streaming(body))
    return out


def _settings(request: dict) -> dict:
    return {"n_predict": request.get("max_tokens", -1), **{k: request[k] for k in SAMPLING if k in request and k != "model"}}


def _probabilities(logprobs: dict | None) -> list[dict]:
    """OpenAI's legacy logprobs as llama-server's completion_probabilities."""
    if not logprobs:
        return []
    out = []
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"] or []):
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in (top or {}).items()]})
    return out


def _final(request: dict, model: str, content: str, finish: str | None, usage: dict | None, logprobs: dict | None,
           stop_word: str | None) -> dict:
    usage = usage or {}
    return {
        "index": 0, "content": content, "tokens": [], "id_slot": -1, "stop": True, "model": model,
        "tokens_predicted": usage.get("completion_tokens", 0), "tokens_evaluated": usage.get("prompt_tokens", 0),
        "tokens_cached": cached_tokens(usage),
        "generation_settings": _settings(request), "prompt": request["prompt"] if isinstance(request["prompt"], str) else "",
        "has_new_line": "\n" in content, "truncated": False,
        "stop_type": "limit" if finish == "length" else "word" if stop_word else "eos", "stopping_word": stop_word or "",
        **({"completion_probabilities": _probabilities(logprobs)} if "logprobs" in request else {}),
    }


def completion_response(request: dict, answer: dict, _seconds: float) -> dict:
    choice = answer["choices"][0]
    final = _final(request, answer["model"], choice["text"], choice["finish_reason"], answer.get("usage"),
                   choice.get("logprobs"), choice.get("stop_word"))
    return {**final, "timings": answer["timings"]} if "timings" in answer else final


class CompletionStream:
    """llama-server's stream: ``data: {"content": piece, "stop": false}`` per piece, then the
    whole answer's fields with ``stop: true`` (no ``[DONE]``)."""

    def __init__(self, request: dict) -> None:
        self.request = request
        self.model = request.get("model", "")
        self.finish: str | None = None
        self.stop_word: str | None = None
        self.usage: dict | None = None
        self.timings: dict | None = None  # the last chunk's

    def event(self, payload: bytes) -> bytes:
        if payload == b"[DONE]":
            final = _final(self.request, self.model, "", self.finish, self.usage, None, self.stop_word)
            return _data({**final, "timings": self.timings} if self.timings else final)
        chunk = orjson.loads(payload)
        self.model = chunk.get("model", self.model)
        self.timings = chunk.get("timings", self.timings)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish, self.stop_word = choice["finish_reason"], choice.get("stop_word")
            if choice.get("text"):
                piece = {"index": 0, "content": choice["text"], "tokens": [], "stop": False, "id_slot": -1}
                if "logprobs" in self.request:
                    piece["completion_probabilities"] = _probabilities(choice.get("logprobs"))
                out += _data(piece)
        return out

    def error(self, body: dict) -> bytes:
        return _data(body)


def _data(value: dict) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


# --- tokens, without the guest ----------------------------------------------------------------


def tokenize(model, body: Any) -> dict:
    """``{"content", "add_special": false, "with_pieces": false}`` -> ``{"tokens": [...]}``; with
    pieces each token is ``{"id", "piece"}``, the piece a string or (not UTF-8 alone) its bytes."""
    body = object_body(body)
    content = field(body, "content", str, required=True)
    tokens = model.tokenize(content, add_bos=field(body, "add_special", bool, False), special=True)
    if not field(body, "with_pieces", bool, False):
        return {"tokens": tokens}
    out = []
    for t in tokens:
        raw = model.piece(t, special=True)
        try:
            piece: str | list[int] = raw.decode()
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": t, "piece": piece})
    return {"tokens": out}


def detokenize(model, body: Any) -> dict:
    tokens = field(object_body(body), "tokens", list, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.n_vocab for t in tokens):
        raise CompatError("tokens", f"'tokens' must be token ids of the model's vocabulary (0 to {model.n_vocab - 1})")
    return {"content": model.detokenize(tokens, special=True)}


def props(served, route) -> dict:
    """What llama-server's ``GET /props`` tells of the served model."""
    info = served.model.info
    return {
        "default_generation_settings": {"n_ctx": served.engine.n_ctx_seq, "params": {}},
        "total_slots": served.engine.config.parallel,
        "model_alias": route.id,
        "model_path": str(info.path),
        "chat_template": info.chat_template or "",
        "bos_token": info.bos_token, "eos_token": info.eos_token,
        "modalities": {"vision": False, "audio": False},
        "build_info": "llama-host",
    }


ENDPOINTS = [Endpoint("/completion", "POST", "complete", completion_request, completion_response, stream=CompletionStream)]
