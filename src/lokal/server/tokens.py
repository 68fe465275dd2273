"""``POST /tokenize`` and ``POST /detokenize`` in both shapes clients know.

llama.cpp's server: ``{"content", "add_special", "parse_special", "with_pieces"}`` →
``{"tokens": [ids]}`` (or ``[{"id", "piece"}]``), and ``{"tokens"}`` → ``{"content"}``.
vLLM's: ``{"model", "prompt", "add_special_tokens", "return_token_strs"}`` or ``{"model",
"messages", "add_generation_prompt"}`` → ``{"count", "max_model_len", "tokens", "token_strs"}``,
and ``{"model", "tokens"}`` → ``{"prompt"}``. One route each: the body's keys say which. ``model``
is optional: the only loaded model, else the server's default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime

router = APIRouter(tags=["tokens"])

MAX_TEXT_CHARS = 4 * 2**20  # what one request may ask to tokenize
MAX_TOKENS = 2**20  # ids one request may ask to detokenize


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(BaseModel):
    type: str = "text"
    text: str


class TokenizeMessage(_Request):
    role: str = Field(min_length=1, max_length=64)
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class TokenizeRequest(_Request):
    """llama.cpp's (``content``) or vLLM's (``prompt``, or ``messages``) request."""

    model: str | None = Field(default=None, min_length=1, max_length=512)
    content: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    messages: list[TokenizeMessage] | None = Field(default=None, min_length=1, max_length=4096)
    # llama.cpp's switches (its defaults: no BOS, special-token text parsed)
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    # vLLM's switches (its defaults: BOS for a prompt, none added to a rendered chat)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        given = [k for k in ("content", "prompt", "messages") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of content (llama.cpp), prompt or messages (vLLM)")
        return self


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int]  # the text, or its bytes where a token is part of a UTF-8 character


class TokenizeResponse(BaseModel):
    """llama.cpp's answer is ``tokens`` alone; vLLM's adds ``count``, ``max_model_len`` and,
    when asked, ``token_strs``."""

    tokens: list[int] | list[TokenPiece]
    count: int | None = None
    max_model_len: int | None = None
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = Field(default=None, min_length=1, max_length=512)
    tokens: list[int] = Field(max_length=MAX_TOKENS)


class DetokenizeResponse(BaseModel):
    content: str  # llama.cpp's name
    prompt: str  # vLLM's name, the same text


def model_or_default(runtime: Runtime, model: str | None) -> str:
    """The request's model, else the only loaded one, else the server's default."""
    if model:
        return model
    loaded = runtime.loaded()
    return loaded[0].name if len(loaded) == 1 else runtime.settings.default_model


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(body: TokenizeRequest, runtime: Runtime = Depends(get_runtime)) -> TokenizeResponse:
    """Token ids of a text (llama.cpp's ``content``, vLLM's ``prompt``) or of a chat rendered
    through the model's template (vLLM's ``messages``)."""
    model = model_or_default(runtime, body.model)
    if body.messages is not None:
        ids = await runtime.tokenize_chat(model, [m.as_dict() for m in body.messages],
                                          add_generation_prompt=body.add_generation_prompt)
    elif body.prompt is not None:
        add = True if body.add_special_tokens is None else body.add_special_tokens
        ids = await runtime.tokenize(model, body.prompt, special=add, parse_special=True)
    else:
        assert body.content is not None
        add = body.add_special if body.add_special_tokens is None else body.add_special_tokens
        ids = await runtime.tokenize(model, body.content, special=add, parse_special=body.parse_special)
    if body.content is not None:  # llama.cpp's shape
        if not body.with_pieces:
            return TokenizeResponse(tokens=ids)
        pieces = await runtime.token_pieces(model, ids)
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=_piece(p)) for t, p in zip(ids, pieces, strict=True)])
    strs = None
    if body.return_token_strs:
        strs = [p.decode("utf-8", "replace") for p in await runtime.token_pieces(model, ids)]
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=await runtime.context_length(model),
                            token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, runtime: Runtime = Depends(get_runtime)) -> DetokenizeResponse:
    """The text of token ids, special tokens written out; an id outside the vocabulary is a 400."""
    if any(t < 0 for t in body.tokens):
        raise APIError(400, "token ids must not be negative", param="tokens")
    text = await runtime.detokenize(model_or_default(runtime, body.model), body.tokens, special=True)
    return DetokenizeResponse(content=text, prompt=text)
