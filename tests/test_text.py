"""TextStream: UTF-8 reassembly and stop strings, piece by piece."""

from __future__ import annotations

import pytest

from llama_host.engine.text import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces] + [stream.finish()]


def test_character_split_across_tokens_is_held_until_complete():
    data = "é日🦙".encode()
    out = feed(TextStream(), [data[i : i + 1] for i in range(len(data))])
    assert "".join(out) == "é日🦙"
    assert out[0] == "" and out[1] == "é"  # the first byte alone is held
    assert all(len(o) <= 1 for o in out)


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"\xff", b"a"], "\ufffda"),  # never valid
        ([b"\xe6\x97", b"a"], "\ufffda"),  # a character cut short by the next one
        ([b"ok", b"\xe6\x97"], "ok\ufffd"),  # ...or by the end
        ([b"\xed\xa0\x80"], "\ufffd\ufffd\ufffd"),  # an encoded surrogate
        ([b"\xc0\xaf"], "\ufffd\ufffd"),  # overlong
    ],
)
def test_invalid_bytes_become_replacement_characters(pieces, expected):
    out = "".join(feed(TextStream(), pieces))
    assert out == expected
    out.encode("utf-8")


def test_stop_across_pieces_is_never_emitted():
    stream = TextStream(["</end>"])
    out = [stream.push(b"Hello </"), stream.push(b"en"), stream.push(b"d> more")]
    assert out == ["Hello ", "", ""]
    assert stream.stopped_by == "</end>"
    assert stream.finish() == "" and stream.push(b"x") == ""


def test_held_prefix_is_released_when_it_stops_matching():
    stream = TextStream(["STOP"])
    assert stream.push(b"a ST") == "a "
    assert stream.push(b"OR") == "STOR"
    assert stream.stopped_by is None


def test_held_prefix_is_released_at_the_end():
    stream = TextStream(["STOP"])
    assert stream.push(b"abc ST") == "abc "
    assert stream.finish() == "ST"


def test_earliest_of_several_stops_wins():
    stream = TextStream(["world", "lo w", "zzz"])
    assert stream.push(b"hello world") == "hel"
    assert stream.stopped_by == "lo w"


def test_stop_at_the_very_start_and_inside_a_multibyte_piece():
    stream = TextStream(["日本"])
    data = "日本語".encode()
    assert stream.push(data[:2]) == ""
    assert stream.push(data[2:5]) == ""  # 日 and two bytes of 本: 日 may start the stop
    assert stream.push(data[5:7]) == ""
    assert stream.stopped_by == "日本"


def test_overlapping_prefixes_hold_the_longest():
    stream = TextStream(["aab"])
    assert stream.push(b"xaa") == "x"
    assert stream.push(b"a") == "a"  # "aaa": only the last "aa" can still start "aab"
    assert stream.push(b"b") == ""
    assert stream.stopped_by == "aab"


def test_empty_stop_strings_are_ignored():
    stream = TextStream(["", ""])
    assert stream.push(b"text") == "text"


def test_concatenation_equals_the_whole_text_for_every_split():
    text = "Hello, wörld! STO STOP"
    data = text.encode()
    for cut in range(1, len(data)):
        out = "".join(feed(TextStream(["STOP"]), [data[:cut], data[cut:]]))
        assert out == "Hello, wörld! STO "
