"""Images and audio in the web UI, in a real Chromium against a live `lokal serve` with real
speech models: an audio file (and a microphone recording) transcribed by whisper:tiny into the
prompt, an answer read aloud by piper:joe-medium into an <audio> element, an image sent as an
OpenAI image_url part, and the errors of each shown on the page."""

from __future__ import annotations

import base64
import io
import json
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, Page, expect

from lokal.bench.metrics import word_error_rate
from lokal.store.create import create_model
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import Modelfile
from tests.integration.conftest import LiveServer
from tests.integration.ui.test_web_ui import (  # noqa: F401 (browser is a fixture)
    CHROMIUM,
    DESKTOP,
    MODEL,
    PageWatch,
    browser,
    home_with_model,
    open_ui,
    screenshot,
    set_param,
)
from tests.projector import write_test_projector

pytestmark = pytest.mark.slow
STT = "whisper:tiny"
TTS = "piper:joe-medium"
VISION = "smollm2-vision:test"  # answers from a random projector: the mechanics, not a description
BODY_LIMIT = 2_000_000  # small, to reach it with two pictures
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."


@pytest.fixture(scope="module")
def media_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """smollm2:135m (text only), VISION (it with a projector), whisper:tiny and piper:joe-medium."""
    home = home_with_model(model_home, tmp_path_factory.mktemp("ui-media-home"), "smollm2", "whisper", "piper")
    projector = write_test_projector(home / "mmproj.gguf", n_embd_out=576)
    create_model(ModelStore(home), VISION, Modelfile(from_=MODEL, projector=str(projector)))
    live = LiveServer(home, "--model", MODEL, "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1",
                      env={"LOKAL_MAX_BODY_BYTES": str(BODY_LIMIT)})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def spoken(media_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE as lokal's own voice says it, a WAV file."""
    r = httpx.post(media_server.url + "/v1/audio/speech", timeout=120,
                   json={"model": TTS, "voice": "joe", "input": SENTENCE, "response_format": "wav"})
    r.raise_for_status()
    path = tmp_path_factory.mktemp("spoken") / "sentence.wav"
    path.write_bytes(r.content)
    return path


@pytest.fixture
def ui(browser: Browser, media_server: LiveServer) -> Iterator[PageWatch]:  # noqa: F811
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(60_000)
    watch = PageWatch(page)
    yield watch
    context.close()
    # The page's own refused requests (400, 413) are console errors too; nothing else may be.
    assert [e for e in watch.errors if not re.search(r"status of 4(00|13) ", e)] == [], watch.errors


def drawn_png(width: int = 96, height: int = 64) -> bytes:
    """A picture the test draws: a red square and a blue circle on white."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, width // 2 - 4, height - 4), fill=(220, 30, 30))
    draw.ellipse((width // 2 + 4, 4, width - 4, height - 4), fill=(30, 60, 220))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def drop_files(page: Page, target: str, event: str, files: list[dict[str, str]]) -> None:
    """Dispatch a drop (or paste) of files, as the browser makes one from a drag (or the clipboard)."""
    page.evaluate("""([target, event, files]) => {
        const data = new DataTransfer();
        for (const f of files) {
          const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
          data.items.add(new File([bytes], f.name, { type: f.type }));
        }
        const el = document.querySelector(target);
        const init = { bubbles: true, cancelable: true };
        const e = event === "paste" ? new ClipboardEvent("paste", { clipboardData: data, ...init })
                                    : new DragEvent("drop", { dataTransfer: data, ...init });
        el.dispatchEvent(e);
    }""", [target, event, files])


def file_arg(name: str, mime: str, data: bytes) -> dict[str, str]:
    return {"name": name, "type": mime, "b64": base64.b64encode(data).decode()}


# --- speech to text ---

def test_a_wav_that_lokal_spoke_is_transcribed_into_the_prompt(ui: PageWatch, media_server: LiveServer,
                                                               spoken: Path) -> None:
    page = ui.page
    open_ui(page, media_server)
    page.fill("#prompt", "Summarise:")
    page.set_input_files("#audio-input", spoken)
    expect(page.locator("#composer-status")).to_contain_text("Transcribing sentence.wav")
    expect(page.locator("#prompt")).not_to_have_value("Summarise:", timeout=60_000)
    expect(page.locator("#composer-status")).to_be_hidden()
    text = page.input_value("#prompt")
    assert text.startswith("Summarise: ")
    wer = word_error_rate(SENTENCE, text.removeprefix("Summarise: "))
    print(f"\nin the browser: {text!r}, word error rate {wer:.1%}")
    assert wer <= 0.20
    screenshot(page, "chat-transcribed")


def test_a_file_that_is_not_audio_shows_the_servers_error_and_leaves_the_prompt(
    ui: PageWatch, media_server: LiveServer
) -> None:
    page = ui.page
    open_ui(page, media_server)
    page.fill("#prompt", "keep me")
    page.set_input_files("#audio-input", files=[{"name": "voice.wav", "mimeType": "audio/wav",
                                                 "buffer": b"RIFF but not really a wave file"}])
    status = page.locator("#composer-status.error")
    expect(status).to_contain_text("Could not transcribe voice.wav: could not decode the audio file")
    expect(page.locator("#prompt")).to_have_value("keep me")
    screenshot(page, "chat-audio-error")
    # A dropped file of another kind is named, not sent.
    drop_files(page, ".chat-main", "drop", [file_arg("notes.txt", "text/plain", b"hello")])
    expect(status).to_have_text("notes.txt: neither an image nor an audio file.")


def test_a_microphone_recording_is_transcribed_into_the_prompt(browser: Browser,  # noqa: F811
                                                               media_server: LiveServer, spoken: Path) -> None:
    """Chromium's fake microphone plays the WAV once (noloop); MediaRecorder records it as WebM/Opus."""
    with wave.open(str(spoken)) as w:
        seconds = w.getnframes() / w.getframerate()
    chromium = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[
        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={spoken}%noloop"])
    try:
        context = chromium.new_context(viewport=DESKTOP, permissions=["microphone"])
        page = context.new_page()
        page.set_default_timeout(60_000)
        open_ui(page, media_server)
        record = page.locator("#record")
        expect(record).to_be_enabled()
        record.click()
        expect(record).to_have_text("■ Stop recording")
        expect(page.locator("#composer-status")).to_contain_text("Recording")
        page.wait_for_timeout(int(seconds * 1000) + 1500)
        record.click()
        expect(page.locator("#composer-status")).to_contain_text("Transcribing recording.webm")
        expect(page.locator("#prompt")).not_to_have_value("", timeout=60_000)
        wer = word_error_rate(SENTENCE, page.input_value("#prompt"))
        print(f"\nrecorded: {page.input_value('#prompt')!r}, word error rate {wer:.1%}")
        assert wer <= 0.20
        expect(record).to_have_text("● Record")
    finally:
        chromium.close()


# --- text to speech ---

def test_an_answer_is_read_aloud_through_an_audio_element(ui: PageWatch, media_server: LiveServer) -> None:
    conv = httpx.post(media_server.url + "/ui/api/conversations", json={"title": "Read me"}).json()
    for role, content in (("user", "Say something."), ("assistant", "**Hello** there. This is `lokal` speaking.")):
        httpx.post(f"{media_server.url}/ui/api/conversations/{conv['id']}/messages",
                   json={"role": role, "content": content}).raise_for_status()
    page = ui.page
    open_ui(page, media_server)
    page.get_by_role("button", name="Read me", exact=True).click()
    answer = page.locator(".message.assistant")
    with page.expect_request("**/v1/audio/speech") as spoken_request:
        answer.get_by_role("button", name="Read aloud").click()
    sent = spoken_request.value.post_data_json
    assert sent["model"] == TTS and sent["voice"] == "joe"
    assert sent["input"] == "Hello there. This is lokal speaking."  # the rendered text, no Markdown marks
    page.wait_for_function("""() => {
        const a = document.querySelector('.message.assistant audio');
        return a && a.src.startsWith('blob:') && a.readyState >= 1 && Number.isFinite(a.duration) && a.duration > 0;
    }""")
    duration = page.evaluate("document.querySelector('.message.assistant audio').duration")
    assert 1.0 < duration < 10.0, duration
    expect(answer.get_by_role("button", name="Read aloud")).to_have_count(0)  # the controls replay it
    screenshot(page, "chat-read-aloud")


def test_a_long_answer_is_spoken_in_pieces_played_one_after_another(ui: PageWatch, media_server: LiveServer) -> None:
    """4,100 characters: two /v1/audio/speech requests (the limit is 4,096), the second piece plays
    when the first ends, and after the last the element holds the first again to replay."""
    long = " ".join(f"This is sentence number {i} of a long answer." for i in range(92))
    assert 4096 < len(long) < 4400
    conv = httpx.post(media_server.url + "/ui/api/conversations", json={"title": "Long answer"}).json()
    httpx.post(f"{media_server.url}/ui/api/conversations/{conv['id']}/messages",
               json={"role": "assistant", "content": long}).raise_for_status()
    page = ui.page
    inputs: list[str] = []
    page.on("request", lambda r: inputs.append(r.post_data_json["input"]) if r.url.endswith("/audio/speech") else None)
    open_ui(page, media_server)
    page.get_by_role("button", name="Long answer", exact=True).click()
    page.get_by_role("button", name="Read aloud").click()
    ready = ("() => { const a = document.querySelector('.message.assistant audio');"
             " return a && a.readyState >= 1 && a.duration > 0 ? [a.src, a.duration] : null; }")
    first, first_seconds = page.wait_for_function(ready, timeout=300_000).json_value()
    assert first_seconds > 120  # about four minutes of speech
    page.wait_for_function("() => !document.querySelector('.message.assistant .link-button[disabled]')",
                           timeout=300_000)  # "Reading…" until the last piece is made
    assert len(inputs) == 2 and all(len(i) <= 4000 for i in inputs) and " ".join(inputs) == long
    seek_to_end = "() => { const a = document.querySelector('.message.assistant audio');" \
                  " a.currentTime = a.duration - 0.05; return a.play(); }"
    page.evaluate(seek_to_end)
    second, second_seconds = page.wait_for_function(
        f"() => {{ const r = ({ready})(); return r && r[0] !== {first!r} ? r : null; }}").json_value()
    assert second.startswith("blob:") and 0 < second_seconds < 20
    page.evaluate(seek_to_end)
    page.wait_for_function(f"() => {{ const a = document.querySelector('.message.assistant audio');"
                           f" return a.src === {first!r} && a.paused; }}")  # ready to replay from the start


def test_speech_pieces_are_cut_after_sentences_under_the_limit(ui: PageWatch, media_server: LiveServer) -> None:
    page = ui.page
    open_ui(page, media_server)
    text = " ".join(f"Sentence number {i} is here,  with\nsome words." for i in range(400))  # 18,000 characters
    pieces = page.evaluate("async (t) => (await import('/ui/static/js/media.js')).speechPieces(t)", text)
    assert len(pieces) == 5 and all(0 < len(p) <= 4000 for p in pieces)
    assert all(p.endswith(".") for p in pieces)  # cut after a sentence
    assert " ".join(pieces) == " ".join(text.split())
    unbroken = page.evaluate("async (t) => (await import('/ui/static/js/media.js')).speechPieces(t)", "x" * 9000)
    assert [len(p) for p in unbroken] == [4000, 4000, 1000]


# --- images ---

def chat_error(server: LiveServer, body: dict[str, Any]) -> str:
    """The server's own answer to a chat request, for comparing with what the page shows."""
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    return str(r.json()["error"]["message"])


def test_an_image_goes_as_an_image_url_part_and_a_text_only_models_refusal_is_shown(
    ui: PageWatch, media_server: LiveServer, tmp_path: Path
) -> None:
    png = drawn_png()
    picture = tmp_path / "shapes.png"
    picture.write_bytes(png)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    page = ui.page
    open_ui(page, media_server)
    page.click("#new-chat")
    page.set_input_files("#image-input", picture)
    thumb = page.locator("#attachments img.thumb")
    expect(thumb).to_have_count(1)
    assert thumb.get_attribute("src") == url  # a small PNG goes as it is, byte for byte
    page.fill("#prompt", "What shapes are in this picture?")
    with page.expect_request("**/v1/chat/completions") as chat_request:
        page.press("#prompt", "Enter")
    body = chat_request.value.post_data_json
    assert body["model"] == MODEL
    assert body["messages"][-1] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What shapes are in this picture?"},
    ]}
    refusal = chat_error(media_server, {"model": MODEL, "messages": body["messages"]})
    assert "image" in refusal
    error = page.locator(".message.error")
    expect(error).to_contain_text(refusal)
    expect(page.locator(".message.assistant")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#attachments")).to_be_hidden()
    expect(page.locator(".message.user img.thumb")).to_have_attribute("src", url)
    screenshot(page, "chat-image-refused")

    # Edit and resend keeps the message's picture.
    page.get_by_role("button", name="Edit", exact=True).click()
    page.fill(".edit-box", "And the colours?")
    with page.expect_request("**/v1/chat/completions") as resent:
        page.press(".edit-box", "Enter")
    assert resent.value.post_data_json["messages"][-1]["content"] == [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "And the colours?"}]
    expect(error).to_contain_text(refusal)

    # The picture is kept with the conversation.
    page.reload()
    page.wait_for_selector("body.ready")
    expect(page.locator(".message.user img.thumb")).to_have_attribute("src", url)
    stored = httpx.get(media_server.url + "/ui/api/conversations").json()[0]
    messages = httpx.get(f"{media_server.url}/ui/api/conversations/{stored['id']}").json()["messages"]
    assert messages[0]["images"] == [url] and messages[0]["content"] == "And the colours?"


