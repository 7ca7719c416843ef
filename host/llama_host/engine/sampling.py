"""Per-request sampling with llama.cpp's native sampler chain."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from llama_host.engine import grammar as limits
from llama_host.engine import lib
from llama_host.engine.context import Context
from llama_host.engine.model import Model
from llama_host.errors import InvalidGrammar
from llama_host.resource import Resource

C = lib.C

# llama_token_data {int32 id; float logit; float p;}, as numpy sees it
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert ctypes.sizeof(C.llama_token_data) == _TOKEN_DATA.itemsize

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's. ``temperature <= 0`` is greedy."""

    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    dynatemp_range: float = 0.0  # > 0: the temperature moves within temperature ± range with the entropy
    dynatemp_exponent: float = 1.0
    top_n_sigma: float = -1.0  # <= 0: off
    xtc_probability: float = 0.0  # 0: off
    xtc_threshold: float = 0.1  # (> 0.5: off)
    mirostat: int = 0  # 1 or 2: Mirostat in place of top-k ... temperature (its own temperature first)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # < 0: the context
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", "\"", "*")
    repeat_penalty: float = 1.0  # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64  # window of previous tokens the penalties look at (< 0: the context)
    seed: int | None = None  # None: random
    logit_bias: Mapping[int, float] = dataclasses.field(default_factory=dict)  # -inf bans a token
    grammar: str | None = None  # GBNF; see grammar_from_json_schema
    # Lazy grammar: free text until one of these words appears, the grammar from there on
    grammar_triggers: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplingParams(temperature=0.0)


