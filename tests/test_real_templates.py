"""The guest's Jinja interpreter against jinja2 on real chat templates: every template shipped in
the pinned llama.cpp (models/templates), every conversation in jinja_oracle (plain and tool use).
Where jinja2 renders, the guest must render the same text; where jinja2 raises, the guest must
report an error (and never trap)."""

from __future__ import annotations

import pytest
from jinja_oracle import GuestRenderer, all_contexts, compile_jinja2

from llama_host.vendor import chat_templates_dir

# The share of templates that must match on every conversation. Raise it as the interpreter
# improves; never lower it to make a regression pass.
FLOOR = 1.0


@pytest.fixture(scope="module")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


def _compare(guest: GuestRenderer, source: str) -> list[str]:
    """The problems of one template: a line per conversation where the guest differs."""
    problems = []
    oracle = compile_jinja2(source)
    for label, context in all_contexts():
        want = oracle(context)
        got = guest.render(source, context)
        if want.text is None:
            if got.text is not None:
                problems.append(f"{label}: jinja2 raised ({want.error}) but the guest rendered")
        elif got.text is None:
            problems.append(f"{label}: the guest failed: {got.error}")
        elif got.text != want.text:
            at = next((i for i, (a, b) in enumerate(zip(got.text, want.text)) if a != b), min(len(got.text), len(want.text)))
            problems.append(f"{label}: differs at {at}: guest {got.text[max(0, at - 30):at + 40]!r} jinja2 {want.text[max(0, at - 30):at + 40]!r}")
    return problems


def test_real_templates_match_jinja2(guest):
    paths = sorted(chat_templates_dir().glob("*.jinja"))
    assert len(paths) > 10, f"no templates found in {chat_templates_dir()}"
    failures = {}
    for path in paths:
        problems = _compare(guest, path.read_text(encoding="utf-8"))
        if problems:
            failures[path.name] = problems
    share = 1 - len(failures) / len(paths)
    print(f"\n{len(paths) - len(failures)}/{len(paths)} templates match jinja2 on every conversation ({share:.0%})")
    for name, problems in failures.items():
        print(f"  FAIL {name}: {len(problems)} conversation(s), first: {problems[0]}")
    assert share >= FLOOR, f"only {share:.0%} of templates match (floor {FLOOR:.0%}): {sorted(failures)}"
