"""The chat UI at /, driven in headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import json
import shutil

import pytest

from candle_agents.server import create_app

sync_api = pytest.importorskip("playwright.sync_api")

LATEST_SCREENSHOT = "/tmp/candle-ui.png"
# Records every length the streaming reply takes, to tell streaming from one late paint.
WATCH_STREAM = """() => {
  window.__lengths = [];
  new MutationObserver(() => {
    const m = document.querySelector('.message.assistant.streaming');
    if (m) window.__lengths.push(m.textContent.length);
  }).observe(document.getElementById('messages'),
             {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_api.sync_playwright() as p:
        # Playwright drives the system's chromium: no browser download happens.
        b = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors  # no uncaught script error on the page


def test_chat_ui_streams_keeps_history_and_stops(page, server, engine, idle, tmp_path):
    sent: list[dict] = []
    page.on(
        "request",
        lambda r: (
            sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None
        ),
    )
    page.goto(f"{server.url}/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model option").all_inner_texts() == [engine.model_name]

    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.evaluate(WATCH_STREAM)
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    # The bubble's own text node: a meta line (tokens, speed) follows it.
    reply = page.evaluate("document.querySelector('.message.assistant').firstChild.textContent")
    assert "Paris" in reply
    lengths = page.evaluate("window.__lengths")
    assert len({n for n in lengths if n > 0}) >= 2, lengths  # text grew while streaming
    assert sent[0]["stream"] is True
    assert sent[0]["model"] == engine.model_name
    assert sent[0]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    page.screenshot(path=tmp_path / "chat-ui.png", full_page=True)
    shutil.copyfile(tmp_path / "chat-ui.png", LATEST_SCREENSHOT)

    # A second turn carries the first one; Stop ends it and keeps what came.
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "Now write a long poem about it.")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => { const m = document.querySelector('.message.assistant.streaming');"
        " return m && m.textContent.length > 10; }",
        timeout=120_000,
    )
    page.click("#stop")
    page.wait_for_selector(".message.assistant:not(.streaming) >> nth=1")
    assert "stopped" in page.locator(".message.assistant .meta").last.inner_text()
    assert page.locator("#send").is_visible()
    history = sent[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"] == reply
    page.screenshot(path=tmp_path / "chat-ui-stopped.png", full_page=True)
    shutil.copyfile(tmp_path / "chat-ui-stopped.png", LATEST_SCREENSHOT)


def test_chat_ui_asks_for_the_api_key_and_keeps_it(page, engine, live_server, api_key):
    keyed = live_server(create_app(engine, api_key=api_key))
    page.goto(f"{keyed.url}/")
    page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
    assert page.locator("#model option").count() == 0
    page.fill("#api-key", api_key)
    page.locator("#api-key").dispatch_event("change")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.reload()  # the key is remembered in localStorage
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.input_value("#api-key") == api_key
