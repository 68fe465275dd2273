"""Ollama-compatible endpoints under ``/api`` (generate, chat, models, pull, create, blobs)."""
