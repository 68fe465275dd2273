"""The ``/api`` router: every Ollama endpoint lokal serves."""

from __future__ import annotations

from fastapi import APIRouter

from lokal.server.ollama import create, generate, models, pull

router = APIRouter(prefix="/api")
for part in (generate.router, models.router, pull.router, create.router):
    router.include_router(part)
