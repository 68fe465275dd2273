"""The web UI in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a live
`lokal serve`. Each page is also saved as a screenshot, desktop and narrow, in test-artifacts/ui/."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import REPO_ROOT
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO_ROOT / "test-artifacts" / "ui"
MODEL = "smollm2:135m"
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}


def home_with_model(model_home: Path, home: Path, *families: str) -> Path:
    """A fresh lokal home that sees the shared test models of ``families`` (default: smollm2;
    manifests copied, blobs and unpacked folder models linked)."""
    for family in families or ("smollm2",):
        shutil.copytree(model_home / "manifests" / family, home / "manifests" / family)
    for folder in ("blobs", "unpacked"):
        (home / folder).mkdir(parents=True)
        for item in (model_home / folder).iterdir() if (model_home / folder).is_dir() else ():
            (home / folder / item.name).symlink_to(item.resolve())
    return home


@pytest.fixture(scope="module")
def ui_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = home_with_model(model_home, tmp_path_factory.mktemp("ui-home"))
    live = LiveServer(home, "--model", MODEL, "--parallel", "4", "--ctx-size", "1024", "--max-queue", "64")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: run `scripts/install.sh test` (installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class PageWatch:
    """A page plus what it reported: dialogs (alert/confirm) and uncaught errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        # Console errors include Content-Security-Policy violations and failed loads.
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)


@pytest.fixture
def ui(browser: Browser, ui_server: LiveServer) -> Iterator[PageWatch]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch = PageWatch(page)
    yield watch
    context.close()
    assert watch.errors == [], watch.errors


def open_ui(page: Page, server: LiveServer, view: str = "chat") -> None:
    page.goto(f"{server.url}/#{view}")
    page.wait_for_selector("body.ready")


