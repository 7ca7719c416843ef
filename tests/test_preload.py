"""Every rule of --nn-preload parsing (DESIGN: Command line)."""

from __future__ import annotations

import pytest

from llama_host.engine.model import Target
from llama_host.preload import PreloadError, parse_preload, parse_preloads


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_basic_entry(gguf_file):
    p = parse_preload(f"default:GGML:CPU:{gguf_file}")
    assert (p.name, p.encoding, p.target, p.path) == ("default", "GGML", Target.CPU, gguf_file)


@pytest.mark.parametrize(
    ("encoding", "target", "expected"),
    [("ggml", "gpu", Target.GPU), ("Ggml", "Auto", Target.AUTO), ("GGML", "cpu", Target.CPU), ("GGML", "AUTO", Target.AUTO)],
)
def test_encoding_and_target_are_case_insensitive(gguf_file, encoding, target, expected):
    p = parse_preload(f"m:{encoding}:{target}:{gguf_file}")
    assert p.encoding == "GGML"
    assert p.target is expected


def test_path_may_contain_colons(tmp_path):
    folder = tmp_path / "a:b"
    folder.mkdir()
    path = folder / "model:v2.gguf"
    path.write_bytes(b"GGUF\x03\0\0\0")
    assert parse_preload(f"m:GGML:CPU:{path}").path == path


def test_repeated_name_is_refused(gguf_file):
    first = f"default:GGML:CPU:{gguf_file}"
    second = f"default:GGML:GPU:{gguf_file}"
    with pytest.raises(PreloadError) as err:
        parse_preloads([first, second])
    assert err.value.entry == second
    assert "already preloaded" in str(err.value) and first in str(err.value)


def test_several_names(gguf_file):
    preloads = parse_preloads([f"a:GGML:CPU:{gguf_file}", f"b:GGML:AUTO:{gguf_file}"])
    assert [p.name for p in preloads] == ["a", "b"]


@pytest.mark.parametrize("encoding", ["ONNX", "pytorch", "openvino", "", "GGUF"])
def test_unknown_encoding(gguf_file, encoding):
    entry = f"m:{encoding}:CPU:{gguf_file}"
    with pytest.raises(PreloadError) as err:
        parse_preload(entry)
    message = str(err.value)
    assert entry in message
    assert f"unknown encoding {encoding!r}" in message and "accepted: GGML" in message


@pytest.mark.parametrize("target", ["TPU", "cuda", "", "gpu0"])
def test_unknown_target(gguf_file, target):
    entry = f"m:GGML:{target}:{gguf_file}"
    with pytest.raises(PreloadError) as err:
        parse_preload(entry)
    message = str(err.value)
    assert entry in message
    assert f"unknown target {target!r}" in message and "CPU, GPU, AUTO" in message


def test_missing_file(tmp_path):
    entry = f"m:GGML:CPU:{tmp_path / 'nope.gguf'}"
    with pytest.raises(PreloadError) as err:
        parse_preload(entry)
    assert entry in str(err.value) and "not found" in str(err.value)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(PreloadError, match="not a regular file"):
        parse_preload(f"m:GGML:CPU:{tmp_path}")


@pytest.mark.parametrize("content", [b"", b"GGU", b"\x89PNG\r\n\x1a\n", b"ggml" + b"\0" * 8, b"PK\x03\x04"])
def test_file_that_is_not_gguf(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    entry = f"m:GGML:CPU:{path}"
    with pytest.raises(PreloadError) as err:
        parse_preload(entry)
    assert entry in str(err.value) and "not a GGUF file" in str(err.value)


@pytest.mark.parametrize("entry", ["model.gguf", "m:GGML:model.gguf", "m:GGML:CPU", ""])
def test_too_few_fields(entry):
    with pytest.raises(PreloadError, match="expected NAME:ENCODING:TARGET:PATH"):
        parse_preload(entry)


def test_empty_path():
    with pytest.raises(PreloadError, match="path is empty"):
        parse_preload("m:GGML:CPU:")


@pytest.mark.parametrize("name", ["", "my model", "a/b", "ü"])
def test_bad_name(gguf_file, name):
    with pytest.raises(PreloadError, match="the name"):
        parse_preload(f"{name}:GGML:CPU:{gguf_file}")

