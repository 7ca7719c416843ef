"""Log-probabilities of tokens, from a sequence's logits.

They are of the model's own distribution (a log-softmax of the raw logits), before the sampler
changes it (penalties, logit bias, grammar, temperature, truncation), as OpenAI's and
llama-cpp-python's are: the same token gets the same number whatever sampling settings drew it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llama_host.engine import lib
from llama_host.engine.context import Context

MAX_TOP = 20  # alternatives per token, as OpenAI allows


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens, most likely first


def logits_at(ctx: Context, index: int, n_vocab: int) -> np.ndarray:
    """The logits of batch entry ``index`` of the last decode (a view: copy what must outlive
    the next decode)."""
    return np.ctypeslib.as_array(lib.C.llama_get_logits_ith(ctx.ptr, index), shape=(n_vocab,))


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """``token``'s log-probability under ``logits``, with the ``n_top`` most likely tokens."""
    logits = logits.astype(np.float64)
    peak = logits.max()
    logsumexp = peak + np.log(np.exp(logits - peak).sum())
    top: tuple[tuple[int, float], ...] = ()
    if n_top > 0:
        n_top = min(n_top, len(logits))
        best = np.argpartition(-logits, n_top - 1)[:n_top]
        best = best[np.lexsort((best, -logits[best]))]  # most likely first; ties by id
        top = tuple((int(t), float(logits[t] - logsumexp)) for t in best)
    return TokenLogprob(token, float(logits[token] - logsumexp), top)
