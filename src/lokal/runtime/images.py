"""Images in requests: decoded with Pillow within limits, from base64, ``data:`` URLs, or (when
the server allows it) http(s) URLs that resolve to public addresses only.

Every API's adapter turns its image parts into ``ImagePart`` content parts of a message through
here; the pipeline puts ``IMAGE_MARKER`` where each was and hands the ``Bitmap``s to the model's
vision projector. Bad input is an ``InvalidRequest`` (400 in each API's format)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from lokal.config import Settings
from lokal.engine.vision import IMAGE_MARKER, Bitmap
from lokal.runtime.errors import InvalidRequest

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # a GIF's first frame
MAX_IMAGES = 16  # per request
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImagePart:
    """A message content part that is an image (``{"type": "image", "image": ImagePart}``)."""

    bitmap: Bitmap

    def __str__(self) -> str:  # logs and routing keys name the image, not its pixels
        return f"image sha256:{self.bitmap.digest.hex()}"

    __repr__ = __str__


def image_error(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_image")


def decode_image(data: bytes, settings: Settings, param: str) -> Bitmap:
    """An encoded image (PNG, JPEG, WebP or GIF, within the server's byte and pixel limits) as RGB."""
    if len(data) > settings.image_max_bytes:
        raise image_error(f"image is {len(data)} bytes, over this server's limit of {settings.image_max_bytes}",
                          param)
    if not data:
        raise image_error("image is empty", param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size
                if width * height > settings.image_max_pixels:
                    raise image_error(f"image is {width}×{height} pixels, over this server's limit of "
                                      f"{settings.image_max_pixels} pixels", param)
                img.seek(0)
                rgb = img.convert("RGB")
                raw = rgb.tobytes()
    except InvalidRequest:
        raise
    except UnidentifiedImageError:
        raise image_error(f"image is not in a supported format ({', '.join(f.lower() for f in FORMATS)})",
                          param) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise image_error("image has too many pixels", param) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise image_error(f"image could not be decoded: {exc}", param) from None
    digest = hashlib.sha256(f"{width}x{height}:".encode() + raw).digest()
    return Bitmap(width, height, raw, digest)


def decode_base64(text: Any, settings: Settings, param: str) -> Bitmap:
    """A base64 image (Ollama's ``images``, Anthropic's base64 source)."""
    if not isinstance(text, str):
        raise image_error("image must be a base64 string", param)
    if len(text) > settings.image_max_bytes * 4 // 3 + 4:
        raise image_error(f"image is over this server's limit of {settings.image_max_bytes} bytes", param)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise image_error("image is not valid base64", param) from None
    return decode_image(data, settings, param)


def decode_data_url(url: str, settings: Settings, param: str) -> Bitmap:
    """``data:image/png;base64,...``."""
    head, sep, body = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise image_error("a data URL must be data:<type>;base64,<data>", param)
    return decode_base64(body, settings, param)


async def image_from_url(url: Any, settings: Settings, param: str) -> Bitmap:
    """An image from a ``data:`` URL, or from an http(s) URL when ``LOKAL_IMAGE_URLS`` allows it:
    every address its host resolves to must be public (no private, loopback, link-local, ...),
    the connection goes to the address that was checked, redirects are checked the same way, and
    the download is bounded in size and time."""
    if not isinstance(url, str) or not url:
        raise image_error("image URL must be a string", param)
    if url.startswith("data:"):
        return await asyncio.to_thread(decode_data_url, url, settings, param)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise image_error("image URL must be a data: URL or an http(s) URL", param)
    if not settings.image_urls:
        raise image_error("image URLs are turned off on this server (LOKAL_IMAGE_URLS); send the image as a "
                          "data: URL", param)
    data = await _download(url, settings, param)
    return await asyncio.to_thread(decode_image, data, settings, param)


async def _download(url: str, settings: Settings, param: str) -> bytes:
    limit = settings.image_max_bytes
    async with httpx.AsyncClient(timeout=settings.image_url_timeout, follow_redirects=False,
                                 trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise image_error("image URL must be an http(s) URL with a host", param)
            address = await _public_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                            param)
            host = f"[{address}]" if ":" in address else address
            pinned = parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()
            headers = {"Host": parts.netloc.rpartition("@")[2]}
            try:
                async with asyncio.timeout(settings.image_url_timeout):
                    async with client.stream("GET", pinned, headers=headers,
                                             extensions={"sni_hostname": parts.hostname}) as resp:
                        if resp.is_redirect and "location" in resp.headers:
                            url = str(httpx.URL(parts.geturl()).join(resp.headers["location"]))
                            continue
                        if resp.status_code != 200:
                            raise image_error(f"image URL answered HTTP {resp.status_code}", param)
                        body = bytearray()
                        async for piece in resp.aiter_bytes():
                            body += piece
                            if len(body) > limit:
                                raise image_error(f"image is over this server's limit of {limit} bytes", param)
                        return bytes(body)
            except TimeoutError:
                raise image_error(f"image URL took longer than {settings.image_url_timeout:g} s", param) from None
            except httpx.HTTPError as exc:
                raise image_error(f"image URL could not be fetched: {exc}", param) from None
    raise image_error(f"image URL redirected more than {MAX_REDIRECTS} times", param)


async def _public_address(host: str, port: int, param: str) -> str:
    """The first address ``host`` resolves to, if every one of them is public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise image_error(f"image URL host {host!r} does not resolve", param) from None
    addresses = [str(info[4][0]) for info in infos]
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise image_error(f"image URL host {host!r} resolves to a private or local address ({ip}); "
                              "lokal fetches images from public addresses only", param)
    if not addresses:
        raise image_error(f"image URL host {host!r} does not resolve", param)
    return addresses[0]


def split_images(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Bitmap]]:
    """Messages whose content lists ``ImagePart``s, as text with ``IMAGE_MARKER`` where each image
    was (text parts joined), and the images in order. Messages without images are kept as they are."""
    images: list[Bitmap] = []
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(p.get("image"), ImagePart) for p in content):
            texts = []
            for part in content:
                image = part.get("image")
                if isinstance(image, ImagePart):
                    images.append(image.bitmap)
                    texts.append(IMAGE_MARKER)
                else:
                    texts.append(str(part.get("text", "")))
            m = {**m, "content": "".join(texts)}
        out.append(m)
    if len(images) > MAX_IMAGES:
        raise image_error(f"a request may hold at most {MAX_IMAGES} images, not {len(images)}", "messages")
    return out, images
