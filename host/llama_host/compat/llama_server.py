"""llama.cpp's llama-server, its native endpoints: ``POST /completion``, ``POST /tokenize``,
``POST /detokenize``, ``GET /props`` (its OpenAI ones are llama-host's own).

``/completion`` becomes an OpenAI completion (the sampling keys have llama-server's names in both:
``temperature``, ``top_k``, ``min_p``, ``repeat_penalty``, ``grammar``, ``json_schema``, ...;
``n_predict`` is ``max_tokens``, ``n_probs`` is ``logprobs``), and its answer llama-server's shape:
``content``, ``stop``, ``stop_type``, ``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached``,
``generation_settings``, ``completion_probabilities`` (with token ids: the guest gives chat's
entries), ``tokens`` (with ``return_token_ids``); streamed, one event per piece of text and a last
one with ``stop: true`` and the counts. ``cache_prompt`` is accepted: every prompt is cached, and
the engine picks the slot whose cache shares the longest prefix, or the one ``id_slot`` names.
Tokenizing needs no guest: ``tokenize`` and ``detokenize`` run on the model itself.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from llama_host.compat import CompatError, Endpoint, cached_tokens, field, input_tokens, object_body, streaming
from llama_host import __version__
from llama_host.engine import Cancellation
from llama_host.engine.sampling import SamplingParams
from llama_host.errors import ErrorKind, PromptTooLong

# Keys /completion passes on as they are: the guest reads llama-server's names.
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
            "presence_penalty", "frequency_penalty", "seed", "stop", "ignore_eos", "logit_bias", "grammar",
            "json_schema", "model", "top_n_sigma", "dynatemp_range", "dynatemp_exponent", "xtc_probability",
            "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta", "dry_multiplier", "dry_base",
            "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers")
# Keys only llama-server's /completion has: a body with one of them at /completions is llama-server's.
NATIVE = ("n_predict", "n_probs", "cache_prompt", "id_slot", "samplers", "return_tokens", "response_fields",
          "timings_per_token", "n_keep", "n_indent", "t_max_predict_ms", "dry_multiplier", "xtc_probability",
          "typical_p", "mirostat")


def _is_token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _one_prompt(value: Any, where: str) -> str | list:
    """A string, token ids, a mixed list of both, or ``{"prompt_string": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("multimodal_data"):
            raise CompatError(where, f"'{where}.multimodal_data': this server serves no multimodal model",
                              ErrorKind.NOT_SUPPORTED)
        if not isinstance(value.get("prompt_string"), str):
            raise CompatError(where, f"'{where}.prompt_string' must be a string")
        return value["prompt_string"]
    if isinstance(value, list) and value and all(_is_token(t) or isinstance(t, str) for t in value):
        return value
    raise CompatError(where, f"'{where}' must be a string, a list of token ids and strings, or an object with 'prompt_string'")


def prompts(value: Any) -> list[str | list]:
    """llama-server's ``prompt``: one prompt, or several (a list whose items are not all token
    ids and strings mixed: a flat list with a token id in it is one prompt)."""
    if isinstance(value, list) and value and not any(_is_token(t) for t in value):
        return [_one_prompt(p, f"prompt[{i}]") for i, p in enumerate(value)]
    return [_one_prompt(value, "prompt")]


def completion_request(body: Any) -> dict:
    body = object_body(body)
    if body.get("prompt") is None:
        raise CompatError("prompt", "'prompt' is required")
    given = prompts(body["prompt"])
    out: dict = {"prompt": given[0] if len(given) == 1 else given, "_prompts": given}
    n_predict = field(body, "n_predict", int, -1)
    if n_predict >= 0:  # 0: the prompt is evaluated (and cached) only
        out["max_tokens"] = n_predict
    for name in SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("samplers") is not None:
        out.update(_unlisted_samplers_off(body["samplers"], out))
    if (n_probs := field(body, "n_probs", int, 0)) > MAX_N_PROBS:
        raise CompatError("n_probs", f"'n_probs' is at most {MAX_N_PROBS} here (OpenAI's bound), not {n_probs}")
    if n_probs > 0:
        out.update(logprobs=n_probs, logprobs_format="chat")
    out.update(streaming(body))
    # (the generated ids: asked for, or streamed, as llama-server gives them; the answer names its slot)
    out["return_token_ids"] = field(body, "return_tokens", bool, False) or out.get("stream", False)
    out["id_slot"] = field(body, "id_slot", int, -1)
    fields = field(body, "response_fields", list, [])
    if not all(isinstance(f, str) for f in fields):
        raise CompatError("response_fields", "'response_fields' must be a list of field names (a/b for a nested one)")
    if fields:
        out["_response_fields"] = fields
    return out


def _picked(result: dict, paths: list[str]) -> dict:
    """llama-server's ``response_fields``: only these fields, a nested one (``a/b``) moved to the
    top under its path; a path that leads nowhere is left out."""
    out = {}
    for path in paths:
        value: Any = result
        for key in path.split("/"):
            if not (isinstance(value, dict) and key in value):
                break
            value = value[key]
        else:
            out[path] = value
    return out


MAX_N_PROBS = 20  # the guest's bound on alternatives per token (OpenAI's top_logprobs)

# llama-server's sampler names (and their one-letter forms) -> the settings that turn each off
SAMPLER_OFF = {
    "top_k": ("k", {"top_k": 0}), "top_p": ("p", {"top_p": 1.0}), "min_p": ("m", {"min_p": 0.0}),
    "typ_p": ("y", {"typical_p": 1.0}),
    "penalties": ("e", {"repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}),
    "dry": ("d", {"dry_multiplier": 0.0}), "top_n_sigma": ("s", {"top_n_sigma": -1.0}),
    "xtc": ("x", {"xtc_probability": 0.0}),
    "temperature": ("t", {"temperature": 1.0}),
}
SAMPLER_ALIASES = {"top-k": "top_k", "topk": "top_k", "top-p": "top_p", "topp": "top_p", "nucleus": "top_p",
                   "typical_p": "typ_p", "typical-p": "typ_p", "typical": "typ_p", "typ-p": "typ_p", "typ": "typ_p",
                   "min-p": "min_p", "minp": "min_p", "temp": "temperature", "top-n-sigma": "top_n_sigma"}


def _unlisted_samplers_off(samplers: Any, request: dict) -> dict:
    """``samplers``: the samplers to use, as names or a string of letters (``"kpmt"``); those it
    leaves out are turned off, as llama-server leaves them out. (The order is llama-server's
    default one, whatever the list's: SAMPLER_ORDER.)"""
    if isinstance(samplers, str):
        listed = {name for name, (letter, _) in SAMPLER_OFF.items() if letter in samplers}
    elif isinstance(samplers, list) and all(isinstance(x, str) for x in samplers):
        listed = {SAMPLER_ALIASES.get(x.lower(), x.lower()) for x in samplers}
    else:
        raise CompatError("samplers", "'samplers' must be a list of sampler names or a string of their letters")
    out: dict = {}
    for name, (_, off) in SAMPLER_OFF.items():
        if name not in listed:
            for key in off:  # (a sampler turned off still has its value checked)
                field(request, key, (int, float))
            out.update(off)
    temperature = request.get("temperature")
    if "temperature" not in listed and isinstance(temperature, (int, float)) and temperature <= 0:
        del out["temperature"]  # (greedy stays greedy)
    return out


def tokenize_prompt(model, prompt: str | list, limit: int, *, special: bool = True) -> list[int]:
    """A prompt's tokens as llama-server makes them: token ids as given (the guest's bridge, or
    the Embedder without it, checks them against the vocabulary), strings tokenized; BOS (where
    the model wants one) only when the prompt starts with a string. A prompt that cannot be
    fewer than ``limit`` tokens is refused before the tokenizer's work."""
    parts = [prompt] if isinstance(prompt, str) else prompt
    least = sum(model.fewest_tokens(p) if isinstance(p, str) else 1 for p in parts)
    if least >= limit:
        raise CompatError("prompt", str(PromptTooLong(least, limit, at_least=True)), ErrorKind.CONTEXT_LENGTH)
    if isinstance(prompt, str):
        return model.tokenize(prompt, special=special)
    out: list[int] = []
    for i, part in enumerate(prompt):
        out += model.tokenize(part, add_bos=None if i == 0 else False, special=special) if isinstance(part, str) else [part]
    return out


def completion_prepare(served, request: dict) -> dict:
    """Every prompt as token ids: mixed prompts need the model's tokenizer, and each result
    counts its own prompt's tokens."""
    ids = [tokenize_prompt(served.model, p, served.engine.n_ctx_seq) for p in request["_prompts"]]
    out = {**request, "prompt": ids[0] if len(ids) == 1 else ids, "_n_prompt": [len(t) for t in ids],
           "_n_ctx": served.engine.n_ctx_seq}
    if "logit_bias" in request:
        out["logit_bias"] = logit_bias(served.model, request["logit_bias"])
    return out


BAN = -100.0  # (OpenAI's "ban", the most the guest takes: llama-server's false is -inf)


def logit_bias(model, value: Any) -> dict[str, float]:
    """llama-server's ``logit_bias`` in the guest's (OpenAI's) form, ``{"token id": bias}``: pairs
    ``[[token, bias], ...]`` or an object, a token given by id or as text (each of its tokens
    biased), ``false`` to ban; biases past ±100 are ±100. Ids outside the vocabulary are
    skipped, as both servers do."""
    if isinstance(value, dict):
        pairs, where = list(value.items()), "logit_bias.{}"
    elif isinstance(value, list):
        pairs, where = [], "logit_bias[{}]"
        for i, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise CompatError(where.format(i), f"'{where.format(i)}' must be a [token, bias] pair")
            pairs.append(tuple(pair))
    else:
        raise CompatError("logit_bias", "'logit_bias' must be an object or a list of [token, bias] pairs")
    out: dict[str, float] = {}
    for i, (token, bias) in enumerate(pairs):
        param = where.format(i if isinstance(value, list) else str(token)[:40])
        if bias is False:
            bias = BAN
        elif not isinstance(bias, (int, float)) or isinstance(bias, bool) or bias != bias:
            raise CompatError(param, f"'{param}': a bias is a number, or false to ban the token")
        if isinstance(token, str) and token.lstrip("-").isdigit():
            token = int(token)
        if isinstance(token, str):
            ids = model.tokenize(token, add_bos=False, special=False)
        elif isinstance(token, int) and not isinstance(token, bool):
            ids = [token] if 0 <= token < model.n_vocab else []
        else:
            raise CompatError(param, f"'{param}': a token is an id or a text")
        for t in ids:
            out[str(t)] = max(BAN, min(-BAN, float(bias)))
    return out


def _settings(request: dict) -> dict:
    """The request's generation settings (those it gave; the rest are /props' defaults)."""
    return {"n_predict": request.get("max_tokens", -1), "model": request.get("model", ""),
            **({"n_ctx": request["_n_ctx"]} if "_n_ctx" in request else {}),
            **{k: request[k] for k in SAMPLING if k in request and k != "model"}}


def _probabilities(logprobs: dict | None) -> list[dict]:
    """completion_probabilities: the guest's entries in chat's shape are llama-server's items
    (``id``, ``token``, ``logprob``, ``bytes``, ``top_logprobs`` of the same)."""
    return (logprobs or {}).get("content") or []


def _final(request: dict, choice: dict, answer: dict, content: str, usage: dict | None, timings: dict | None) -> dict:
    """One prompt's result, from its OpenAI choice (finish_reason, stop_word, logprobs, token_ids)
    and the answer, or last chunk, it came in (model, id_slot); ``timings`` where known:
    llama-server's own counts come first."""
    usage = usage or {}
    index, finish, stop_word = choice.get("index", 0), choice.get("finish_reason"), choice.get("stop_word")
    given = request["_prompts"][index]
    n_prompt = request["_n_prompt"][index] if "_n_prompt" in request else usage.get("prompt_tokens", 0)
    cached = timings["cache_n"] if timings and "cache_n" in timings else cached_tokens(usage) if index == 0 else 0
    out = {
        "index": index, "content": content, "tokens": choice.get("token_ids", []), "id_slot": answer.get("id_slot", -1),
        "stop": True, "model": answer.get("model", request.get("model", "")),
        "tokens_predicted": timings["predicted_n"] if timings else usage.get("completion_tokens", 0),
        "tokens_evaluated": n_prompt, "tokens_cached": cached,
        "generation_settings": _settings(request), "prompt": given if isinstance(given, str) else "",
        "has_new_line": "\n" in content, "truncated": False,
        "stop_type": "limit" if finish == "length" else "word" if stop_word else "eos", "stopping_word": stop_word or "",
        **({"completion_probabilities": _probabilities(choice.get("logprobs"))} if "logprobs" in request else {}),
    }
    out = {**out, "timings": timings} if timings else out
    return _picked(out, request["_response_fields"]) if "_response_fields" in request else out


def completion_response(request: dict, answer: dict, _seconds: float) -> dict | list[dict]:
    """One result, or a list of them (one per prompt) when the request had several prompts."""
    results = []
    for choice in answer["choices"]:  # (n is 1 here: one choice per prompt, in order)
        i = choice["index"]
        timings = answer.get("timings") if i == 0 else None  # (the answer's are its first choice's)
        usage = answer.get("usage") if len(answer["choices"]) == 1 else None
        results.append(_final(request, choice, answer, choice["text"], usage, timings))
    return results[0] if len(results) == 1 else results


class CompletionStream:
    """llama-server's stream: ``data: {"content": piece, "stop": false, "index": i}`` per piece,
    then each prompt's result with ``stop: true`` (no ``[DONE]``)."""

    def __init__(self, request: dict) -> None:
        self.request = request
        self.ends: dict[int, tuple[dict, dict]] = {}  # index -> its last choice, and the chunk it came in
        self.usage: dict | None = None

    def event(self, payload: bytes) -> bytes:
        if payload == b"[DONE]":
            single = len(self.request["_prompts"]) == 1
            return b"".join(_data(_final(self.request, choice, chunk, "", self.usage if single else None,
                                         chunk.get("timings")))
                            for _, (choice, chunk) in sorted(self.ends.items()))
        chunk = orjson.loads(payload)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or []:
            i = choice.get("index", 0)
            if choice.get("finish_reason"):  # (its token ids: those a stop string cut)
                self.ends[i] = (choice, chunk)
            if choice.get("text"):
                piece = {"index": i, "content": choice["text"], "tokens": choice.get("token_ids", []), "stop": False,
                         "id_slot": self.request.get("id_slot", -1)}
                if "logprobs" in self.request:
                    piece["completion_probabilities"] = _probabilities(choice.get("logprobs"))
                out += _data(piece)
        return out

    def error(self, body: dict) -> bytes:
        return _data(body)


def _data(value: dict) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


# --- tokens, without the guest ----------------------------------------------------------------


def tokenize(served, body: Any, _cancel: Cancellation) -> dict:
    """``{"content", "add_special": false, "parse_special": true, "with_pieces": false}`` -> ``{"tokens": [...]}``; with
    pieces each token is ``{"id", "piece"}``, the piece a string or (not UTF-8 alone) its bytes."""
    body = object_body(body)
    model = served.model
    content = field(body, "content", str, required=True)
    tokens = model.tokenize(content, add_bos=field(body, "add_special", bool, False),
                            special=field(body, "parse_special", bool, True))
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


def detokenize(served, body: Any, _cancel: Cancellation) -> dict:
    model = served.model
    tokens = field(object_body(body), "tokens", list, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.n_vocab for t in tokens):
        raise CompatError("tokens", f"'tokens' must be token ids of the model's vocabulary (0 to {model.n_vocab - 1})")
    return {"content": model.detokenize(tokens, special=True)}


# The order llama-host's sampler chain applies them (llama_host.engine.sampling), in llama-server's names.
SAMPLER_ORDER = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def default_settings(served, defaults: dict) -> dict:
    """What a /completion without sampling keys gets: llama.cpp's defaults and the CLI's."""
    d = SamplingParams()
    n_predict = defaults.get("n-predict", -1)
    params = {
        "n_predict": n_predict, "seed": defaults.get("seed", -1), "temperature": defaults.get("temp", d.temperature),
        "top_k": d.top_k, "top_p": defaults.get("top-p", d.top_p), "min_p": d.min_p, "typical_p": d.typical_p,
        "repeat_last_n": d.penalty_last_n, "repeat_penalty": defaults.get("repeat-penalty", d.repeat_penalty),
        "presence_penalty": defaults.get("presence-penalty", d.presence_penalty),
        "frequency_penalty": defaults.get("frequency-penalty", d.frequency_penalty),
        "stop": [defaults["reverse-prompt"]] if "reverse-prompt" in defaults else [], "max_tokens": n_predict,
        "ignore_eos": False, "stream": False, "n_probs": 0, "grammar": "", "samplers": SAMPLER_ORDER,
        "timings_per_token": False, "dynatemp_range": d.dynatemp_range, "dynatemp_exponent": d.dynatemp_exponent,
        "top_n_sigma": d.top_n_sigma, "xtc_probability": d.xtc_probability,
        "xtc_threshold": d.xtc_threshold, "mirostat": d.mirostat, "mirostat_tau": d.mirostat_tau,
        "mirostat_eta": d.mirostat_eta, "dry_multiplier": d.dry_multiplier, "dry_base": d.dry_base,
        "dry_allowed_length": d.dry_allowed_length, "dry_penalty_last_n": d.dry_penalty_last_n,
        "dry_sequence_breakers": list(d.dry_sequence_breakers),
    }
    return {"id": 0, "id_task": -1, "n_ctx": served.engine.n_ctx_seq, "speculative": False, "is_processing": False,
            "params": params, "prompt": "",
            "next_token": {"has_next_token": True, "has_new_line": False, "n_remain": -1, "n_decoded": 0, "stopping_word": ""}}


def slots(served, _route, defaults: dict) -> list[dict]:
    """``GET /slots``: each sequence as llama-server shows it (the engine's counts, the defaults
    as its params: a request's own settings are not kept), plus the tokens its cache holds."""
    params = default_settings(served, defaults)["params"]
    return [{"id": s["id"], "id_task": -1, "n_ctx": s["n_ctx"], "speculative": False, "is_processing": s["is_processing"],
             "params": params, "n_cached": s["n_cached"], "n_prompt_tokens": s["n_prompt_tokens"],
             "next_token": {"has_next_token": s["is_processing"], "has_new_line": False, "n_remain": -1,
                            "n_decoded": s["n_decoded"]}, "n_decoded": s["n_decoded"]}
            for s in served.engine.slots()]


def props(served, route, defaults: dict) -> dict:
    """What llama-server's ``GET /props`` tells of the served model."""
    info = served.model.info
    return {
        "default_generation_settings": default_settings(served, defaults),
        "total_slots": served.engine.config.parallel,
        "model_alias": route.id,
        "model_path": str(info.path),
        "chat_template": info.chat_template or "",
        "chat_template_caps": {},
        "bos_token": info.bos_token, "eos_token": info.eos_token,
        "modalities": {"vision": False, "audio": False},
        "build_info": f"llama-host {__version__}",
        "is_sleeping": False,
    }


# --- /infill: fill in the middle ----------------------------------------------------------------


def infill_request(body: Any) -> dict:
    """``input_prefix``, ``input_suffix``, ``input_extra`` ([{filename, text}]) and ``prompt``
    (written after the middle token), with every /completion option; the prompt's tokens are
    laid out by :func:`infill_prepare`."""
    body = object_body(body)
    parts = {name: field(body, name, str, "") for name in ("input_prefix", "input_suffix")}
    extra = field(body, "input_extra", list, [])
    for i, chunk in enumerate(extra):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str) or not isinstance(chunk.get("filename", ""), str):
            raise CompatError(f"input_extra[{i}]", f"'input_extra[{i}]' must be an object with a string 'text' (and 'filename')")
    after = field(body, "prompt", str, "")
    out = completion_request({**body, "prompt": after})
    return {**out, "_infill": {**parts, "extra": extra}}


def infill_prepare(served, request: dict) -> dict:
    """The fill-in-the-middle prompt, as llama-server's README lays it out: with repository and
    file-separator tokens, ``<REP>myproject\n`` and ``<SEP>{filename}\n{text}`` per extra chunk,
    ``<SEP>filename\n``; without them the chunks' text first; then ``<PRE>prefix<SUF>suffix<MID>``
    and the prompt. The user's code is not parsed for special tokens. A prefix and suffix too long
    for the context keep what is nearest the cursor (prefix 3/4 of the room, suffix 1/4)."""
    model, fim = served.model, served.model.fim_tokens
    if not {"pre", "suf", "mid"} <= fim.keys():
        raise CompatError(None, "this model has no fill-in-the-middle tokens: /infill needs a code model that has them",
                          ErrorKind.NOT_SUPPORTED)
    parts = request["_infill"]

    def text(t: str) -> list[int]:
        return model.tokenize(t, add_bos=False, special=False) if t else []

    head: list[int] = [model.info.bos_id] if model.info.add_bos and model.info.bos_id is not None else []
    repo = "rep" in fim and "sep" in fim
    if repo:
        head += [fim["rep"], *text("myproject\n")]
    for chunk in parts["extra"]:
        body = chunk.get("filename", "") + "\n" + chunk["text"] if repo else chunk["text"]
        head += ([fim["sep"]] if repo else []) + text(body if body.endswith("\n") else body + "\n")
    if repo:
        head += [fim["sep"], *text("filename\n")]
    prefix, suffix, after = text(parts["input_prefix"]), text(parts["input_suffix"]), text(request["_prompts"][0])
    n_predict = request.get("max_tokens", -1)
    room = served.engine.n_ctx_seq - len(head) - len(after) - 3 - (n_predict if n_predict >= 0 else served.engine.n_ctx_seq // 4)
    if len(prefix) + len(suffix) > room:
        keep_suffix = min(len(suffix), max(0, room // 4))
        suffix, prefix = suffix[:keep_suffix], prefix[len(prefix) - max(0, room - keep_suffix):]
    tokens = [*head, fim["pre"], *prefix, fim["suf"], *suffix, fim["mid"], *after]
    return {**request, "prompt": tokens, "_n_prompt": [len(tokens)]}


# --- embeddings, in llama-server's shape ---------------------------------------------------------


def embedding_request(body: Any) -> dict:
    """``/embedding``'s ``content`` (or, at /embeddings, ``input``: see the server's rule): a text,
    token ids, or a list of them. Pooled embeddings, normalised as ``embd_normalize`` says (2,
    Euclidean, by default; 0 max absolute, scaled to int16's range; 1 taxicab; p > 2 the p-norm);
    the model's own scale (-1) is not kept: the guest's embeddings are unit vectors."""
    body = object_body(body)
    content = body.get("content", body.get("input"))
    if not isinstance(content, (str, list)) or content == []:
        raise CompatError("content", "'content' must be a string, token ids, or a list of them")
    norm = field(body, "embd_normalize", int, 2)
    if norm < 0:
        raise CompatError("embd_normalize", "'embd_normalize' -1 (unnormalised) is not supported; 0, 1, 2 or a p > 2 are",
                          ErrorKind.NOT_SUPPORTED)
    given = prompts(content)
    return {"input": given[0] if len(given) == 1 else given, "_normalize": norm,
            **({"model": body["model"]} if "model" in body else {})}


def embedding_prepare(served, request: dict) -> dict:
    ids = [tokenize_prompt(served.model, p, served.embedder().n_ctx + 1) for p in prompts(request["input"])]
    return {**request, "input": ids[0] if len(ids) == 1 else ids}


def _normalized(vector: list[float], p: int) -> list[float]:
    v = np.asarray(vector, dtype=np.float64)
    scale = {0: np.abs(v).max() / 32760.0, 1: np.abs(v).sum(), 2: np.linalg.norm(v)}.get(p)
    if scale is None:
        scale = (np.abs(v) ** p).sum() ** (1.0 / p)
    return (v / scale if scale > 0 else v).tolist()


def embedding_response(request: dict, answer: dict, _seconds: float) -> list[dict]:
    return [{"index": d["index"], "embedding": [_normalized(d["embedding"], request["_normalize"])]} for d in answer["data"]]


MAX_TOKEN_EMBEDDING_NUMBERS = 1 << 24  # per request: a 4096-token input of a 4096-wide model (~300 MB of JSON)


def token_embeddings(served, body: Any, cancel: Cancellation) -> list[dict]:
    """``/embedding`` with ``--pooling none``: per input, each token's hidden state, unnormalised
    (as llama-server gives them; ``embd_normalize`` applies to pooled vectors only)."""
    limit = served.embedder().n_ctx + 1
    inputs = [tokenize_prompt(served.model, p, limit) for p in prompts(embedding_request(body)["input"])]
    numbers = sum(map(len, inputs)) * served.model.info.n_embd
    if numbers > MAX_TOKEN_EMBEDDING_NUMBERS:
        raise CompatError("content", f"the answer would hold {numbers} numbers (tokens × {served.model.info.n_embd} "
                          f"dimensions); at most {MAX_TOKEN_EMBEDDING_NUMBERS} per request")
    out = []
    for i, ids in enumerate(inputs):
        if cancel.is_set:  # (the client has gone: nobody reads the rest)
            break
        out.append({"index": i, "embedding": served.embedder().token_vectors(ids).tolist()})
    return out


# --- /rerank -----------------------------------------------------------------------------------

MAX_DOCUMENTS = 1024


def rerank_tokens(model, query: str, document: str) -> list[int]:
    """A (query, document) pair as a reranker reads it: the GGUF's ``rerank`` template with
    ``{query}`` and ``{document}`` filled in, or BOS query EOS SEP document EOS (the tokens the
    model has of those)."""
    template = model.chat_template("rerank")
    if template:
        # (one pass: a query that says "{document}" is text, not a place for the document)
        return model.tokenize(re.sub(r"\{(query|document)\}", lambda m: {"query": query, "document": document}[m[1]],
                                     template))
    info, sep = model.info, model.sep_id
    tokens = [info.bos_id] if info.bos_id is not None else []
    tokens += model.tokenize(query, add_bos=False) + ([info.eos_id] if info.eos_id is not None else [])
    tokens += ([sep] if sep is not None else []) + model.tokenize(document, add_bos=False)
    return tokens + ([info.eos_id] if info.eos_id is not None else [])


def rerank(served, body: Any, cancel: Cancellation, *, forced: bool = False) -> dict:
    """``{"query", "documents": [text | {"text"}], "top_n", "return_text"}`` -> the documents by
    relevance, highest first (llama-server's and Jina's shape). Needs a reranker: a GGUF that
    declares rank pooling, or any model with ``--reranking``."""
    body = object_body(body)
    if not (forced or served.is_reranker):
        raise CompatError(None, "this model is not a reranker (its GGUF declares no rank pooling); "
                          "start with --reranking to use its classification head anyway", ErrorKind.NOT_SUPPORTED)
    query = field(body, "query", str, required=True)
    documents = field(body, "documents", list, required=True)
    if not 0 < len(documents) <= MAX_DOCUMENTS:
        raise CompatError("documents", f"'documents' must have 1 to {MAX_DOCUMENTS} documents")
    texts = []
    for i, doc in enumerate(documents):
        text = doc.get("text") if isinstance(doc, dict) else doc
        if not isinstance(text, str):
            raise CompatError(f"documents[{i}]", f"'documents[{i}]' must be a string or an object with a string 'text'")
        texts.append(text)
    top_n = field(body, "top_n", int, len(texts))
    if top_n < 1:
        raise CompatError("top_n", "'top_n' must be at least 1")
    return_text = field(body, "return_text", bool, False) or field(body, "return_documents", bool, False)
    ranker = served.ranker()
    scores, n_tokens = [], 0
    for i, text in enumerate(texts):
        if cancel.is_set:  # (the client has gone: nobody reads the scores)
            break
        tokens = rerank_tokens(served.model, query, text)
        if len(tokens) > ranker.n_ctx:
            raise CompatError(f"documents[{i}]", f"the query and 'documents[{i}]' are {len(tokens)} tokens, more than "
                              f"the {ranker.n_ctx} of the context", ErrorKind.CONTEXT_LENGTH)
        scores.append(float(ranker.pooled(tokens)[0]))
        n_tokens += len(tokens)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]
    return {"model": body.get("model") or served.name, "object": "list",
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "results": [{"index": i, "relevance_score": scores[i], **({"document": {"text": texts[i]}} if return_text else {})}
                        for i in order]}


# --- token counting ----------------------------------------------------------------------------


def input_tokens_request(body: Any) -> dict:
    """``/v1/chat/completions/input_tokens``: a chat request whose prompt is counted, not run."""
    return {**object_body(body), "stream": False}


ENDPOINTS = [
    Endpoint("/completion", "POST", "complete", completion_request, completion_response, stream=CompletionStream,
             prepare=completion_prepare),
    Endpoint("/infill", "POST", "complete", infill_request, completion_response, stream=CompletionStream,
             prepare=infill_prepare),
    Endpoint("/embedding", "POST", "embed", embedding_request, embedding_response, prepare=embedding_prepare),
    Endpoint("/v1/chat/completions/input_tokens", "POST", "apply-template", input_tokens_request, input_tokens,
             count_tokens=True),
]
# Served at /completions and /embeddings when the body is llama-server's (llama_host.server).
NATIVE_COMPLETIONS = ENDPOINTS[0]
NATIVE_EMBEDDINGS = ENDPOINTS[2]


def is_native_completion(body: Any) -> bool:
    """A /completions body is llama-server's when it has a key only llama-server's has, or no
    ``model`` (OpenAI's clients always send one); otherwise it is OpenAI's."""
    return isinstance(body, dict) and (any(k in body for k in NATIVE) or "model" not in body)
