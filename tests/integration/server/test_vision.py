"""Images through the real openai, ollama and anthropic clients against a live server.

No vision model with its projector is on PyPI, so the vision model here is smollm2:135m with a
randomly initialised LLaVA-style projector (tests/projector.py), attached the way Ollama does
it: a Modelfile with a second FROM. Its answers cannot describe an image; the tests check the
mechanics: images reach the model (different images, different greedy answers), a repeated
image hits the prefix cache, batching does not change answers, image and text requests run
together, and every bad input is the API's own 400."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from PIL import Image, ImageDraw

from lokal.store.create import create_model
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import Modelfile
from tests.conftest import link_model
from tests.integration.conftest import LiveServer
from tests.projector import N_IMAGE_TOKENS, write_test_projector

VISION = "smollm2-vision:test"
TEXT_ONLY = "smollm2:135m"


def drawing(shape: str, colour: str, fmt: str = "PNG", size: int = 96) -> bytes:
    """An image the test draws itself: one coloured shape on white."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, size // 8), (size // 8, size - size // 8), (size - size // 8, size - size // 8)],
                     fill=colour)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


RED_CIRCLE = drawing("circle", "red")
BLUE_SQUARE = drawing("square", "blue")
GREEN_TRIANGLE = drawing("triangle", "green")


