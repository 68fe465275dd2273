"""The web UI on a server with API keys: the page asks for a key once, keeps it, and chats (and
transcribes and speaks) with it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.integration.conftest import LiveServer
from tests.integration.security.conftest import lokal_cli
from tests.integration.ui.test_web_ui import MODEL, browser, home_with_model, open_ui  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyed(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    home = home_with_model(model_home, tmp_path_factory.mktemp("ui-keyed-home"), "smollm2", "whisper", "piper")
    made = lokal_cli(home, "keys", "create", "browser")
    assert made.returncode == 0, made.stderr
    live = LiveServer(home, "--model", MODEL, "--parallel", "2", "--ctx-size", "512", "--keep-alive", "-1")
    yield live, made.stdout.strip()
    live.stop()


def say_hello_with_dialogs(chromium: Browser, server: LiveServer,
                           on_dialog: Callable[[Any], None]) -> tuple[BrowserContext, Page]:
    """A fresh browser context whose dialogs go to on_dialog, that opens the UI and sends a prompt."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("dialog", on_dialog)
    open_ui(page, server)
    page.fill("#prompt", "Say hello.")
    page.press("#prompt", "Enter")
    return context, page


def test_the_ui_asks_for_the_key_once_and_chats_with_it(browser: Browser, keyed: tuple[LiveServer, str]) -> None:  # noqa: F811
    server, key = keyed
    asked: list[str] = []

    def answer(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        dialog.accept(key if len(asked) == 1 else "")

    context, page = say_hello_with_dialogs(browser, server, answer)
    expect(page.locator(".message.assistant .content").first).not_to_have_text("", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('.message.assistant.streaming')", timeout=60_000)
    assert len(asked) == 1 and "API key" in asked[0]
    assert page.evaluate("localStorage.getItem('lokal.apiKey')") == key
    assert page.locator(".message.assistant .content").first.inner_text().strip()
    context.close()


def test_a_wrong_key_is_not_let_in(browser: Browser, keyed: tuple[LiveServer, str]) -> None:  # noqa: F811
    server, _ = keyed
    context, page = say_hello_with_dialogs(browser, server, lambda d: d.accept("not-a-key"))
    page.wait_for_timeout(3000)  # the refused request has long come back
    answers = page.locator(".message.assistant .content")
    assert answers.count() == 0 or not answers.first.inner_text().strip()
    assert page.evaluate("localStorage.getItem('lokal.apiKey')") == "not-a-key"
    context.close()


def test_audio_is_transcribed_and_an_answer_read_aloud_with_the_key(
    browser: Browser, keyed: tuple[LiveServer, str], tmp_path: Path  # noqa: F811
) -> None:
    server, key = keyed
    auth = {"authorization": f"Bearer {key}"}
    said = httpx.post(server.url + "/v1/audio/speech", headers=auth, timeout=120,
                      json={"model": "piper:joe-medium", "voice": "joe", "input": "Good morning.",
                            "response_format": "wav"})
    said.raise_for_status()
    (tmp_path / "morning.wav").write_bytes(said.content)
    conv = httpx.post(server.url + "/ui/api/conversations", headers=auth, json={"title": "Keyed audio"}).json()
    httpx.post(f"{server.url}/ui/api/conversations/{conv['id']}/messages", headers=auth,
               json={"role": "assistant", "content": "Hello from behind a key."}).raise_for_status()
    context = browser.new_context()
    context.add_init_script(f"localStorage.setItem('lokal.apiKey', {key!r})")
    page = context.new_page()
    page.set_default_timeout(60_000)
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    open_ui(page, server)
    page.set_input_files("#audio-input", tmp_path / "morning.wav")
    expect(page.locator("#prompt")).to_have_value(re.compile("good morning", re.IGNORECASE))
    page.get_by_role("button", name="Keyed audio", exact=True).click()
    page.get_by_role("button", name="Read aloud").click()
    page.wait_for_function("() => { const a = document.querySelector('.message.assistant audio');"
                           " return a && a.readyState >= 1 && a.duration > 0; }")
    assert asked == []  # the stored key was used; nothing asked for
    context.close()
