"""A GGUF built with each real chat template (llama.cpp's models/templates) as its
tokenizer.chat_template serves a chat request with template `auto`: the prompt the guest renders
is the one jinja2 renders (same token count), and a template that refuses the conversation gives
a 400 with its message."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jinja_oracle import render_jinja2
from llama_host import modelgen
from llama_host.engine.engine import EngineConfig
from llama_host.preload import parse_preloads
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving
from llama_host.vendor import chat_templates_dir

TEMPLATES = sorted(p.name for p in chat_templates_dir().glob("*.jinja"))
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    folder = tmp_path_factory.mktemp("template-models")
    entries = []
    for i, name in enumerate(TEMPLATES):
        path = folder / f"t{i}.gguf"
        preset = dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=f"file:{name}")
        modelgen.write_model(preset, path, dtype="f32")
        entries.append(f"t{i}:GGML:CPU:{path}")
    with ModelRegistry.load(parse_preloads(entries), EngineConfig(ctx_size=8192, parallel=1, batch_size=512)) as reg:
        with Serving(reg, [ModelRoute.create(f"t{i}", f"t{i}", "auto") for i in range(len(TEMPLATES))]) as s:
            yield reg, s


@pytest.mark.parametrize("index", range(len(TEMPLATES)), ids=TEMPLATES)
def test_auto_serves_the_gguf_template(serving, index):
    registry, s = serving
    model = registry.get(f"t{index}").model
    # enable_thinking: passed, true unless turned off, as llama-server passes it
    want = render_jinja2(model.info.chat_template, {"messages": MESSAGES, "add_generation_prompt": True,
                                                   "enable_thinking": True, "bos_token": model.info.bos_token or "",
                                                   "eos_token": model.info.eos_token or ""})
    reply = s.call("chat", json.dumps({"model": f"t{index}", "messages": MESSAGES, "max_tokens": 2}).encode())
    body = json.loads(reply.body)
    if want.text is None:
        assert reply.status == 400 and body["error"]["code"] == "template_error", body
        return
    assert reply.status == 200, body
    assert body["usage"]["prompt_tokens"] == len(model.tokenize(want.text.encode()))
    assert body["choices"][0]["message"]["role"] == "assistant"
