"""Fuzzing the guest's Jinja interpreter against jinja2 (hypothesis, bounded for CI): random
templates assembled from the constructs chat templates use, mutated real templates, and random
message lists. The guest must never trap, and where jinja2 renders, the texts must be equal."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jinja_oracle import GuestRenderer, render_jinja2
from llama_host.vendor import chat_templates_dir

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

names = st.sampled_from(["messages", "m", "x", "loop", "ns", "add_generation_prompt", "bos_token", "tools", "nope"])
literals = st.one_of(
    st.integers(-3, 3).map(str), st.sampled_from(["'a'", '"b c"', "''", "none", "true", "false", "[1, 2]",
                                                   "{'k': 'v'}", "1.5", "'\\n'"]),
)
attrs = st.sampled_from([".role", ".content", "['role']", "['content']", "[0]", "[-1]", "[1:]", "|length", "|trim",
                         "|tojson", "|first", "|last", "|string", "|upper", ".strip()", ".split(' ')",
                         "|default('d')", "|join(',')", "|selectattr('role', 'equalto', 'user')|list", "|items|list",
                         " is defined", " is string", " is none", " is mapping", "|map(attribute='role')|list"])
ops = st.sampled_from([" + ", " ~ ", " == ", " != ", " and ", " or ", " in ", " not in ", " * ", " - ", " // ",
                       " % ", " < ", " is not "])


@st.composite
def expressions(draw, depth=0):
    kind = draw(st.integers(0, 4 if depth < 2 else 1))
    if kind == 0:
        return draw(literals)
    if kind == 1:
        return draw(names) + "".join(draw(st.lists(attrs, max_size=2)))
    if kind == 2:
        return draw(expressions(depth + 1)) + draw(ops) + draw(expressions(depth + 1))
    if kind == 3:
        return f"({draw(expressions(depth + 1))} if {draw(expressions(depth + 1))} else {draw(expressions(depth + 1))})"
    return f"not {draw(expressions(depth + 1))}"


@st.composite
def templates(draw, depth=0):
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 6 if depth < 2 else 2))
        ws = draw(st.sampled_from(["", "-"]))
        if kind == 0:
            parts.append(draw(st.sampled_from(["text", " ", "\n", "  x\n", "<|im_start|>", "é€🦙"])))
        elif kind == 1:
            parts.append(f"{{{{{ws} {draw(expressions())} {ws}}}}}")
        elif kind == 2:
            parts.append("{# c #}" + draw(st.sampled_from(["", "\n"])))
        elif kind == 3:
            parts.append(f"{{%{ws} for m in messages %}}{draw(templates(depth + 1))}{{% endfor {ws}%}}")
        elif kind == 4:
            parts.append(f"{{% if {draw(expressions())} %}}\n{draw(templates(depth + 1))}"
                         f"{{%- else %}}{draw(templates(depth + 1))}{{% endif %}}\n")
        elif kind == 5:
            parts.append(f"{{% set x = {draw(expressions())} %}}")
        else:
            parts.append(f"{{% set ns = namespace(v={draw(expressions())}) %}}{{% for m in messages %}}"
                         f"{{% set ns.v = m.role %}}{{% endfor %}}{{{{ ns.v }}}}")
    return "".join(parts)


contents = st.one_of(st.text(max_size=12), st.sampled_from(["", " hi ", "<s>", "{{ x }}", "\u00e9\u4e16\U0001f999"]))
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                           "content": contents}), max_size=4)


@pytest.fixture(scope="module")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


def check(guest: GuestRenderer, source: str, context: dict) -> None:
    got = guest.render(source, context)  # raises if the guest trapped
    want = render_jinja2(source, context)
    if want.text is not None:
        assert got.text == want.text, f"{source!r}: guest failed with {got.error}" if got.text is None else source


@FUZZ
@given(source=templates(), msgs=messages, add=st.booleans())
def test_random_templates(guest, source, msgs, add):
    check(guest, source, {"messages": msgs, "add_generation_prompt": add, "bos_token": "<s>", "eos_token": "</s>"})


REAL = sorted(p.read_text(encoding="utf-8") for p in chat_templates_dir().glob("*.jinja"))


@FUZZ
@given(index=st.integers(0, len(REAL) - 1), cut=st.floats(0, 1), length=st.integers(0, 12),
       insert=st.sampled_from(["", "{%", "}}", "{{", "%}", "'", "(", "{% endif %}", "{% endfor %}", "|", "[", "-"]),
       msgs=messages)
def test_mutated_real_templates(guest, index, cut, length, insert, msgs):
    source = REAL[index]
    at = int(cut * len(source))
    mutated = source[:at] + insert + source[at + length:]
    check(guest, mutated, {"messages": msgs, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"})
