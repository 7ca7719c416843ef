"""The built-in chat page at ``/``, driven in headless Chromium as a person uses it: Debian's
``chromium`` (installed by .ci/run), steered by Playwright (no browser downloads), against a real
``llama-host`` subprocess serving the tiny random-weights model."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from live import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium on PATH (Debian: apt-get install chromium)")

ARTIFACTS = Path(__file__).parent / "artifacts"
DONE = '.message.assistant[data-done="true"]'


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(model_path):
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--model-name", "tiny,gpt-3.5-turbo",
                "--ctx-size", "8192", "--parallel", "2", "tiny", "chatml"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def keyed_server(model_path):
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--ctx-size", "1024", "--parallel", "1",
                "--api-key", "sesame", "tiny", "chatml"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector('#model[data-loaded]', state="attached")


def settings(page, **fields):
    for name, value in fields.items():
        page.fill("#" + name.replace("api_key", "api-key"), value)


def assistant_texts(page) -> list[str]:
    return page.locator(".message.assistant .content").all_inner_texts()


def chat_posts(page) -> list[dict]:
    posts: list[dict] = []
    page.on("request", lambda r: posts.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/v1/chat/completions") else None)
    return posts


def busy_sequences(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(v) for v in re.findall(r"^llama_host_busy_sequences\{[^}]*\} (\S+)$", text, re.M))


def test_page_is_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # works offline: no external scripts, styles or fonts
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)
    assert "innerHTML" not in r.text  # model output goes in as text, never as markup


def test_models_streaming_and_history(page, server):
    posts = chat_posts(page)
    open_page(page, server)
    ids = page.locator("#model option").evaluate_all("os => os.map(o => o.value)")
    assert ids == ["tiny", "gpt-3.5-turbo"]
    settings(page, system="You are terse.", temperature="0.7", top_p="0.9", max_tokens="40", seed="7",
             extra='{"ignore_eos": true}')

    # Shift+Enter is a newline, Enter sends
    page.click("#input")
    page.keyboard.type("Hello")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("there!")
    assert page.input_value("#input") == "Hello\nthere!"
    with page.expect_response("**/v1/chat/completions") as response:
        page.keyboard.press("Enter")
    assert response.value.status == 200
    assert response.value.headers["content-type"].startswith("text/event-stream")
    page.wait_for_selector(DONE, timeout=30_000)
    assert page.input_value("#input") == ""
    assert page.locator(".message.user .content").all_inner_texts() == ["Hello\nthere!"]
    first = assistant_texts(page)
    assert len(first) == 1 and first[0].strip()
    assert "tokens" in page.inner_text(".message.assistant .meta")
    assert posts[0] == {
        "ignore_eos": True, "model": "tiny", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Hello\nthere!"}],
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 40, "seed": 7,
    }

    # second turn, on the other model id, with the Send button: the whole conversation is re-sent
    page.select_option("#model", "gpt-3.5-turbo")
    page.fill("#input", "And then?")
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('{DONE}').length === 2", timeout=30_000)
    texts = assistant_texts(page)
    assert len(texts) == 2 and texts[1].strip()
    assert posts[1]["model"] == "gpt-3.5-turbo"
    assert posts[1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello\nthere!"},
        {"role": "assistant", "content": texts[0]},
        {"role": "user", "content": "And then?"},
    ]
    # roles in order on screen; the page scrolled to the newest reply
    roles = page.locator(".message").evaluate_all("ms => ms.map(m => m.classList[1])")
    assert roles == ["user", "assistant", "user", "assistant"]
    gap = "(m => m.scrollHeight - m.scrollTop - m.clientHeight)(document.getElementById('messages'))"
    assert page.evaluate(gap) < 80
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)

    # settings survive a reload (localStorage); "New chat" empties the conversation
    page.reload()
    page.wait_for_selector('#model[data-loaded="true"]', state="attached")
    assert page.input_value("#system") == "You are terse." and page.input_value("#max_tokens") == "40"
    assert page.input_value("#model") == "gpt-3.5-turbo"
    page.fill("#input", "fresh start")
    page.click("#send")
    page.wait_for_selector(DONE, timeout=30_000)
    assert [m["role"] for m in posts[2]["messages"]] == ["system", "user"]
    page.click("#new-chat")
    assert page.locator(".message").count() == 0 and page.is_visible("#empty")


def test_stop_keeps_partial_text_and_frees_the_sequence(page, server):
    posts = chat_posts(page)
    open_page(page, server)
    settings(page, max_tokens="8000", extra='{"ignore_eos": true}')
    page.fill("#input", "Talk for a long time.")
    page.click("#send")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    # the reply shows as it streams: it grows on screen while the server is still generating
    content = "document.querySelector('.message.assistant .content').textContent.length"
    page.wait_for_function(f"{content} > 20", timeout=30_000)
    shown = page.evaluate(content)
    page.wait_for_function(f"{content} > {shown}", timeout=10_000)
    assert busy_sequences(server) == 1 and page.get_attribute(".message.assistant", "data-done") is None
    page.click("#stop")
    page.wait_for_selector(DONE + '[data-stopped="true"]', timeout=10_000)
    partial = assistant_texts(page)[0]
    assert partial.strip()
    time.sleep(0.5)
    assert assistant_texts(page)[0] == partial  # it stopped growing
    assert "stopped" in page.inner_text(".message.assistant .meta")
    assert page.is_disabled("#stop") and page.is_enabled("#send")
    deadline = time.monotonic() + 10
    while busy_sequences(server) != 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.1)

    # the partial reply is part of the conversation
    settings(page, max_tokens="5")
    page.fill("#input", "Go on.")
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('{DONE}').length === 2", timeout=30_000)
    assert posts[1]["messages"][1] == {"role": "assistant", "content": partial}

    # Esc stops too
    settings(page, max_tokens="8000")
    page.fill("#input", "Once more, at length.")
    page.click("#send")
    third = "document.querySelectorAll('.message.assistant .content')[2]"
    page.wait_for_function(f"{third} && {third}.textContent.length > 0", timeout=30_000)
    page.keyboard.press("Escape")
    stopped = DONE + '[data-stopped="true"]'
    page.wait_for_function(f"document.querySelectorAll('{stopped}').length === 2", timeout=10_000)


def test_errors_are_shown(page, server):
    open_page(page, server)
    # a 400 from the server: its message is shown, the turn is left out of the history and the
    # text is given back for another try
    settings(page, extra='{"max_tokens": -5}')
    page.fill("#input", "hi")
    page.click("#send")
    page.wait_for_selector(DONE + '[data-error="true"]')
    assert "'max_tokens' must be between" in page.inner_text(".message.assistant .error")
    assert page.input_value("#input") == "hi"
    assert page.get_attribute(".message.user", "data-failed") == "true"
    # a malformed extra-parameters field never reaches the server
    settings(page, extra="{oops")
    page.click("#send")
    assert "not valid JSON" in page.inner_text("#status")
    assert page.locator(".message").count() == 2

    # an error event at the end of a started stream: the partial text stays, the error shows
    settings(page, extra="")

    def fake_stream(route):
        delta = {"content": "partial <b>answer</b>"}
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        route.fulfill(status=200, content_type="text/event-stream",
                      body=f"data: {json.dumps(chunk)}\n\n"
                           'data: {"error": {"message": "the model crashed", "type": "server_error"}}\n\n')

    page.route("**/v1/chat/completions", fake_stream)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('{DONE}').length === 2")
    last = page.locator(".message.assistant").last
    assert last.locator(".content").inner_text() == "partial <b>answer</b>"  # text, not markup
    assert last.locator("b").count() == 0
    assert last.locator(".error").inner_text() == "the model crashed"


def test_api_key(page, keyed_server):
    posts: list = []
    page.on("request", lambda r: posts.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    open_page(page, keyed_server)
    assert page.locator("#model option").count() == 0
    assert "missing API key" in page.inner_text("#status")
    assert page.is_disabled("#send")

    page.fill("#api-key", "wrong")
    page.wait_for_function("document.getElementById('status').textContent.includes('invalid API key')")
    page.fill("#api-key", "sesame")
    page.wait_for_function("document.querySelectorAll('#model option').length === 1")
    assert page.input_value("#model") == "tiny" and page.inner_text("#status") == ""

    # kept in localStorage: after a reload the key is there and the models load at once
    page.reload()
    page.wait_for_selector('#model[data-loaded="true"]', state="attached")
    assert page.input_value("#api-key") == "sesame"
    settings(page, max_tokens="8")
    page.fill("#input", "hi")
    page.click("#send")
    page.wait_for_selector(DONE)
    assert page.get_attribute(".message.assistant", "data-error") is None
    assert posts[-1] == "Bearer sesame" and posts.count("Bearer sesame") >= 3
