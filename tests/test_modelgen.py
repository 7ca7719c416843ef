"""The test-model generator: presets, determinism, real vocabularies, quantization."""

from __future__ import annotations

import gguf
import pytest

from llama_host import modelgen


def test_tiny_is_under_one_megabyte(model_path):
    assert model_path("tiny").stat().st_size < 1_000_000


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    preset = modelgen.PRESETS["tiny"]
    a = modelgen.write_model(preset, tmp_path / "a.gguf", seed=7, dtype="f32").read_bytes()
    b = modelgen.write_model(preset, tmp_path / "b.gguf", seed=7, dtype="f32").read_bytes()
    c = modelgen.write_model(preset, tmp_path / "c.gguf", seed=8, dtype="f32").read_bytes()
    assert a == b
    assert len(a) == len(c) and a != c


@pytest.mark.parametrize(("preset", "vocab"), [("spm", "llama-spm"), ("bpe", "llama-bpe")])
def test_real_vocabulary_is_copied_whole(model_path, preset, vocab):
    from llama_host import vendor

    ours = gguf.GGUFReader(model_path(preset)).fields
    theirs = gguf.GGUFReader(vendor.vocab_gguf(vocab)).fields
    keys = sorted(k for k in theirs if k.startswith("tokenizer."))
    assert keys, "the vocab GGUF has tokenizer keys"
    for key in keys:
        assert ours[key].contents() == theirs[key].contents(), key
    assert ours["general.architecture"].contents() == "llama"


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_file_has_quantized_tensors(model_path, quant):
    reader = gguf.GGUFReader(model_path("spm", quant))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper()
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == int(modelgen.QUANTS[quant])


def test_cache_reuses_the_file(model_path):
    first = model_path("tiny")
    mtime = first.stat().st_mtime_ns
    assert modelgen.build("tiny") == first
    assert first.stat().st_mtime_ns == mtime


def test_unknown_quant_is_refused():
    with pytest.raises(ValueError, match="accepted: f32, f16, q8_0, q4_0"):
        modelgen.build("tiny", quant="q3_k")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "tiny.gguf"
    assert modelgen.main(["tiny", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:4] == b"GGUF"
