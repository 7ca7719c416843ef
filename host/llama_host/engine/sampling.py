"""Per-request sampling with llama.cpp's native sampler chain."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from llama_host.engine import lib
from llama_host.engine.context import Context
from llama_host.engine.model import Model
from llama_host.errors import InvalidGrammar
from llama_host.resource import Resource

C = lib.C

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's. ``temperature <= 0`` is greedy."""

    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64  # window of previous tokens the penalties look at (-1: context)
    seed: int | None = None  # None: random
    logit_bias: Mapping[int, float] = dataclasses.field(default_factory=dict)  # -inf bans a token
    grammar: str | None = None  # GBNF; see grammar_from_json_schema

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplingParams(temperature=0.0)


class Sampler(Resource):
    """A native chain for one sequence, in llama.cpp's usual order: logit bias → penalties →
    grammar → (greedy | top-k → typical → top-p → min-p → temperature → seeded draw).
    ``sample`` also feeds the chosen token back into stateful samplers (penalties, grammar).
    ``ban`` adds tokens that must never be chosen (end-of-generation tokens for ignore_eos)."""

    def __init__(self, model: Model, params: SamplingParams = GREEDY, *, ban: tuple[int, ...] = ()) -> None:
        self.params = params
        p = params
        grammar = None
        if p.grammar is not None:
            # Built first: a grammar that does not parse must fail before anything is allocated.
            grammar = C.llama_sampler_init_grammar(model.vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise InvalidGrammar("the grammar does not parse (GBNF, with a 'root' rule); see the log")
        chain_params = C.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._ptr = C.llama_sampler_chain_init(chain_params)
        bias = {t: b for t, b in p.logit_bias.items() if 0 <= t < model.n_vocab}
        bias.update((t, -math.inf) for t in ban)
        if bias:
            entries = (C.llama_logit_bias * len(bias))(*(C.llama_logit_bias(t, b) for t, b in bias.items()))
            self._add(C.llama_sampler_init_logit_bias(model.n_vocab, len(bias), entries))
        if p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            self._add(
                C.llama_sampler_init_penalties(
                    model.n_vocab, p.penalty_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if grammar is not None:
            self._add(grammar)
        if p.greedy:
            self._add(C.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(C.llama_sampler_init_top_k(p.top_k))
        if p.typical_p < 1.0:
            self._add(C.llama_sampler_init_typical(p.typical_p, 1))
        if p.top_p < 1.0:
            self._add(C.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(C.llama_sampler_init_min_p(p.min_p, 1))
        self._add(C.llama_sampler_init_temp(p.temperature))
        self._add(C.llama_sampler_init_dist(RANDOM_SEED if p.seed is None else p.seed & 0xFFFFFFFF))

    def _add(self, sampler) -> None:
        C.llama_sampler_chain_add(self._ptr, sampler)  # the chain owns it from here

    def sample(self, ctx: Context, idx: int = -1) -> int:
        """Choose a token from the logits of batch entry ``idx`` (-1: the last with logits)."""
        return C.llama_sampler_sample(self._ptr, ctx.ptr, idx)

    def reset(self) -> None:
        C.llama_sampler_reset(self._ptr)

    def close(self) -> None:
        if self._ptr:
            C.llama_sampler_free(self._ptr)
            self._ptr = None


def grammar_from_json_schema(schema: str) -> str:
    """GBNF for a JSON schema, with the converter llama-cpp-python ships (llama.cpp's own)."""
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        json.loads(schema)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidGrammar(f"the JSON schema is not valid JSON: {e}") from e
    try:
        return json_schema_to_gbnf(schema)
    except Exception as e:  # the converter reports bad schemas with asserts, KeyErrors, ...
        raise InvalidGrammar(f"cannot turn the JSON schema into a grammar: {e}") from e