def screenshot(page: Page, name: str, narrow_click: str | None = None) -> None:
    """Save the page as test-artifacts/ui/<name>-desktop.png and <name>-narrow.png (after
    clicking ``narrow_click`` in the narrow layout, e.g. to open the conversation drawer)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(200)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"))
    size = page.viewport_size
    page.set_viewport_size(NARROW)
    page.wait_for_timeout(300)
    if narrow_click:
        page.click(narrow_click)
        page.wait_for_timeout(200)
    page.screenshot(path=str(SHOTS / f"{name}-narrow.png"))
    if narrow_click:
        page.click(narrow_click)
    if size:
        page.set_viewport_size(size)


def set_param(page: Page, key: str, value: str) -> None:
    if not page.locator("#params-panel").is_visible():
        page.click("#toggle-params")
    page.fill(f"#param-{key}", value)


def api(server: LiveServer, method: str, path: str, body: object | None = None) -> httpx.Response:
    r = httpx.request(method, server.url + path, json=body, timeout=30)
    r.raise_for_status()
    return r


# --- chat ---

def test_the_page_is_served_to_browsers_and_ollama_clients_still_get_the_heartbeat(ui_server: LiveServer) -> None:
    page = httpx.get(ui_server.url + "/", headers={"accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200 and "<title>lokal</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert httpx.get(ui_server.url + "/").text == "Ollama is running"
    assert httpx.get(ui_server.url + "/", headers={"accept": "*/*"}).text == "Ollama is running"
    assert httpx.head(ui_server.url + "/", headers={"accept": "text/html"}).status_code == 200
    assert httpx.get(ui_server.url + "/ui/static/js/app.js").status_code == 200
    assert httpx.get(ui_server.url + "/ui/static/../routes.py").status_code == 404
    assert httpx.get(ui_server.url + "/ui/static/%2e%2e/routes.py").status_code == 404


def test_a_message_gets_a_streamed_answer_and_the_conversation_survives_a_reload(
    ui: PageWatch, ui_server: LiveServer
) -> None:
    page = ui.page
    open_ui(page, ui_server)
    set_param(page, "max_tokens", "120")
    set_param(page, "temperature", "0")
    expect(page.locator("#param-num_ctx")).to_have_value("1024")  # the server's --ctx-size
    screenshot(page, "parameters")
    page.click("#toggle-params")
    page.click("#prompt")
    page.keyboard.type("one")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("two")
    expect(page.locator("#prompt")).to_have_value("one\ntwo")
    expect(page.locator(".message")).to_have_count(0)
    page.fill("#prompt", "Reload test: what is the capital of France?")
    page.press("#prompt", "Enter")
    # While it streams: a partial answer is on screen with the stop button.
    page.wait_for_function(
        "() => { const s = document.querySelector('.message.assistant.streaming .content');"
        " return s && s.textContent.trim().length > 0; }"
    )
    expect(page.locator("#stop")).to_be_visible()
    answer = page.locator(".message.assistant:not(.streaming) .content")
    expect(answer).not_to_be_empty(timeout=60_000)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator(".message.assistant .stats")).to_contain_text(re.compile(r"\d+ tokens · TTFT \d"))
    text = answer.inner_text()
    expect(page.locator("#conversation-list")).to_contain_text("Reload test: what is the capital")
    screenshot(page, "chat")

    page.reload()
    page.wait_for_selector("body.ready")
    expect(page.locator(".message.user .content")).to_have_text("Reload test: what is the capital of France?")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_selector("body.ready")
    expect(page.locator(".message")).to_have_count(0)
    page.get_by_role("button", name="Reload test: what is the capital of France?", exact=True).click()
    expect(page.locator(".message.assistant .content")).to_have_text(text)
    loaded_ms = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
    assert loaded_ms < 2000  # no build step, no big bundle: the page is up at once


def test_presets_apply_save_and_delete(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    open_ui(page, ui_server)
    page.click("#toggle-params")
    page.select_option("#preset-select", "creative")
    expect(page.locator("#param-temperature")).to_have_value("1.1")
    expect(page.locator("#preset-delete")).to_be_disabled()  # built-in
    page.fill("#param-top_k", "7")
    expect(page.locator("#preset-select")).to_have_value("")  # edited: now custom
    page.fill("#preset-name", "terse")
    page.click("#preset-save")
    expect(page.locator("#preset-select")).to_have_value("terse")
    saved = {p["name"]: p for p in api(ui_server, "GET", "/ui/api/presets").json()}
    assert saved["terse"]["params"]["top_k"] == 7 and saved["terse"]["builtin"] is False
    page.select_option("#preset-select", "precise")
    page.select_option("#preset-select", "terse")
    expect(page.locator("#param-top_k")).to_have_value("7")
    page.click("#preset-delete")
    expect(page.locator("#preset-select option[value=terse]")).to_have_count(0)


def test_escape_stops_an_answer_mid_way_and_the_partial_answer_is_kept(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    open_ui(page, ui_server)
    page.click("#new-chat")
    set_param(page, "max_tokens", "3000")
    page.click("#toggle-params")
    page.fill("#prompt", "Stop test: write a very long story about a lighthouse keeper, in many chapters.")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "() => { const s = document.querySelector('.message.assistant.streaming .content');"
        " return s && s.textContent.trim().length > 20; }"
    )
    screenshot(page, "chat-streaming")
    page.keyboard.press("Escape")
    expect(page.locator("#stop")).to_be_hidden(timeout=5_000)
    stats = page.locator(".message.assistant .stats")
    expect(stats).to_contain_text("stopped")
    tokens = int(re.search(r"(\d+) tokens", stats.inner_text()).group(1))  # type: ignore[union-attr]
    assert 0 < tokens < 3000
    conversations = api(ui_server, "GET", "/ui/api/conversations?q=lighthouse").json()
    stored = api(ui_server, "GET", f"/ui/api/conversations/{conversations[0]['id']}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["stats"]["finish_reason"] == "stopped"
    # The engine is free again: nothing left running for the stopped request.
    page.wait_for_function("async () => (await (await fetch('/ui/api/monitor')).json()).running === 0")


def test_conversations_are_searched_renamed_and_deleted(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    apples = api(ui_server, "POST", "/ui/api/conversations", {"title": "Orchard apples"}).json()
    api(ui_server, "POST", f"/ui/api/conversations/{apples['id']}/messages", {"role": "user", "content": "Fuji?"})
    pears = api(ui_server, "POST", "/ui/api/conversations", {"title": "Orchard pears"}).json()
    api(ui_server, "POST", f"/ui/api/conversations/{pears['id']}/messages",
        {"role": "user", "content": "Is a Conference pear sweet?"})
    open_ui(page, ui_server)

    page.fill("#search", "conference")  # matches message text, not only titles
    expect(page.locator("li.conversation")).to_have_count(1)
    expect(page.locator("li.conversation")).to_have_text(re.compile("Orchard pears"))
    page.fill("#search", "orchard")
    expect(page.locator("li.conversation")).to_have_count(2)

    page.get_by_role("button", name="Rename Orchard pears", exact=True).click()
    page.fill(".rename-input", "Pear varieties")
    page.press(".rename-input", "Enter")
    page.fill("#search", "")
    expect(page.locator("#conversation-list")).to_contain_text("Pear varieties")
    assert api(ui_server, "GET", f"/ui/api/conversations/{pears['id']}").json()["title"] == "Pear varieties"

    delete = page.get_by_role("button", name="Delete Orchard apples")
    delete.click()
    delete.click()  # the second click confirms
    expect(page.locator("#conversation-list")).not_to_contain_text("Orchard apples")
    assert httpx.get(f"{ui_server.url}/ui/api/conversations/{apples['id']}").status_code == 404
    screenshot(page, "conversations", narrow_click="#toggle-sidebar")


def test_regenerate_and_edit_and_resend_replace_the_tail(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    conv = api(ui_server, "POST", "/ui/api/conversations", {"title": "Edit test", "model": MODEL,
                                                            "params": {"max_tokens": 16, "num_ctx": 1024}}).json()
    api(ui_server, "POST", f"/ui/api/conversations/{conv['id']}/messages", {"role": "user", "content": "Say hi."})
    api(ui_server, "POST", f"/ui/api/conversations/{conv['id']}/messages",
        {"role": "assistant", "content": "OLD ANSWER", "model": MODEL})
    open_ui(page, ui_server)
    page.get_by_role("button", name="Edit test", exact=True).click()
    page.get_by_role("button", name="Regenerate", exact=True).click()
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    expect(page.locator(".message.assistant .content")).not_to_have_text("OLD ANSWER")
    expect(page.locator("#send")).to_be_visible()
    page.get_by_role("button", name="Edit", exact=True).click()
    page.fill(".edit-box", "Say bye.")
    page.press(".edit-box", "Enter")
    expect(page.locator(".message.user .content")).to_have_text("Say bye.")
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    stored = api(ui_server, "GET", f"/ui/api/conversations/{conv['id']}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[0]["content"] == "Say bye."
    with page.expect_download() as download:
        page.click("#export-md")
    md = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.endswith(".md")
    assert md.startswith("# Edit test") and "## User\n\nSay bye." in md
    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [m["content"] for m in exported["messages"]][0] == "Say bye."


def test_script_and_img_onerror_in_an_answer_render_as_text(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    hostile = (
        "Here is code:\n\n```python\nprint('hi')\n```\n\n"
        "<script>window.__pwned = 1; alert('script')</script>\n\n"
        'Inline <img src=x onerror="window.__pwned = 2; alert(\'img\')"> and '
        '<a href="javascript:alert(3)">link</a> <iframe src="/"></iframe>'
    )
    conv = api(ui_server, "POST", "/ui/api/conversations", {"title": "Hostile answer"}).json()
    api(ui_server, "POST", f"/ui/api/conversations/{conv['id']}/messages", {"role": "user", "content": "Echo it"})
    api(ui_server, "POST", f"/ui/api/conversations/{conv['id']}/messages", {"role": "assistant", "content": hostile})
    open_ui(page, ui_server)
    page.get_by_role("button", name="Hostile answer", exact=True).click()
    content = page.locator(".message.assistant .content")
    expect(content).to_contain_text("<script>window.__pwned = 1; alert('script')</script>")
    expect(content).to_contain_text("<img src=x onerror=")
    page.wait_for_timeout(500)
    assert page.locator(".messages script, .messages img, .messages iframe").count() == 0
    assert page.locator(".messages [onerror]").count() == 0
    assert page.locator('.messages a[href^="javascript"]').count() == 0
    assert page.evaluate("window.__pwned") is None
    assert ui.dialogs == []
    assert page.locator(".message.assistant pre code.hljs").count() == 1  # highlighted code block
    screenshot(page, "hostile-answer")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "hostile-answer-dark")


def test_a_model_that_echoes_html_cannot_run_it(ui: PageWatch, ui_server: LiveServer) -> None:
    """The same through a real streamed answer: the model is asked to repeat the HTML."""
    page = ui.page
    open_ui(page, ui_server)
    page.click("#new-chat")
    set_param(page, "max_tokens", "60")
    set_param(page, "temperature", "0")
    page.fill("#system-prompt", "Repeat the user's message exactly, character for character.")
    page.click("#toggle-params")
    page.fill("#prompt", '<img src=x onerror="alert(1)"><script>alert(2)</script>')
    page.press("#prompt", "Enter")
    expect(page.locator(".message.assistant:not(.streaming)")).to_have_count(1, timeout=60_000)
    page.wait_for_timeout(300)
    assert page.locator(".messages script, .messages img").count() == 0
    assert ui.dialogs == []


def test_conversations_are_kept_across_a_server_restart(browser: Browser, tmp_path: Path) -> None:
    first = LiveServer(tmp_path, "--no-preload")
    try:
        conv = api(first, "POST", "/ui/api/conversations", {"title": "Before the restart"}).json()
        api(first, "POST", f"/ui/api/conversations/{conv['id']}/messages", {"role": "user", "content": "remember me"})
    finally:
        first.stop()
    second = LiveServer(tmp_path, "--no-preload")
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        open_ui(page, second)
        page.get_by_role("button", name="Before the restart", exact=True).click()
        expect(page.locator(".message.user .content")).to_have_text("remember me")
        assert (tmp_path / "ui.sqlite3").is_file()
    finally:
        context.close()
        second.stop()


def test_without_speech_models_the_audio_controls_say_what_to_pull(ui: PageWatch, ui_server: LiveServer) -> None:
    conv = api(ui_server, "POST", "/ui/api/conversations", {"title": "No voice"}).json()
    api(ui_server, "POST", f"/ui/api/conversations/{conv['id']}/messages", {"role": "assistant", "content": "Hi."})
    page = ui.page
    open_ui(page, ui_server)
    page.set_input_files("#audio-input", files=[{"name": "a.wav", "mimeType": "audio/wav", "buffer": b"RIFF"}])
    expect(page.locator("#composer-status.error")).to_have_text(
        "No speech-to-text model: pull one (e.g. whisper:tiny) on the Models page.")
    page.get_by_role("button", name="No voice", exact=True).click()
    page.get_by_role("button", name="Read aloud").click()
    expect(page.locator("#toast")).to_have_text(
        "No text-to-speech model: pull one (e.g. piper:joe-medium) on the Models page.")
    expect(page.locator(".message.assistant audio")).to_have_count(0)
    expect(page.get_by_role("button", name="Read aloud")).to_be_enabled()


# --- models ---

def test_models_page_lists_facts_with_a_fit_badge_and_shows_details(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    open_ui(page, ui_server, "models")
    row = page.locator(f'tr[data-name="{MODEL}"]')
    expect(row).to_contain_text("98.4 MB")
    expect(row).to_contain_text("Q4_1")
    expect(row).to_contain_text("8,192")
    expect(row.locator(".badge.fit-fits")).to_have_text("fits")
    screenshot(page, "models")
    row.get_by_role("button", name="Details").click()
    expect(page.locator("#model-details")).to_contain_text("llama.context_length")
    expect(page.locator("#model-details")).to_contain_text("<|im_start|>")
    screenshot(page, "model-details")


def test_pull_shows_live_progress_and_the_model_appears(
    browser: Browser, tmp_path: Path
) -> None:
    """A server with an empty store pulls smollm2:135m (pip's cache makes it quick)."""
    server = LiveServer(tmp_path, "--no-preload")
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        open_ui(page, server, "models")
        expect(page.locator("#models-body")).to_contain_text("No models yet")
        # Every text the status line shows, however briefly.
        page.evaluate("""() => {
            window.__pullLog = [];
            new MutationObserver(() => window.__pullLog.push(document.querySelector('#pull-text').textContent))
              .observe(document.querySelector('#pull-text'), {childList: true, characterData: true, subtree: true});
        }""")
        page.fill("#pull-name", MODEL)
        page.click("#pull-button")
        expect(page.locator("#pull-text")).to_contain_text("success")
        seen = page.evaluate("window.__pullLog")
        assert any(re.search(r"of 98\.4 MB \(\d+%", line) for line in seen), seen
        assert any("verifying sha256 digest" in line for line in seen), seen
        expect(page.locator(f'tr[data-name="{MODEL}"]')).to_contain_text("fits")
        screenshot(page, "models-pulled")
        delete = page.locator(f'tr[data-name="{MODEL}"]').get_by_role("button", name="Delete")
        delete.click()
        page.locator(f'tr[data-name="{MODEL}"]').get_by_role("button", name="Really delete?").click()
        expect(page.locator("#models-body")).to_contain_text("No models yet")
        assert httpx.get(server.url + "/api/tags").json()["models"] == []
    finally:
        context.close()
        server.stop()


# --- arena ---

def test_arena_streams_two_answers_with_ttft_and_tokens_per_second_and_keeps_the_tally(
    ui: PageWatch, ui_server: LiveServer
) -> None:
    page = ui.page
    open_ui(page, ui_server, "arena")
    page.select_option("#arena-left-preset", "precise")
    page.select_option("#arena-right-preset", "creative")
    page.fill("#arena-prompt", "Name three colors.")
    page.press("#arena-prompt", "Enter")
    for side in ("left", "right"):
        panel = page.locator(f"#arena-{side}")
        expect(panel.locator(".stat.ttft")).to_have_text(re.compile(r"TTFT \d+(\.\d+)? m?s"), timeout=60_000)
        expect(panel.locator(".stat.tps")).to_have_text(re.compile(r"\d+\.\d tok/s"))
        expect(panel.locator(".answer")).not_to_be_empty()
    expect(page.locator("#arena-left .arena-label")).to_have_text(f"{MODEL} · precise")
    page.click("#vote-left")
    expect(page.locator("#tally-body")).to_contain_text(f"{MODEL} · precise")
    tally = {r["label"]: r for r in api(ui_server, "GET", "/ui/api/arena/tally").json()}
    assert tally[f"{MODEL} · precise"]["wins"] >= 1 and tally[f"{MODEL} · creative"]["losses"] >= 1
    screenshot(page, "arena")


# --- monitor ---

def test_monitor_updates_after_a_request(ui: PageWatch, ui_server: LiveServer) -> None:
    page = ui.page
    open_ui(page, ui_server, "monitor")
    expect(page.locator("#mon-cpu")).to_have_text(re.compile(r"\d+%"))
    expect(page.locator("#mon-models")).to_contain_text(MODEL)
    # the prefix cache's host tier: entries and their memory, next to the KV cells
    host_tier = page.locator("#mon-models tr").first.locator("td").nth(5)
    expect(host_tier).to_have_text(re.compile(r"^\d+ · [\d.]+ [KMGT]?B$"))
    before = int(page.locator("#mon-requests").inner_text())
    r = httpx.post(f"{ui_server.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 48,
        "stream": True,
    })
    assert r.status_code == 200
    expect(page.locator("#mon-requests")).to_have_text(str(before + 1), timeout=10_000)
    first = page.locator("#mon-requests-body tr").first
    expect(first).to_contain_text("/v1/chat/completions")
    expect(first).to_contain_text(re.compile(r"\d+ ms|\d\.\d+ s"))
    tps = first.locator("td").nth(6).inner_text()
    assert float(tps) > 0
    assert page.locator("#tps-chart canvas").count() == 1
    screenshot(page, "monitor")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "monitor-dark")
