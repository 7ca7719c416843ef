"""Generation for a single sequence: the simplest complete use of model, context and sampler.

The batching scheduler serves many sequences at once; this loop is the reference it is checked
against, and what one-off tools use.
"""

from __future__ import annotations

from collections.abc import Iterator

from llama_host.engine.context import Batch, Context
from llama_host.engine.request import FinishReason
from llama_host.engine.sampling import GREEDY, Sampler, SamplingParams
from llama_host.errors import PromptTooLong


class Generation:
    """Iterate to get tokens; afterwards ``finish_reason`` says why it ended."""

    def __init__(
        self, ctx: Context, prompt: list[int], params: SamplingParams = GREEDY, *, max_tokens: int = 128
    ) -> None:
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if len(prompt) >= ctx.n_ctx:
            raise PromptTooLong(len(prompt), ctx.n_ctx)
        self.ctx = ctx
        self.prompt = prompt
        self.params = params
        self.max_tokens = max_tokens
        self.finish_reason: FinishReason | None = None

    def __iter__(self) -> Iterator[int]:
        ctx, model = self.ctx, self.ctx.model
        ctx.clear()
        sampler = Sampler(model, self.params, context=ctx.n_ctx, prompt=self.prompt)
        with sampler, Batch(ctx.n_batch) as batch:
            pos = 0
            for start in range(0, len(self.prompt), ctx.n_batch):
                batch.clear()
                chunk = self.prompt[start : start + ctx.n_batch]
                for i, tok in enumerate(chunk):
                    batch.add(tok, pos + i, 0, logits=start + i == len(self.prompt) - 1)
                ctx.decode(batch)
                pos += len(chunk)
            for _ in range(self.max_tokens):
                tok = sampler.sample(ctx, batch.n_tokens - 1)
                if model.is_eog(tok):
                    self.finish_reason = FinishReason.STOP
                    return
                yield tok
                if pos >= ctx.n_ctx:
                    break
                batch.clear()
                batch.add(tok, pos, 0, logits=True)
                ctx.decode(batch)
                pos += 1
            self.finish_reason = FinishReason.LENGTH


def generate(ctx: Context, prompt: list[int], params: SamplingParams = GREEDY, *, max_tokens: int = 128) -> list[int]:
    return list(Generation(ctx, prompt, params, max_tokens=max_tokens))
