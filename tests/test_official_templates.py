"""Every named template that stands for a model family with an official chat template renders what
that official template renders: the guest renders templates/<name>.jinja, an independent oracle
renders the official one, and the bytes must be equal, over every conversation of jinja_oracle, with
and without the generation prompt.

The oracles are read from disk, never copied into this repository:
- jinja2 rendering the official template text where the pinned sources carry it: llama.cpp's
  models/templates/*.jinja and the template strings of its tests/test-chat-template.cpp,
  llama-cpp-python's llama_chat_format.py constants, or modelgen's copy of Meta's Llama 2 template;
- llama.cpp's built-in templates (llama_chat_apply_template, src/llama-chat.cpp), an independent
  implementation, where they match the official layout (they write no BOS: the oracle adds it);
- for formats neither carries (Vicuna's FastChat format, Code Llama 70B, SOLAR), the layout written
  out here from the model card or tokenizer_config, or llama-cpp-python's own implementation of it.
A source that is missing fails the test: nothing is skipped.

templates/README.md says, per name, which official template it matches."""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
import llama_cpp.llama_chat_format as lcf
import pytest

from jinja_oracle import CONVERSATIONS, GuestRenderer, render_jinja2
from llama_host import modelgen
from llama_host.engine.engine import EngineConfig
from llama_host.preload import parse_preloads
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving, template_names
from llama_host.vendor import chat_templates_dir, llama_cpp_source, templates_dir

Messages = list[dict]
Render = Callable[[Messages, bool], "str | None"]  # None: the official template raises


# --- where the official templates come from -----------------------------------------------------


def models_template(file: str) -> str:
    path = chat_templates_dir() / file
    assert path.is_file(), f"{path} is missing: the pinned llama.cpp source must carry it"
    return path.read_text(encoding="utf-8")


_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def cpp_test_template(case: str) -> str:
    """The template_str of the test case named `case` in llama.cpp's tests/test-chat-template.cpp."""
    path = llama_cpp_source() / "tests" / "test-chat-template.cpp"
    assert path.is_file(), f"{path} is missing"
    text = path.read_text(encoding="utf-8")
    name = f'/* .name= */ "{case}"'
    assert name in text, f"no test case {case!r} in {path}"
    start = text.index("/* .template_str= */", text.index(name)) + len("/* .template_str= */")
    m = re.compile(r'\s*(?:U8C\()?"').match(text, start)
    assert m, f"cannot read the template of {case!r}"
    out, i = [], m.end()
    while text[i] != '"':
        if text[i] == "\\":
            out.append(_C_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def llama_cpp_python_template(constant: str) -> str:
    template = getattr(lcf, constant, None)
    assert isinstance(template, str), f"llama_cpp.llama_chat_format has no {constant}"
    return template


def jinja(source: str, bos: str, eos: str) -> Render:
    def render(messages: Messages, add: bool) -> str | None:
        context = {"messages": messages, "add_generation_prompt": add, "bos_token": bos, "eos_token": eos}
        return render_jinja2(source, context).text

    return render


def builtin(name: str, bos: str = "", replace: dict[str, str] | None = None) -> Render:
    """llama.cpp's built-in template `name` (no jinja): BOS prepended, tokens replaced."""

    def render(messages: Messages, add: bool) -> str | None:
        chat = (llama_cpp.llama_chat_message * len(messages))()
        keep = []
        for i, m in enumerate(messages):
            role, content = m["role"].encode(), (m["content"] or "").encode()
            keep += [role, content]
            chat[i].role, chat[i].content = role, content
        size = 1024
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add, buf, size)
            assert n >= 0, f"llama.cpp has no built-in template {name!r}"
            if n <= size:
                break
            size = n
        text = bos + buf.raw[:n].decode("utf-8")
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        return text

    return render


def vicuna_fastchat(messages: Messages, add: bool) -> str | None:
    """FastChat's vicuna_v1.1 conversation (ADD_COLON_TWO, sep ' ', sep2 '</s>'), through
    llama-cpp-python's implementation of that separator style; the system message is the
    request's first one, else FastChat's default; other roles are refused, as FastChat does."""
    system = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
    if messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    roles = {"user": "USER", "assistant": "ASSISTANT"}
    if any(m["role"] not in roles for m in messages):
        return None
    turns = [(roles[m["role"]], m["content"]) for m in messages] + ([("ASSISTANT", None)] if add else [])
    text = lcf._format_add_colon_two(system, turns, " ", "</s>")
    return text


