"""Every prompt template in templates/, rendered by the guest and by jinja2 (as Hugging Face sets
it up), byte for byte, for a set of conversations (plain and tool use) with and without the
generation prompt. test_official_templates.py checks the same files against the official ones."""

from __future__ import annotations

import pytest

from jinja_oracle import GuestRenderer, all_contexts, render_jinja2
from llama_host.serving import template_names
from llama_host.vendor import templates_dir

# the names LlamaEdge users pass; each must exist
REQUIRED = [
    "llama-2-chat", "llama-3-chat", "mistral-instruct", "codellama-instruct", "chatml", "phi-3-chat",
    "gemma-instruct", "zephyr", "vicuna-1.1-chat", "openchat", "deepseek-chat", "deepseek-coder", "baichuan-2",
    "solar-instruct", "intel-neural", "human-assistant",
]


@pytest.fixture(scope="module")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


def test_every_llamaedge_name_has_a_template():
    assert set(REQUIRED) <= set(template_names())


@pytest.mark.parametrize("name", template_names())
def test_template_matches_jinja2(guest, name):
    source = (templates_dir() / f"{name}.jinja").read_text(encoding="utf-8")
    rendered = 0
    for conversation, context in all_contexts():
        expected = render_jinja2(source, context)
        got = guest.render(source, context)
        where = f"{name} / {conversation} / add_generation_prompt={context['add_generation_prompt']}"
        if expected.text is None:
            assert got.text is None, f"{where}: jinja2 raised ({expected.error}), the guest rendered"
        else:
            assert got.text == expected.text, f"{where}: {got.error or ''}"
            rendered += 1
    assert rendered > 0, f"{name} renders none of the conversations"
