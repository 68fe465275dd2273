"""Images in requests: Pillow decoding within limits, data: URLs, which addresses an image URL may
reach, and where each image's marker goes in the chat."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from lokal.config import Settings
from lokal.engine.sequence import image_placeholders
from lokal.engine.vision import IMAGE_MARKER
from lokal.runtime.errors import InvalidRequest
from lokal.runtime.images import (
    MAX_IMAGES,
    ImagePart,
    decode_base64,
    decode_data_url,
    decode_image,
    image_from_url,
    split_images,
)

SETTINGS = Settings(image_max_bytes=64 * 1024, image_max_pixels=512 * 512)


def encoded(fmt: str, size: tuple[int, int] = (20, 10), colour: str = "red", **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats_decode_to_rgb_pixels(fmt: str) -> None:
    bitmap = decode_image(encoded(fmt), SETTINGS, "p")
    assert (bitmap.width, bitmap.height) == (20, 10)
    assert len(bitmap.rgb) == 20 * 10 * 3
    r, g, b = bitmap.rgb[:3]
    assert r > 200 and g < 60 and b < 60


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("blue", "red", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    bitmap = decode_image(buf.getvalue(), SETTINGS, "p")
    assert bitmap.rgb[:3] == bytes(Image.new("RGB", (1, 1), "blue").convert("P").convert("RGB").tobytes())


def test_the_digest_is_of_the_pixels_not_the_encoding() -> None:
    png, gif = decode_image(encoded("PNG"), SETTINGS, "p"), decode_image(encoded("GIF"), SETTINGS, "p")
    assert png.digest == decode_image(encoded("PNG", compress_level=1), SETTINGS, "p").digest
    assert png.digest != decode_image(encoded("PNG", colour="blue"), SETTINGS, "p").digest
    assert png.rgb == gif.rgb and png.digest == gif.digest


@pytest.mark.parametrize(("data", "message"), [
    (encoded("BMP"), "not in a supported format"),
    (encoded("TIFF"), "not in a supported format"),
    (b"%PDF-1.4 not an image", "not in a supported format"),
    (encoded("PNG", (200, 200))[:60], "could not be decoded"),
    (b"", "image is empty"),
    (encoded("PNG", (600, 600)), "over this server's limit of 262144 pixels"),
    (b"\x89PNG" + bytes(70 * 1024), "over this server's limit of 65536"),
])
def test_bad_images_are_invalid_requests_that_say_why(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        decode_image(data, SETTINGS, "messages.0.content.1")
    assert info.value.param == "messages.0.content.1" and info.value.code == "invalid_image"


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    # 16000 × 16000 one-bit pixels compress to ~30 KB; the size check comes before any pixel is read.
    buf = io.BytesIO()
    Image.new("1", (16000, 16000)).save(buf, "PNG")
    assert len(buf.getvalue()) < SETTINGS.image_max_bytes
    with pytest.raises(InvalidRequest, match="pixels"):
        decode_image(buf.getvalue(), SETTINGS, "p")


def test_base64_and_data_urls() -> None:
    b64 = base64.b64encode(encoded("PNG")).decode()
    assert decode_base64(b64, SETTINGS, "p").width == 20
    assert decode_data_url(f"data:image/png;base64,{b64}", SETTINGS, "p").width == 20
    for bad, message in [("@@@", "not valid base64"), (42, "base64 string")]:
        with pytest.raises(InvalidRequest, match=message):
            decode_base64(bad, SETTINGS, "p")
    for url in ("data:image/png," + b64, "data:;base64"):
        with pytest.raises(InvalidRequest, match="data:<type>;base64"):
            decode_data_url(url, SETTINGS, "p")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/a.png", "http://localhost:8080/a.png", "http://10.0.0.1/a.png", "http://192.168.1.1/a.png",
    "http://172.16.0.1/a.png", "http://169.254.169.254/latest", "http://[::1]/a.png", "http://[fe80::1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png", "http://0.0.0.0/a.png", "http://100.64.0.1/a.png", "https://224.0.0.1/a",
])
def test_image_urls_never_reach_private_or_local_addresses(url: str) -> None:
    settings = Settings(image_urls=True)
    with pytest.raises(InvalidRequest, match="private or local address"):
        asyncio.run(image_from_url(url, settings, "p"))


def test_image_urls_are_off_unless_allowed_and_other_schemes_never_work() -> None:
    with pytest.raises(InvalidRequest, match="turned off"):
        asyncio.run(image_from_url("https://example.com/a.png", Settings(), "p"))
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", ""):
        with pytest.raises(InvalidRequest, match="image URL"):
            asyncio.run(image_from_url(url, Settings(image_urls=True), "p"))


def test_split_images_puts_a_marker_where_each_image_was() -> None:
    red, blue = (decode_image(encoded("PNG", colour=c), SETTINGS, "p") for c in ("red", "blue"))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "image", "image": ImagePart(red)},
                                     {"type": "text", "text": " b "}, {"type": "image", "image": ImagePart(blue)}]},
    ]
    out, images = split_images(messages)
    assert out[0] == messages[0]
    assert out[1] == {"role": "user", "content": f"a {IMAGE_MARKER} b {IMAGE_MARKER}"}
    assert images == [red, blue]
    assert str(ImagePart(red)).startswith("image sha256:")  # logs never print pixels
    with pytest.raises(InvalidRequest, match=f"at most {MAX_IMAGES} images"):
        split_images([{"role": "user", "content": [{"type": "image", "image": ImagePart(red)}] * (MAX_IMAGES + 1)}])


def test_placeholders_are_negative_and_differ_by_image_and_position() -> None:
    a, b = image_placeholders(b"\x01" * 32, 16), image_placeholders(b"\x02" * 32, 16)
    assert all(t < 0 for t in a + b)
    assert len(set(a)) == 16 and not set(a) & set(b)