@pytest.fixture(scope="module")
def vision_home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with smollm2:135m (its blob hard-linked) and the vision model built on it."""
    home = tmp_path_factory.mktemp("vision-home")
    link_model(model_home, home, TEXT_ONLY)
    store = ModelStore(home)
    projector = write_test_projector(home / "mmproj.gguf", n_embd_out=576)
    create_model(store, VISION, Modelfile(from_=TEXT_ONLY, projector=str(projector)))
    return home


@pytest.fixture(scope="module")
def live(vision_home: Path) -> Iterator[LiveServer]:
    server = LiveServer(vision_home, "--model", VISION, "--parallel", "4", "--ctx-size", "512",
                        "--keep-alive", "-1")
    yield server
    server.stop()


def ask(client: openai.OpenAI, image: bytes | None, text: str = "What is in this picture?",
        model: str = VISION, max_tokens: int = 12) -> openai.types.chat.ChatCompletion:
    content: list[dict[str, object]] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_images_reach_the_model_and_different_images_give_different_answers(client: openai.OpenAI) -> None:
    red = ask(client, RED_CIRCLE)
    blue = ask(client, BLUE_SQUARE)
    none = ask(client, None)
    texts = [r.choices[0].message.content for r in (red, blue, none)]
    assert len(set(texts)) == 3, texts
    assert red.usage is not None and none.usage is not None
    assert red.usage.prompt_tokens >= none.usage.prompt_tokens + N_IMAGE_TOKENS
    # greedy and deterministic: the same image gives the same answer again
    assert ask(client, RED_CIRCLE).choices[0].message.content == texts[0]


def test_n_choices_from_one_image_prompt_read_it_once_and_answer_alike(client: openai.OpenAI) -> None:
    one = ask(client, BLUE_SQUARE, "Name it.")
    two = client.chat.completions.create(model=VISION, temperature=0, max_tokens=12, n=2, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(BLUE_SQUARE)}},
                                     {"type": "text", "text": "Name it."}]}])
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2


def test_the_same_image_after_the_same_prefix_hits_the_prefix_cache_and_another_never_does(
        client: openai.OpenAI) -> None:
    first = ask(client, GREEN_TRIANGLE, "Describe the shape.")
    again = ask(client, GREEN_TRIANGLE, "Describe the shape.")
    other = ask(client, drawing("triangle", "purple"), "Describe the shape.")  # an image not seen before
    assert first.usage is not None and again.usage is not None and other.usage is not None
    n = again.usage.prompt_tokens
    assert again.usage.prompt_tokens_details is not None and other.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == n - 1  # all but the last token
    # the other image shares only the text before the image
    assert other.usage.prompt_tokens_details.cached_tokens < n - N_IMAGE_TOKENS
    assert again.choices[0].message.content == first.choices[0].message.content


def test_batched_image_requests_answer_as_they_do_alone(live: LiveServer, client: openai.OpenAI) -> None:
    images = [RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE, drawing("circle", "orange")]
    alone = [ask(client, img, "Say something.").choices[0].message.content for img in images]

    async def together() -> list[str | None]:
        aclient = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)
        rs = await asyncio.gather(*(aclient.chat.completions.create(
            model=VISION, temperature=0, max_tokens=12,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                                   {"type": "text", "text": "Say something."}]}])
            for img in images))
        return [r.choices[0].message.content for r in rs]

    assert asyncio.run(together()) == alone


def test_an_image_request_and_text_requests_run_together(live: LiveServer) -> None:
    """A long image answer streams while short text requests come and go beside it: they finish
    before it does (nothing waits for the image request to end)."""
    async def run() -> tuple[float, list[float]]:
        aclient = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)
        start = time.perf_counter()

        async def image_request() -> float:
            await aclient.chat.completions.create(
                model=VISION, temperature=0, max_tokens=120, extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url(BLUE_SQUARE)}},
                    {"type": "text", "text": "Tell a long story."}]}])
            return time.perf_counter() - start

        async def text_request() -> float:
            await asyncio.sleep(0.5)
            await aclient.chat.completions.create(model=VISION, temperature=0, max_tokens=4,
                                                  messages=[{"role": "user", "content": "Hi"}])
            return time.perf_counter() - start

        done = await asyncio.gather(image_request(), text_request(), text_request())
        return done[0], list(done[1:])

    image_done, texts_done = asyncio.run(run())
    assert all(t < image_done for t in texts_done), (image_done, texts_done)


@pytest.mark.parametrize(("url", "message"), [
    ("data:image/png;base64,!!!!", "not valid base64"),
    (data_url(b"this is not an image"), "not in a supported format"),
    (data_url(RED_CIRCLE[: len(RED_CIRCLE) // 2]), "could not be decoded"),
    (data_url(drawing("circle", "red", "BMP"), "image/bmp"), "not in a supported format"),
    ("http://127.0.0.1:9/cat.png", "image URLs are turned off"),
    ("ftp://example.com/cat.png", "data: URL or an http(s) URL"),
])
def test_bad_images_are_a_400_in_openai_format(client: openai.OpenAI, url: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=VISION, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}])
    assert message in str(info.value)


def test_an_oversized_image_is_a_400(vision_home: Path) -> None:
    server = LiveServer(vision_home, "--model", VISION, "--parallel", "1", "--ctx-size", "256",
                        env={"LOKAL_IMAGE_MAX_PIXELS": "1000", "LOKAL_IMAGE_URLS": "true"})
    try:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="over this server's limit of 1000 pixels"):
            ask(c, RED_CIRCLE)
        # image URLs on: loopback and private addresses are still refused, by name or by address
        for url in ("http://127.0.0.1:9/a.png", "http://localhost:9/a.png", "http://10.1.2.3/a.png",
                    "http://[::1]:9/a.png", "http://169.254.169.254/latest/meta-data"):
            with pytest.raises(openai.BadRequestError, match="private or local address"):
                c.chat.completions.create(model=VISION, max_tokens=4, messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}]}])
    finally:
        server.stop()


def test_an_image_for_a_text_only_model_is_a_400_in_every_api(live: LiveServer) -> None:
    c = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError, match=f"model {TEXT_ONLY} does not accept images"):
        ask(c, RED_CIRCLE, model=TEXT_ONLY)
    with pytest.raises(ollama.ResponseError, match="does not accept images") as info:
        ollama.Client(host=live.url).chat(model=TEXT_ONLY, messages=[
            {"role": "user", "content": "?", "images": [base64.b64encode(RED_CIRCLE).decode()]}])
    assert info.value.status_code == 400
    with pytest.raises(anthropic.BadRequestError, match="does not accept images"):
        anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0).messages.create(
            model=TEXT_ONLY, max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": base64.b64encode(RED_CIRCLE).decode()}},
                {"type": "text", "text": "?"}]}])


def test_ollama_images_on_chat_and_generate(live: LiveServer, client: openai.OpenAI) -> None:
    o = ollama.Client(host=live.url)
    b64 = base64.b64encode(RED_CIRCLE).decode()
    chat = o.chat(model=VISION, messages=[{"role": "user", "content": "What is in this picture?", "images": [b64]}],
                  options={"temperature": 0, "num_predict": 12})
    plain = o.chat(model=VISION, messages=[{"role": "user", "content": "What is in this picture?"}],
                   options={"temperature": 0, "num_predict": 12})
    assert chat.message.content != plain.message.content
    gen = o.generate(model=VISION, prompt="What is in this picture?", images=[RED_CIRCLE],
                     options={"temperature": 0, "num_predict": 12})
    assert gen.response == chat.message.content  # the same chat, rendered the same way
    with pytest.raises(ollama.ResponseError, match="not valid base64") as info:
        o.chat(model=VISION, messages=[{"role": "user", "content": "?", "images": ["@@@"]}])
    assert info.value.status_code == 400


def test_anthropic_image_blocks(live: LiveServer, client: openai.OpenAI) -> None:
    a = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0, timeout=120)

    def say(data: str) -> str:
        content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                   {"type": "text", "text": "What is in this picture?"}]
        msg = a.messages.create(model=VISION, max_tokens=12, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": content}])
        return "".join(b.text for b in msg.content if b.type == "text")

    red = say(base64.b64encode(RED_CIRCLE).decode())
    assert red == ask(client, RED_CIRCLE).choices[0].message.content  # the same chat as OpenAI's
    assert red != say(base64.b64encode(BLUE_SQUARE).decode())
    with pytest.raises(anthropic.BadRequestError, match="not in a supported format"):
        say(base64.b64encode(b"GIF89a-broken").decode())
    # count_tokens counts the image's tokens as the request reads them
    counted = a.messages.count_tokens(model=VISION, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(RED_CIRCLE).decode()}},
        {"type": "text", "text": "What is in this picture?"}]}])
    plain = a.messages.count_tokens(model=VISION, messages=[{"role": "user", "content": "What is in this picture?"}])
    assert counted.input_tokens == plain.input_tokens + N_IMAGE_TOKENS


def test_show_lists_the_vision_capability(live: LiveServer) -> None:
    show = httpx.post(live.url + "/api/show", json={"model": VISION}, timeout=30).json()
    assert "vision" in show["capabilities"]
    text = httpx.post(live.url + "/api/show", json={"model": TEXT_ONLY}, timeout=30).json()
    assert "vision" not in text["capabilities"]
