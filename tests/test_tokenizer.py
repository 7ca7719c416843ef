"""Tokenizing against an independent oracle: the expected token ids that ship with llama.cpp's
vocab files (``models/ggml-vocab-*.gguf.inp/.out``, produced with the original tokenizers)."""

from __future__ import annotations

import pytest

from llama_host import vendor


def vocab_cases(name: str) -> list[tuple[str, list[int]]]:
    base = vendor.vocab_gguf(name)
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = base.with_name(base.name + ".out").read_text(encoding="utf-8").splitlines()
    if texts and texts[-1] == "":
        texts.pop()
    assert len(texts) == len(outs)
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


@pytest.mark.parametrize(("fixture", "vocab"), [("spm_model", "llama-spm"), ("bpe_model", "llama-bpe")])
def test_tokens_match_reference(request, fixture, vocab):
    model = request.getfixturevalue(fixture)
    cases = vocab_cases(vocab)
    assert len(cases) > 30
    mismatches = [
        (text, expected, got)
        for text, expected in cases
        if (got := model.tokenize(text, add_bos=False, special=False)) != expected
    ]
    assert not mismatches


def test_special_tokens_are_parsed(bpe_model):
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    with_special = bpe_model.tokenize(text, add_bos=False)
    assert with_special[0] == 128006 and 128009 in with_special  # one token each
    plain = bpe_model.tokenize(text, add_bos=False, special=False)
    assert 128006 not in plain and len(plain) > len(with_special)


def test_bos_added_as_the_model_asks_and_never_twice(spm_model, bpe_model):
    for model in (spm_model, bpe_model):
        bos = model.info.bos_id
        assert model.info.add_bos
        assert model.tokenize("Hi")[0] == bos
        doubled = model.tokenize(model.info.bos_token + "Hi")
        assert doubled[0] == bos and doubled[1] != bos
        assert model.tokenize("Hi", add_bos=False)[0] != bos


def test_pieces_rebuild_the_text(spm_model, bpe_model):
    text = "Hello wörld, 日本語 🦙 <tag>"
    for model in (spm_model, bpe_model):
        tokens = model.tokenize(text, add_bos=False, special=False)
        assert model.detokenize(tokens).strip() == text


def test_byte_tokens_are_partial_utf8(spm_model):
    # SPM byte-fallback: 🦙 is four byte tokens; each piece alone is not valid UTF-8.
    tokens = spm_model.tokenize("🦙", add_bos=False, special=False)
    pieces = [spm_model.piece(t) for t in tokens]
    assert b"".join(pieces).strip() == "🦙".encode()
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces)
    assert spm_model.detokenize(tokens[-1:]) == "\ufffd"


def test_empty_and_huge_text(tiny_model):
    assert tiny_model.tokenize("", add_bos=False) == []
    assert tiny_model.tokenize("") == [tiny_model.info.bos_id]
    huge = " ".join(["hello world"] * 20_000)
    assert len(tiny_model.tokenize(huge, add_bos=False)) == 40_000