class Sampler(Resource):
    """A native chain for one sequence, in llama-server's order: logit bias → penalties → DRY →
    grammar → (greedy | top-n-sigma → top-k → typical → top-p → min-p → XTC → temperature →
    seeded draw | temperature → Mirostat).
    ``sample`` also feeds the chosen token back into stateful samplers (penalties, grammar).
    ``ban`` adds tokens that must never be chosen (end-of-generation tokens for ignore_eos).
    ``prompt``: the tokens before the first draw, which the penalties and DRY count as
    llama-server's do. ``context`` is the sequence's context size: no penalty or DRY window
    exceeds it (llama.cpp allocates a window up front: a client's 2^31 would be 8 GiB).

    With a grammar, sampling is llama-server's (common_sampler_sample): the chain draws a token
    without the grammar, then the grammar checks only that token; only when it refuses does the
    grammar filter the whole vocabulary and the chain draw again. Greedy picks the same token
    either way; a seeded draw without top-k/top-p/min-p has the same distribution. The full
    filter costs every vocabulary token against every live grammar stack, in the scheduler
    thread (``grammar.MAX_GRAMMAR_BRANCHES`` bounds it); the check costs one token. Where the
    grammar allows no token at all (it is complete and end-of-generation is banned, or no token
    of this vocabulary can continue it), ``sample`` returns an end-of-generation token without
    feeding it to the grammar (llama.cpp would abort the process), and ``exhausted`` is set.

    A lazy grammar (``grammar_triggers``) is laziness done here rather than llama.cpp's: its own
    throws a C++ exception, which ends the process, when the text a trigger starts does not fit
    the grammar, and it runs std::regex over all the text so far at every token. Until a trigger
    word appears the grammar is left out; then the text from the word on is spelled in tokens
    (``Model.spell``) and fed to the grammar, each token checked before it is accepted. Text the
    grammar refuses there (the word in prose) puts the grammar back to waiting."""

    def __init__(self, model: Model, params: SamplingParams = GREEDY, *, context: int,
                 ban: tuple[int, ...] = (), prompt: Sequence[int] = ()) -> None:
        self.params = params
        self.exhausted = False
        self._ptr = self._pre = self._grammar = self._post = None
        p = params
        grammar = None
        if p.grammar:  # (llama.cpp takes "" for no grammar)
            # Built first: a grammar that does not parse must fail before anything is allocated.
            grammar = _init_grammar(model, p.grammar)
        bias = {t: b for t, b in p.logit_bias.items() if 0 <= t < model.n_vocab}
        bias.update((t, -math.inf) for t in ban)
        pre, windows = [], []
        if bias:
            entries = (C.llama_logit_bias * len(bias))(*(C.llama_logit_bias(t, b) for t, b in bias.items()))
            pre.append(C.llama_sampler_init_logit_bias(model.n_vocab, len(bias), entries))
        if p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            window = context if p.penalty_last_n < 0 else min(p.penalty_last_n, context)
            windows.append(window)
            pre.append(C.llama_sampler_init_penalties(model.n_vocab, window, p.repeat_penalty, p.frequency_penalty,
                                                      p.presence_penalty))
        if p.dry_multiplier > 0 and p.dry_penalty_last_n != 0:
            window = context if p.dry_penalty_last_n < 0 else min(p.dry_penalty_last_n, context)
            breakers = [b.encode() for b in p.dry_sequence_breakers if b]
            allowed = max(0, min(p.dry_allowed_length, 2**31 - 1))  # (an int32 in C)
            windows.append(window)
            pre.append(C.llama_sampler_init_dry(model.vocab, p.dry_multiplier, p.dry_base, allowed, window,
                                                (ctypes.c_char_p * len(breakers))(*breakers), len(breakers)))
        # As llama-server's: the prompt's last tokens count for the penalties and DRY, as if drawn.
        for token in prompt[max(0, len(prompt) - max(windows, default=0)):] if windows else ():
            for sampler in pre:
                C.llama_sampler_accept(sampler, token)
        post = []
        seed = RANDOM_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        if p.greedy:
            post.append(C.llama_sampler_init_greedy())
        elif p.mirostat in (1, 2):
            post.append(_temperature(p))
            post.append(C.llama_sampler_init_mirostat(model.n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100)
                        if p.mirostat == 1 else C.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta))
        else:
            if p.top_n_sigma > 0:
                post.append(C.llama_sampler_init_top_n_sigma(p.top_n_sigma))
            if p.top_k > 0:
                post.append(C.llama_sampler_init_top_k(p.top_k))
            if p.typical_p < 1.0:
                post.append(C.llama_sampler_init_typical(p.typical_p, 1))
            if p.top_p < 1.0:
                post.append(C.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0.0:
                post.append(C.llama_sampler_init_min_p(p.min_p, 1))
            if p.xtc_probability > 0:
                post.append(C.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, 1, seed))
            post.append(_temperature(p))
            post.append(C.llama_sampler_init_dist(seed))
        if grammar is None:
            self._ptr = _chain(pre + post)
            return
        self._pre, self._grammar, self._post = _chain(pre), grammar, _chain(post)
        self._model = model
        self._triggers = tuple(t.encode() for t in p.grammar_triggers if t)
        self._longest = max(map(len, self._triggers), default=0)
        self._awaiting = bool(self._triggers)
        self._seen = bytearray()  # waiting: the end of the text, long enough to hold a trigger
        if self._awaiting:
            model.spell(b"")  # its table is built here, in the caller's thread, not the scheduler's
        n = model.n_vocab
        self._template = np.zeros(n, _TOKEN_DATA)
        self._template["id"] = np.arange(n, dtype=np.int32)
        self._cur = self._template.copy()
        self._array = C.llama_token_data_array(self._cur.ctypes.data_as(C.llama_token_data_p), n, -1, False)
        self._one = C.llama_token_data()
        self._one_array = C.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)

    def sample(self, ctx: Context, idx: int = -1) -> int:
        """Choose a token from the logits of batch entry ``idx`` (-1: the last with logits)."""
        if self._grammar is None:
            return C.llama_sampler_sample(self._ptr, ctx.ptr, idx)
        if self.exhausted:
            return self._end_token()
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx.ptr, idx), shape=(len(self._cur),))
        token = self._draw(logits, with_grammar=False)
        if self._awaiting:
            for sampler in (self._pre, self._post):
                C.llama_sampler_accept(sampler, token)
            self._watch(token)
            return token
        if not self._allows(token):
            token = self._draw(logits, with_grammar=True)
            if token is None:
                self.exhausted = True
                return self._end_token()
        for sampler in (self._pre, self._grammar, self._post):
            C.llama_sampler_accept(sampler, token)
        return token

    def _draw(self, logits: np.ndarray, *, with_grammar: bool) -> int | None:
        """What llama_sampler_sample does, from our own copy of the logits (None: the grammar
        refuses every token)."""
        cur, array = self._cur, self._array
        cur[:] = self._template
        cur["logit"] = logits
        array.data = cur.ctypes.data_as(C.llama_token_data_p)
        array.size, array.selected, array.sorted = len(cur), -1, False
        C.llama_sampler_apply(self._pre, ctypes.byref(array))
        if with_grammar:
            C.llama_sampler_apply(self._grammar, ctypes.byref(array))
            if not np.isfinite(cur["logit"][: array.size]).any():
                return None
        C.llama_sampler_apply(self._post, ctypes.byref(array))
        if not 0 <= array.selected < array.size:  # pragma: no cover - llama.cpp asserts this
            raise RuntimeError("the sampler chain selected no token")
        return array.data[array.selected].id

    def _allows(self, token: int) -> bool:
        one, array = self._one, self._one_array
        one.id, one.logit, one.p = token, 1.0, 0.0
        array.size, array.selected, array.sorted = 1, -1, False
        C.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return math.isfinite(one.logit)

    def _watch(self, token: int) -> None:
        """Waiting for a trigger: look for one in the text with ``token``, and start there."""
        seen, longest = self._seen, self._longest
        start = max(0, len(seen) - longest + 1)
        seen += self._model.piece(token, special=True)  # the pieces llama.cpp's grammar matches
        found = [i for t in self._triggers if (i := seen.find(t, start)) >= 0]
        if not found:
            del seen[: max(0, len(seen) - longest + 1)]
            return
        text = bytes(seen[min(found) :])
        seen.clear()
        self._awaiting = False
        tokens = self._model.spell(text)
        if tokens is None or not all(self._replay(t) for t in tokens):
            C.llama_sampler_reset(self._grammar)
            self._awaiting = True

    def _replay(self, token: int) -> bool:
        if not self._allows(token):
            return False
        C.llama_sampler_accept(self._grammar, token)
        return True

    def _end_token(self) -> int:
        vocab = self._model.vocab
        for token in (C.llama_vocab_eos(vocab), C.llama_vocab_eot(vocab)):
            if token >= 0:
                return token
        eog = self._model.eog_tokens
        return eog[0] if eog else 0

    def reset(self) -> None:
        self.exhausted = False
        if self._grammar is not None:
            self._awaiting = bool(self._triggers)
            self._seen.clear()
        for sampler in (self._ptr, self._pre, self._grammar, self._post):
            if sampler:
                C.llama_sampler_reset(sampler)

    def close(self) -> None:
        for name in ("_ptr", "_pre", "_grammar", "_post"):
            sampler = getattr(self, name, None)
            if sampler:
                C.llama_sampler_free(sampler)
                setattr(self, name, None)


