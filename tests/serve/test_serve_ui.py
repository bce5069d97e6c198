"""The web chat (`xmm serve --ui`) in a real headless browser: Debian's chromium driven by playwright (no browser
download). Upload an image, ask, watch the answer stream in."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from xmm_serve_testkit import KEY, data_url, png_bytes

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=FLAGS, headless=True)
        yield b
        b.close()


def test_upload_an_image_and_get_a_streamed_answer(browser, server, client, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes((255, 0, 0), size=32))
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#status[data-state='idle']")
        assert page.inner_text("#model") == "tiny"
        page.fill("#key", KEY)
        page.dispatch_event("#key", "change")
        page.set_input_files("#file", str(image))
        page.fill("#prompt", "What colour is it?")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=120_000)
        assert page.get_attribute("#status", "data-state") == "done", page.inner_text(".msg.assistant")
        user = page.locator(".msg.user").last
        assert user.locator("img").count() == 1 and "What colour is it?" in user.inner_text()
        answer = page.eval_on_selector(".msg.assistant .text", "e => e.textContent")
        # the page showed the model's whole answer: the one the API gives for the same image and question
        expected = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "image", "image": {"url": data_url(image.read_bytes(), "image/png")}},
            {"type": "text", "text": "What colour is it?"}]}]).choices[0].message.content
        assert answer and answer == expected
        # a second turn keeps the history; a wrong key shows the server's error, not a broken page
        page.fill("#prompt", "And now?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='true']\").length == 2",
                               timeout=120_000)
        page.fill("#key", "wrong")
        page.dispatch_event("#key", "change")
        page.fill("#prompt", "hi")
        page.click("#send")
        page.wait_for_selector(".msg.assistant.error", timeout=60_000)
        assert "API key" in page.locator(".msg.assistant.error").last.inner_text()
    finally:
        page.close()
    # nothing but this server was asked for anything (no CDN)
    assert requests and all(u.startswith(server.url) or u.startswith("data:") for u in requests), requests
