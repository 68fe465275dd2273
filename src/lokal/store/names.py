"""Model names: ``name[:tag]``, validated so that a name can never escape the store's folders."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lokal.store.errors import InvalidModelName

DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 200
MAX_SEGMENTS = 4
MAX_SEGMENT_LENGTH = 80
MAX_TAG_LENGTH = 128

# A segment or tag starts with a letter, digit or underscore: "." and ".." can never be one.
_SEGMENT = re.compile(r"[a-z0-9_][a-z0-9._-]*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ModelName:
    """A validated model name. ``name`` is lower case (lookups ignore case); ``tag`` keeps its
    case because quantization names such as ``Q4_K_M`` are written that way."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def parse_model_name(text: str) -> ModelName:
    """Parse and validate ``text`` (``smollm2:135m``, ``library/x``, ``hf.co/owner/repo:Q4_K_M``).

    The tag defaults to ``latest``. Raises :class:`InvalidModelName` with the reason.
    """
    if not isinstance(text, str):
        raise InvalidModelName(f"invalid model name {text!r}: expected a string")

    def invalid(reason: str) -> InvalidModelName:
        return InvalidModelName(f'invalid model name "{text}": {reason}')

    if not text:
        raise invalid("the name is empty")
    if len(text) > MAX_NAME_LENGTH:
        raise invalid(f"longer than {MAX_NAME_LENGTH} characters")
    if "\\" in text:
        raise invalid("backslashes are not allowed")
    if any(c.isspace() for c in text):
        raise invalid("spaces are not allowed")
    if ".." in text:
        raise invalid('".." is not allowed')
    if text.startswith("/"):
        raise invalid("absolute paths are not allowed")
    if text.count(":") > 1:
        raise invalid('more than one ":"')

    name, _, tag = text.partition(":")
    if ":" in text and not tag:
        raise invalid('the tag after ":" is empty')
    tag = tag or DEFAULT_TAG
    name = name.lower()

    segments = name.split("/")
    if any(not s for s in segments):
        raise invalid("empty path segment")
    if len(segments) > MAX_SEGMENTS:
        raise invalid(f"more than {MAX_SEGMENTS} path segments")
    for segment in segments:
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise invalid(f'segment "{segment}" is longer than {MAX_SEGMENT_LENGTH} characters')
        if not _SEGMENT.fullmatch(segment):
            raise invalid(
                f'segment "{segment}" may only hold letters, digits, ".", "-" and "_", '
                'and must start with a letter, digit or "_"'
            )
    if len(tag) > MAX_TAG_LENGTH:
        raise invalid(f"the tag is longer than {MAX_TAG_LENGTH} characters")
    if not _TAG.fullmatch(tag):
        raise invalid(
            f'tag "{tag}" may only hold letters, digits, ".", "-" and "_", and must start with a letter, digit or "_"'
        )
    return ModelName(name=name, tag=tag)