def _temperature(p: SamplingParams) -> ctypes.c_void_p:
    """Temperature, dynamic (moving with the distribution's entropy) when ``dynatemp_range`` is set."""
    if p.dynatemp_range > 0:
        return C.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent)
    return C.llama_sampler_init_temp(p.temperature)


def _chain(samplers: list) -> ctypes.c_void_p:
    params = C.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = C.llama_sampler_chain_init(params)
    for sampler in samplers:
        C.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here
    return chain


_stack_lock = threading.Lock()


def _init_grammar(model: Model, text: str):
    """llama.cpp's grammar sampler for ``text``, checked against the limits first, and parsed on
    a thread of its own with ``GRAMMAR_STACK_BYTES`` of stack (llama.cpp's parser recurses)."""
    limits.check_gbnf(text)
    out: dict = {}

    def work() -> None:
        with lib.errors() as lines:
            out["sampler"] = C.llama_sampler_init_grammar(model.vocab, text.encode(), b"root")
        out["lines"] = lines

    with _stack_lock:  # the size applies to threads started meanwhile, by anyone: briefly
        try:
            previous = threading.stack_size(limits.GRAMMAR_STACK_BYTES)
        except (ValueError, RuntimeError):  # pragma: no cover - a platform without it
            previous = None
        try:
            thread = threading.Thread(target=work, name="grammar-parse", daemon=True)
            thread.start()
        finally:
            if previous is not None:
                threading.stack_size(previous)
    thread.join()
    if not out.get("sampler"):
        why = lib.reason(out.get("lines", []), "see the log")
        raise InvalidGrammar(f"llama.cpp refused the grammar (GBNF, with a 'root' rule): {why}")
    return out["sampler"]


# The converter's string character lets control characters through (JSON forbids them raw, so
# a model that draws one writes JSON no parser reads); llama.cpp's current converter excludes them.
_LAX_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _strict_strings(gbnf: str) -> str:
    return gbnf.replace(_LAX_CHAR, _JSON_CHAR, 1)


@functools.lru_cache(maxsize=32)  # agents send the same schema with every request
def grammar_from_json_schema(schema: str) -> str:
    """GBNF for a JSON schema, with the converter llama-cpp-python ships (llama.cpp's own), after
    the schema's limits are checked (``grammar.check_json_schema``); the grammar is checked where
    every grammar is, when its sampler is made."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    limits.check_json_schema_text(schema)
    try:
        return _strict_strings(json_schema_to_gbnf(schema))
    except Exception as e:  # the converter reports bad schemas with asserts, KeyErrors, ...
        raise InvalidGrammar(f"cannot turn the JSON schema into a grammar: {e}") from e


@functools.lru_cache(maxsize=32)
def grammar_from_schemas(schemas: str) -> str:
    """GBNF rules for a JSON object of ``{rule name: JSON schema}`` (the guest's tool calls),
    converted by one converter so the primitive rules they share are written once; each schema
    is checked against the limits first. The rules join a grammar that defines ``root``."""
    from llama_cpp.llama_grammar import SchemaConverter

    mapping = json.loads(schemas)
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        for name, schema in mapping.items():
            if not name or name == "root" or not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
                raise InvalidGrammar(f"'{name}' is not a grammar rule name (letters, digits and '-')")
            limits.check_json_schema_text(json.dumps(schema))
            converter.visit(converter.resolve_refs(schema, name), name)
        return _strict_strings(converter.format_grammar())
    except InvalidGrammar:
        raise
    except Exception as e:  # the converter reports bad schemas with asserts, KeyErrors, ...
        raise InvalidGrammar(f"cannot turn the tools' JSON schemas into a grammar: {e}") from e