def test_a_vision_model_answers_an_image_from_the_page_as_it_answers_the_same_request_from_the_api(
    ui: PageWatch, media_server: LiveServer
) -> None:
    png = drawn_png()
    page = ui.page
    open_ui(page, media_server)
    page.click("#new-chat")
    page.select_option("#chat-model", VISION)
    set_param(page, "temperature", "0")
    set_param(page, "max_tokens", "12")
    page.click("#toggle-params")
    drop_files(page, ".chat-main", "drop", [file_arg("shapes.png", "image/png", png)])
    expect(page.locator("#attachments img.thumb")).to_have_count(1)
    page.fill("#prompt", "What is in this picture?")
    with page.expect_request("**/v1/chat/completions") as chat_request:
        page.press("#prompt", "Enter")
    answer = page.locator(".message.assistant:not(.streaming) .content")
    expect(answer).not_to_be_empty()
    expect(page.locator(".message.error")).to_have_count(0)
    body = chat_request.value.post_data_json
    assert body["model"] == VISION and body["messages"][-1]["content"][0]["type"] == "image_url"
    again = httpx.post(media_server.url + "/v1/chat/completions", timeout=120,
                       json={**body, "stream": False, "stream_options": None}).json()
    stored = httpx.get(media_server.url + "/ui/api/conversations").json()[0]
    said = httpx.get(f"{media_server.url}/ui/api/conversations/{stored['id']}").json()["messages"][-1]
    assert said["role"] == "assistant" and said["content"] == again["choices"][0]["message"]["content"]
    without = httpx.post(media_server.url + "/v1/chat/completions", timeout=120, json={
        **body, "stream": False, "stream_options": None,
        "messages": [{"role": "user", "content": "What is in this picture?"}]}).json()
    assert again["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]  # the image's tokens
    screenshot(page, "chat-vision")


def test_images_pasted_or_dropped_are_attached_scaled_and_bad_ones_named(
    ui: PageWatch, media_server: LiveServer
) -> None:
    page = ui.page
    open_ui(page, media_server)
    wide = drawn_png(3000, 600)
    drop_files(page, "#prompt", "paste", [file_arg("wide.png", "image/png", wide)])
    thumbs = page.locator("#attachments img.thumb")
    expect(thumbs).to_have_count(1)
    size = page.evaluate("""async () => { const img = document.querySelector('#attachments img.thumb');
        await img.decode(); return [img.naturalWidth, img.naturalHeight]; }""")
    assert size == [2048, 410]  # the longer side scaled to 2048, the shape kept
    webp = io.BytesIO()
    Image.open(io.BytesIO(drawn_png())).save(webp, format="WEBP")
    drop_files(page, ".chat-main", "drop", [file_arg("shapes.webp", "image/webp", webp.getvalue()),
                                            file_arg("broken.png", "image/png", b"\x89PNG\r\n\x1a\n broken")])
    expect(thumbs).to_have_count(2)
    assert (thumbs.nth(1).get_attribute("src") or "").startswith("data:image/png;base64,")  # WebP converted
    expect(page.locator("#composer-status.error")).to_contain_text("broken.png could not be read as an image")
    page.get_by_role("button", name="Remove image 1").click()
    expect(thumbs).to_have_count(1)
    screenshot(page, "chat-attachments")


def test_a_message_over_the_body_limit_stays_in_the_composer_with_the_reason(
    ui: PageWatch, media_server: LiveServer
) -> None:
    noise = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (600, 600, 3), dtype=np.uint8))
             for seed in (1, 2)]
    pngs = []
    for image in noise:
        out = io.BytesIO()
        image.save(out, format="PNG")
        pngs.append(out.getvalue())
    assert sum(len(p) for p in pngs) * 4 / 3 > BODY_LIMIT > max(len(p) for p in pngs) * 4 / 3
    page = ui.page
    open_ui(page, media_server)
    page.click("#new-chat")
    drop_files(page, ".chat-main", "drop", [file_arg(f"noise{i}.png", "image/png", p) for i, p in enumerate(pngs)])
    expect(page.locator("#attachments img.thumb")).to_have_count(2)
    page.fill("#prompt", "Two noisy pictures")
    page.press("#prompt", "Enter")
    expect(page.locator("#composer-status.error")).to_contain_text("Not sent: ")
    expect(page.locator("#composer-status.error")).to_contain_text(str(BODY_LIMIT))
    expect(page.locator("#prompt")).to_have_value("Two noisy pictures")
    expect(page.locator("#attachments img.thumb")).to_have_count(2)
    expect(page.locator(".message.user")).to_have_count(0)


def test_the_models_endpoint_tells_the_page_the_body_limit(media_server: LiveServer) -> None:
    facts = httpx.get(media_server.url + "/ui/api/models").json()
    assert facts["max_body_bytes"] == BODY_LIMIT
    kinds = {m["name"]: m["kind"] for m in facts["models"]}
    assert kinds[STT] == "speech-to-text" and kinds[TTS] == "text-to-speech"
    assert httpx.get(media_server.url + "/ui/api/voices", params={"model": TTS}, timeout=60).json() == ["joe"]
    wrong = httpx.get(media_server.url + "/ui/api/voices", params={"model": MODEL}, timeout=60)
    assert wrong.status_code == 400, wrong.text
    assert json.loads(wrong.text)["error"]["message"]
