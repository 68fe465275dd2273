"""Every setting lokal reads from the environment, in one place (``LOKAL_*`` variables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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
    ctx_size: int = Field(
        default=0, ge=0, description="context length per slot; 0 = automatic: sized from the model and the memory "
        "(lokal.runtime.sizing.auto_context), and a request's num_ctx may reload the model with a larger one"
    )
    parallel: int = Field(default=0, ge=0, le=256, description="sequences decoded together; 0 = automatic")
    batch_size: int = Field(default=512, ge=16, description="token budget of one decode step")
    max_queue: int = Field(default=256, ge=0, description="waiting requests before 503")
    prefix_cache: bool = Field(default=True, description="reuse KV cells of earlier prompts")
    prefix_cache_ram_mib: int = Field(
        default=512, ge=0, description="host memory for prefixes evicted from slots, per model; 0 = slots only"
    )
    speculate: Literal["off", "ngram"] = Field(
        default="off", description="speculative decoding (greedy and sampled requests): off, or ngram (prompt lookup)"
    )
    draft: str = Field(
        default="", description="a model with the same vocabulary that drafts tokens for the default model "
        "(speculative decoding, over --speculate); empty = none; other models: Modelfile PARAMETER draft"
    )
    gpu_layers: str = Field(
        default="auto", description="layers offloaded to NVIDIA GPUs: auto (as many as fit in free VRAM, all when "
        "they do), or a number (0 = CPU); a Modelfile's PARAMETER num_gpu sets it per model (docs/gpu.md)"
    )
    tensor_split: str = Field(
        default="", description="each GPU's share of the offloaded layers, e.g. 3,1; empty = by free memory"
    )
    main_gpu: int = Field(
        default=-1, ge=-1,
        description="without --tensor-split, the one GPU to use; -1 = every GPU, split by free memory",
    )
    kv_pool: Literal["per-slot", "shared"] = Field(
        default="per-slot", description="per-slot: each slot reserves its context; shared: sequences take KV cells "
        "from one pool as they grow (--parallel is then the most sequences at once, automatic: 128 with the KV cache "
        "on a GPU, 32 without)"
    )
    kv_cells: int = Field(
        default=0, ge=0, description="cells of the shared KV pool; 0 = automatic (the KV share of free memory)"
    )
    max_loaded_models: int = Field(default=2, ge=1, description="models kept in memory at once")
    keep_alive: str = Field(
        default="5m", description='idle time before a model unloads ("5m", "1h30m", seconds; 0 at once, -1 never)'
    )
    log_level: str = "info"
    converter_cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "lokal" / "converters",
        description="where scripts/install.sh puts llama.cpp's converters (lokal import of a Hugging Face "
        "folder), one folder per llama-cpp-python version (lokal.workshop.converter)",
    )
    # production: see lokal.server.security and the README's Production section
    rate_rpm: int = Field(default=0, ge=0, description="requests per minute per API key (or client address); 0 = off")
    rate_tpm: int = Field(default=0, ge=0, description="prompt+generated tokens per minute per key; 0 = off")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="largest request body; 413 beyond")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="largest request line plus headers, in bytes; 431 beyond"
    )
    max_tokens_limit: int = Field(default=0, ge=0, description="largest max_tokens/num_predict per request; 0 = off")
    max_prompt_tokens: int = Field(default=0, ge=0, description="largest prompt in tokens per request; 0 = off")
    request_timeout: float = Field(default=0, ge=0, description="seconds a generation may run; 0 = no limit")
    # Images sent to vision models (lokal.runtime.images); the request body limit bounds data: URLs too.
    image_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="largest image, encoded; 400 beyond")
    image_max_pixels: int = Field(default=33_554_432, ge=1, description="largest image in pixels; 400 beyond")
    image_urls: bool = Field(
        default=False, description="fetch http(s) image URLs (public addresses only); off: data: URLs only"
    )
    image_url_timeout: float = Field(default=10.0, gt=0, description="seconds an image URL download may take")
    origins: str = Field(default="", description="CORS allow-list, comma-separated origins; empty = CORS off")
    audit_log: bool = Field(default=True, description="one JSON line per request in $LOKAL_HOME/logs/audit.log")
    audit_prompts: bool = Field(default=False, description="also write prompt text into the audit log")
    audit_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="audit log size before rotation")
    audit_backups: int = Field(default=5, ge=0, description="rotated audit logs kept")
    shutdown_grace: float = Field(default=30.0, ge=0, description="seconds in-flight requests get on SIGTERM")
    responses_retention_days: float = Field(
        default=30, ge=0, description="days stored Responses API responses are kept; 0 = forever"
    )
    ray_route_timeout: float = Field(
        default=5.0, gt=0, description="lokal serve --ray: seconds a request waits for a replica to take it "
        "before a 503 (no replica running, or all full)"
    )
    ray_stream_window_ms: float = Field(
        default=20.0, ge=0, le=1000, description="lokal serve --ray: a replica sends a stream's tokens to the "
        "ingress in batches, each token held at most this long (the first token and the last event go at once); "
        "0 = one Ray stream item per event"
    )
    # Ray Serve's autoscaling_config for --autoscale (its defaults): how fast replicas follow load.
    ray_upscale_delay: float = Field(
        default=30.0, ge=0, description="lokal serve --autoscale: seconds load must stay above target before a "
        "replica is added"
    )
    ray_downscale_delay: float = Field(
        default=600.0, ge=0, description="lokal serve --autoscale: seconds load must stay below target before a "
        "replica is removed"
    )
    ray_autoscale_window: float = Field(
        default=30.0, gt=0, description="lokal serve --autoscale: seconds of ongoing-request samples averaged "
        "for a decision"
    )

    @field_validator("ctx_size")
    @classmethod
    def _valid_ctx_size(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError("ctx_size must be 0 (automatic) or at least 64")
        return value

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _valid_gpu_layers(cls, value: object) -> str:
        from lokal.advise.offload import parse_gpu_layers

        n = parse_gpu_layers(value)
        return "auto" if n is None else str(n)

    @field_validator("tensor_split")
    @classmethod
    def _valid_tensor_split(cls, value: str) -> str:
        from lokal.advise.offload import parse_tensor_split

        parse_tensor_split(value)
        return value.strip()

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _valid_keep_alive(cls, value: object) -> str:
        from lokal.runtime.keep_alive import parse_keep_alive

        parse_keep_alive(value)
        return str(value)

    @property
    def database_path(self) -> Path:
        """The SQLite file shared by the web UI's chats and the Responses API's stored responses."""
        return Path(self.home) / "ui.sqlite3"

    @property
    def gpu_layer_count(self) -> int | None:
        """gpu_layers as a number; None: automatic."""
        return None if self.gpu_layers == "auto" else int(self.gpu_layers)

    @property
    def tensor_shares(self) -> tuple[float, ...]:
        """tensor_split as numbers; empty: by free memory."""
        from lokal.advise.offload import parse_tensor_split

        return parse_tensor_split(self.tensor_split)

    @property
    def keep_alive_s(self) -> float:
        """keep_alive in seconds (``math.inf``: never unload)."""
        from lokal.runtime.keep_alive import parse_keep_alive

        return parse_keep_alive(self.keep_alive)


def get_settings() -> Settings:
    """Read settings from the environment (fresh each call: tests change ``LOKAL_*``)."""
    return Settings()
