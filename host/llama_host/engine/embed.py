"""Embeddings: a text's hidden states pooled into one vector (L2-normalised), or, with pooling
none, one vector per token."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np

from llama_host.engine import lib
from llama_host.engine.context import Batch, Context
from llama_host.engine.model import Model
from llama_host.errors import NonFiniteOutput, PromptTooLong
from llama_host.resource import Resource

C = lib.C


class Embedder(Resource):
    """Its own small context (embeddings on, mean pooling by default) beside the generation
    context, so embedding requests never disturb the KV cache of chats. One input at a time, each
    decoded in a single batch, as pooling over a causal model needs. With rank pooling (a
    reranker's classification head) each input gives the head's scores instead; with none, each
    token's hidden state."""

    def __init__(
        self, model: Model, *, n_ctx: int = 2048, threads: int | None = None, flash_attn: bool | None = None,
        pooling: int = C.LLAMA_POOLING_TYPE_MEAN,
    ) -> None:
        self.model = model
        self.pooling = pooling
        self.ctx = Context(
            model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
            embeddings=True, pooling=pooling, flash_attn=flash_attn,
        )
        self.n_out = C.llama_model_n_cls_out(model.ptr) if pooling == C.LLAMA_POOLING_TYPE_RANK else model.info.n_embd
        self.n_ctx = self.ctx.n_ctx
        self._batch = Batch(self.n_ctx)
        self._lock = threading.Lock()

    def embed_tokens(self, tokens: list[int]) -> np.ndarray:
        """The L2-normalised pooled embedding of ``tokens``."""
        vector = self.pooled(tokens)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    @property
    def per_token(self) -> bool:
        return self.pooling == C.LLAMA_POOLING_TYPE_NONE

    def pooled(self, tokens: list[int]) -> np.ndarray:
        """What the context's pooling gives for ``tokens``, as llama.cpp computes it."""
        if self.per_token:
            raise ValueError("this context pools nothing (pooling none): it gives one vector per token")
        with self._decoded(tokens):
            ptr = C.llama_get_embeddings_seq(self.ctx.ptr, 0)
            if not ptr:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            return _finite(np.ctypeslib.as_array(ptr, shape=(self.n_out,)).astype(np.float32))

    def token_vectors(self, tokens: list[int]) -> np.ndarray:
        """With pooling none: each token's hidden state (a row per token), unnormalised."""
        if not self.per_token:
            raise ValueError("this context pools its tokens: it gives one vector per input")
        with self._decoded(tokens):
            ptr = C.llama_get_embeddings(self.ctx.ptr)  # every output row, in batch order
            if not ptr:
                raise RuntimeError("llama.cpp returned no token embeddings")
            return _finite(np.ctypeslib.as_array(ptr, shape=(len(tokens), self.n_out)).astype(np.float32))

    @contextlib.contextmanager
    def _decoded(self, tokens: list[int]) -> Iterator[None]:
        """``tokens`` decoded in one batch, every one an output; the lock held while the caller
        reads the results."""
        if not tokens:
            raise ValueError("nothing to embed: the input has no tokens")
        if len(tokens) > self.n_ctx:
            raise PromptTooLong(len(tokens), self.n_ctx)
        n_vocab = self.model.n_vocab
        # (llama.cpp would refuse the batch; ctypes would wrap an id of 2^32 and more to a real one)
        if (bad := next((t for t in tokens if not 0 <= t < n_vocab), None)) is not None:
            raise ValueError(f"token id {bad} is not in the model's vocabulary (0 to {n_vocab - 1})")
        with self._lock:
            self.ctx.clear()
            self._batch.clear()
            for pos, tok in enumerate(tokens):
                self._batch.add(tok, pos, 0, logits=True)
            self.ctx.decode(self._batch)
            yield

    def embed(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """For each text: its embedding and its token count."""
        out = []
        for text in texts:
            if (least := self.model.fewest_tokens(text)) > self.n_ctx:
                raise PromptTooLong(least, self.n_ctx, at_least=True)
            tokens = self.model.tokenize(text)
            out.append((self.embed_tokens(tokens), len(tokens)))
        return out

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()


def _finite(values: np.ndarray) -> np.ndarray:
    """``values``, if they are all numbers JSON can carry (NaN and infinity have no spelling)."""
    if not np.isfinite(values).all():
        raise NonFiniteOutput("embeddings or scores")
    return values