def codellama_70b(messages: Messages, add: bool) -> str | None:
    """Code Llama 70B Instruct, as its model card builds the prompt by hand ('Source: {role}\\n\\n
    {content.strip()} <step> ' per message, then 'Source: assistant\\nDestination: user\\n\\n '),
    with its tokenizer_config template's alternation check. The official template always ends with
    the generation prompt; ours only when it is asked for."""
    offset = 1 if messages[0]["role"] == "system" else 0
    if any((m["role"] == "user") != ((i + offset) % 2 == 0) for i, m in enumerate(messages)):
        return None
    text = "<s>" + "".join(f"Source: {m['role']}\n\n {m['content'].strip()} <step> " for m in messages)
    return text + ("Source: assistant\nDestination: user\n\n " if add else "")


def solar(messages: Messages, add: bool) -> str:
    """upstage/SOLAR-10.7B-Instruct-v1.0's tokenizer_config chat_template, written out: '### System:'
    (when it has text), '### User:' turns followed by a blank line, '### Assistant:' turns followed
    by nothing; '### Assistant:\\n' after the last message when the generation prompt is asked for.
    (Other roles: ours raises where Upstage's drops them; `raises` below.)"""
    out = []
    for m in messages:
        if m["role"] == "system" and m["content"]:
            out.append("### System:\n" + m["content"] + "\n\n")
        elif m["role"] == "user":
            out.append("### User:\n" + m["content"] + "\n\n")
        elif m["role"] == "assistant":
            out.append("### Assistant:\n" + m["content"])
    return "".join(out) + ("### Assistant:\n" if add else "")


def without_think(render: Render) -> Render:
    """DeepSeek-R1-Distill's template is DeepSeek-V3's layout with a think block opened at the
    generation prompt: V3 ends the prompt at <｜Assistant｜>."""

    def strip(messages: Messages, add: bool) -> str | None:
        text = render(messages, add)
        return text[: -len("<think>\n")] if text is not None and add and text.endswith("<｜Assistant｜><think>\n") else text

    return strip


# --- per name: the official renderings to match -------------------------------------------------


@dataclass
class Official:
    source: str  # the official template, for messages
    render: Render
    judges: Callable[[str, bool], bool] = lambda conversation, add: True  # where this oracle applies


@dataclass
class Spec:
    officials: list[Official]
    # conversations the official template renders by dropping a message unseen (a tool result),
    # where ours raises instead, so that nothing is left out silently
    raises: frozenset[str] = field(default_factory=frozenset)


LLAMA2 = jinja(modelgen._LLAMA2_TEMPLATE, "<s>", "</s>")  # Meta's Llama-2-7b-chat-hf template
DEEPSEEK_BOS, DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
NO_TOOL = frozenset({"tool"})


def _but(*names: str) -> Callable[[str, bool], bool]:
    return lambda conversation, add: conversation not in names


def _has_system(conversation: str) -> bool:
    return CONVERSATIONS[conversation][0]["role"] == "system"


