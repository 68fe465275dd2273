"""Every setting lokal reads from the environment, in one place (``LOKAL_*`` variables)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_threads() -> int:
    # llama.cpp decodes fastest with one thread per physical core; leave none idle on small boxes.
    return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """lokal's configuration. Each field maps to ``LOKAL_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOKAL_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".lokal")
    host: str = "127.0.0.1"
    port: int = 11435
    default_model: str = "smollm2:135m"
    threads: int = Field(default_factory=_default_threads, ge=1)
    ctx_size: int = Field(default=4096, ge=64, description="context length per slot")
    parallel: int = Field(default=0, ge=0, le=256, description="sequences decoded together; 0 = automatic")
    batch_size: int = Field(default=512, ge=16, description="token budget of one decode step")
    max_queue: int = Field(default=256, ge=0, description="waiting requests before 503")
    prefix_cache: bool = Field(default=True, description="reuse KV cells of earlier prompts")
    max_loaded_models: int = Field(default=2, ge=1, description="models kept in memory at once")
    log_level: str = "info"


def get_settings() -> Settings:
    """Read settings from the environment (fresh each call: tests change ``LOKAL_*``)."""
    return Settings()