SPECS: dict[str, Spec] = {
    "chatml": Spec([
        Official("teknium/OpenHermes-2.5-Mistral-7B (llama-cpp-python CHATML_CHAT_TEMPLATE)",
                 jinja(llama_cpp_python_template("CHATML_CHAT_TEMPLATE"), "<s>", "<|im_end|>")),
        Official("teknium/OpenHermes-2.5-Mistral-7B (llama.cpp tests)",
                 jinja(cpp_test_template("teknium/OpenHermes-2.5-Mistral-7B"), "<s>", "<|im_end|>")),
        Official("llama.cpp built-in chatml (llama-server's fallback)", builtin("chatml")),
    ]),
    "llama-2-chat": Spec([Official("meta-llama/Llama-2-7b-chat-hf (modelgen._LLAMA2_TEMPLATE)", LLAMA2)]),
    "codellama-instruct": Spec([Official("codellama/CodeLlama-*-Instruct-hf (Llama 2's template)", LLAMA2)]),
    "llama-3-chat": Spec([
        Official("meta-llama/Meta-Llama-3-8B-Instruct (llama-cpp-python LLAMA3_INSTRUCT_CHAT_TEMPLATE)",
                 jinja(llama_cpp_python_template("LLAMA3_INSTRUCT_CHAT_TEMPLATE"), "<|begin_of_text|>", "<|eot_id|>")),
        Official("llama.cpp built-in llama3", builtin("llama3", bos="<|begin_of_text|>")),
    ]),
    "mistral-instruct": Spec([
        Official("mistralai/Mistral-7B-Instruct-v0.2, 'v1' template with a system prompt (llama.cpp tests)",
                 jinja(cpp_test_template("mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)"),
                       "<s>", "</s>")),
        # llama.cpp's built-in renders every role; it matches where the official one renders
        Official("llama.cpp built-in mistral-v1", builtin("mistral-v1", bos="<s>"), _but("tool")),
    ]),
    "gemma-instruct": Spec([
        # Gemma 2's template raises on a system message; Gemma 3's (which ours follows) folds it into
        # the first user turn, as llama.cpp's built-in does
        Official("google/gemma-2-2b-it (models/templates)",
                 jinja(models_template("google-gemma-2-2b-it.jinja"), "<bos>", "<eos>"),
                 lambda conversation, add: not _has_system(conversation)),
        Official("llama.cpp built-in gemma (Gemma 3's system folding)", builtin("gemma", bos="<bos>"),
                 lambda conversation, add: _has_system(conversation)),
    ]),
    "phi-3-chat": Spec([Official("microsoft/Phi-3.5-mini-instruct (models/templates)",
                                 jinja(models_template("microsoft-Phi-3.5-mini-instruct.jinja"), "<s>", "<|endoftext|>"))],
                       raises=NO_TOOL),
    "phi-3-instruct": Spec([Official("microsoft/Phi-3.5-mini-instruct (models/templates)",
                                     jinja(models_template("microsoft-Phi-3.5-mini-instruct.jinja"), "<s>", "<|endoftext|>"))],
                           raises=NO_TOOL),
    "phi-4-chat": Spec([
        Official("llama.cpp built-in phi4 (microsoft/phi-4's current template)", builtin("phi4"), _but("tool")),
        # the older phi-4 template in llama.cpp's tests writes the assistant header after every user
        # turn: the same bytes where a generation prompt follows the last (user) message
        Official("microsoft/phi-4, older template (llama.cpp tests)",
                 jinja(cpp_test_template("phi-4"), "<|endoftext|>", "<|im_end|>"),
                 lambda conversation, add: add and CONVERSATIONS[conversation][-1]["role"] == "user"),
    ], raises=NO_TOOL),
    "zephyr": Spec([Official("HuggingFaceH4/zephyr-7b-beta: llama.cpp built-in zephyr, with Zephyr's EOS </s>",
                             builtin("zephyr", replace={"<|endoftext|>": "</s>"}), _but("tool"))], raises=NO_TOOL),
    "stablelm-zephyr": Spec([Official("stabilityai/stablelm-zephyr-3b: llama.cpp built-in zephyr",
                                      builtin("zephyr"), _but("tool"))], raises=NO_TOOL),
    "openchat": Spec([Official("openchat/openchat-3.5-0106 (llama.cpp tests)",
                               jinja(cpp_test_template("openchat/openchat-3.5-0106"), "<s>", "<|end_of_turn|>"))]),
    "vicuna-1.1-chat": Spec([Official("FastChat vicuna_v1.1 (llama-cpp-python's ADD_COLON_TWO)", vicuna_fastchat)]),
    "deepseek-chat": Spec([
        Official("deepseek-ai/deepseek-llm-7b-chat = DeepSeek-V2-Chat (llama.cpp tests)",
                 jinja(cpp_test_template("DeepSeek-V2"), DEEPSEEK_BOS, DEEPSEEK_EOS)),
        Official("llama.cpp built-in deepseek2", builtin("deepseek2", bos=DEEPSEEK_BOS), _but("tool")),
    ], raises=NO_TOOL),
    "deepseek-chat-2": Spec([
        Official("deepseek-ai/DeepSeek-V2-Chat (llama.cpp tests)",
                 jinja(cpp_test_template("DeepSeek-V2"), DEEPSEEK_BOS, DEEPSEEK_EOS)),
        Official("llama.cpp built-in deepseek2", builtin("deepseek2", bos=DEEPSEEK_BOS), _but("tool")),
    ], raises=NO_TOOL),
    "deepseek-chat-25": Spec([Official("DeepSeek-V3's layout: DeepSeek-R1-Distill-Llama-8B (models/templates) without <think>",
                                       without_think(jinja(models_template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
                                                           DEEPSEEK_BOS, DEEPSEEK_EOS)))]),
    "deepseek-chat-3": Spec([Official("DeepSeek-V3's layout: DeepSeek-R1-Distill-Llama-8B (models/templates) without <think>",
                                      without_think(jinja(models_template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
                                                          DEEPSEEK_BOS, DEEPSEEK_EOS)))]),
    "deepseek-coder": Spec([Official("deepseek-ai/deepseek-coder-33b-instruct (llama.cpp tests)",
                                     jinja(cpp_test_template("deepseek-ai/deepseek-coder-33b-instruct"), DEEPSEEK_BOS, "<|EOT|>"))]),
    "glm-4-chat": Spec([
        Official("THUDM/glm-4-9b-chat (llama.cpp tests: ChatGLM4)", jinja(cpp_test_template("ChatGLM4"), "", "<|endoftext|>")),
        # the built-in writes empty messages, GLM-4's template leaves them out
        Official("llama.cpp built-in chatglm4", builtin("chatglm4"), _but("empty-content")),
    ]),
    "codellama-super-instruct": Spec([Official("codellama/CodeLlama-70b-Instruct-hf (model card)", codellama_70b)]),
    "solar-instruct": Spec([Official("upstage/SOLAR-10.7B-Instruct-v1.0 (tokenizer_config)", solar, _but("tool"))],
                           raises=NO_TOOL),
}

# Names whose family has no official chat template (or no family): they stay LlamaEdge's prompts
# (with system messages folded in or refused rather than dropped), checked against jinja2 only.
LLAMAEDGE = {
    "chatml-llamaedge", "baichuan-2", "belle-llama-2-chat", "human-assistant", "intel-neural", "mistrallite",
    "octopus", "phi-2-chat", "phi-2-instruct", "vicuna-1.0-chat", "wizard-coder",
}


@pytest.fixture(scope="module")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


def source(name: str) -> str:
    return (templates_dir() / f"{name}.jinja").read_text(encoding="utf-8")


def render_ours(guest: GuestRenderer, name: str, messages: Messages, add: bool) -> str | None:
    # the tokens make no difference: named templates write their family's tokens as text
    return guest.render(source(name), {"messages": messages, "add_generation_prompt": add,
                                       "bos_token": "<BOS?>", "eos_token": "<EOS?>"}).text


def test_every_name_is_classified():
    names = set(template_names())
    assert names == set(SPECS) | LLAMAEDGE, (names - set(SPECS) - LLAMAEDGE, (set(SPECS) | LLAMAEDGE) - names)
    assert not set(SPECS) & LLAMAEDGE


@pytest.mark.parametrize("name", sorted(SPECS))
def test_named_template_renders_the_official_bytes(guest, name):
    spec = SPECS[name]
    compared = 0
    for conversation, messages in CONVERSATIONS.items():
        for add in (True, False):
            got = render_ours(guest, name, messages, add)
            where = f"{name} / {conversation} / add_generation_prompt={add}"
            if conversation in spec.raises:
                assert got is None, f"{where}: should refuse (the official template drops a message), rendered {got!r}"
                continue
            for official in spec.officials:
                if not official.judges(conversation, add):
                    continue
                want = official.render(messages, add)
                if want is None:
                    assert got is None, f"{where}: {official.source} raises, ours rendered {got!r}"
                else:
                    assert got == want, f"{where}: differs from {official.source}\n ours: {got!r}\n want: {want!r}"
                    compared += 1
    assert compared >= 8, f"{name}: only {compared} renderings compared"


def test_the_fixed_conversations_cover_what_the_issue_asks():
    kinds = CONVERSATIONS
    assert kinds["user"][0]["role"] == "user" and kinds["system-user"][0]["role"] == "system"
    assert len(kinds["multi-turn"]) >= 4 and any(not m["content"] for m in kinds["empty-content"])
    assert any(ord(c) > 0xFFFF for c in kinds["unicode"][0]["content"])  # beyond the BMP, too


# --- system messages are never dropped silently ---------------------------------------------------

SYSTEM_TEXT = "Answer in French."
SYSTEM_CASES = {
    "first": [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": "Hello"}],
    "first-then-turns": [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": "Hello"},
                         {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Again"}],
    "late": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
             {"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": "Again"}],
    "late-odd": [{"role": "user", "content": "Hello"}, {"role": "system", "content": SYSTEM_TEXT},
                 {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Again"}],
}


@pytest.mark.parametrize("name", sorted(set(SPECS) | LLAMAEDGE))
def test_system_messages_are_never_dropped_silently(guest, name):
    for case, messages in SYSTEM_CASES.items():
        got = render_ours(guest, name, messages, True)
        assert got is None or SYSTEM_TEXT in got, f"{name} / {case}: the system message is gone: {got!r}"
        if case.startswith("first"):
            assert got is not None, f"{name} / {case}: a first system message must be rendered"


def test_families_without_a_system_role_fold_it_as_their_official_template(guest):
    messages = SYSTEM_CASES["first"]
    assert render_ours(guest, "gemma-instruct", messages, True) == (
        "<bos><start_of_turn>user\nAnswer in French.\n\nHello<end_of_turn>\n<start_of_turn>model\n")
    assert render_ours(guest, "mistral-instruct", messages, True) == "<s> [INST] Answer in French.\n\nHello [/INST]"
    assert render_ours(guest, "human-assistant", messages, True) == "Human: \nAnswer in French.\n\nHello\n\nAssistant:\n"


# --- through the guest's OpenAI API: the auto fallback and template errors -----------------------

CHAT = [{"role": "user", "content": "Hello"}]
PLAIN_CHATML = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import dataclasses

    folder = tmp_path_factory.mktemp("fallback-models")
    preloads = []
    for name, template in (("bare", None), ("blank", "  \n")):
        path = folder / f"{name}.gguf"
        modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=template), path, dtype="f32")
        preloads.append(f"{name}:GGML:CPU:{path}")
    with ModelRegistry.load(parse_preloads(preloads), EngineConfig(ctx_size=256, parallel=1)) as reg:
        yield reg


def apply_template(serving: Serving, body: dict) -> tuple[int, dict]:
    reply = serving.call("apply-template", json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


def test_auto_without_a_template_is_plain_chatml_as_llama_server(registry, caplog):
    routes = [ModelRoute.create("bare", "bare", "auto"), ModelRoute.create("blank", "blank", "auto")]
    with Serving(registry, routes) as s, caplog.at_level("WARNING", logger="llama_host.guest"):
        for model, why in (("bare", "has no chat template"), ("blank", "has an empty chat template")):
            caplog.clear()
            status, body = apply_template(s, {"model": model, "messages": CHAT})
            assert status == 200 and body["prompt"] == PLAIN_CHATML == builtin("chatml")(CHAT, True), body
            assert why in caplog.text and "'chatml'" in caplog.text and f"'{model}'" in caplog.text, caplog.text
            status, body = apply_template(s, {"model": model, "messages": [{"role": "system", "content": "S"}, *CHAT]})
            assert body["prompt"] == "<|im_start|>system\nS<|im_end|>\n" + PLAIN_CHATML
    assert "Answer as concisely" not in source("chatml")


def test_a_template_refusal_is_a_400_openai_error(registry):
    routes = [ModelRoute.create("mistral", "bare", "mistral-instruct"), ModelRoute.create("phi3", "bare", "phi-3-chat")]
    with Serving(registry, routes) as s:
        status, body = apply_template(s, {"model": "mistral", "messages": [*CHAT, *CHAT]})
        assert status == 400, body
        error = body["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "template_error", error
        assert error["message"].startswith("the chat template failed: ") and "must alternate" in error["message"]
        tool = [*CHAT, {"role": "assistant", "content": "Let me look."}, {"role": "tool", "content": "21"}]
        status, body = apply_template(s, {"model": "phi3", "messages": tool})
        assert status == 400 and "no tool role" in body["error"]["message"], body
        status, body = apply_template(s, {"model": "mistral", "messages": [{"role": "system", "content": "S"}, *CHAT]})
        assert status == 200 and body["prompt"] == "<s> [INST] S\n\nHello [/INST]", body
