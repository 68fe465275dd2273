"""Errors raised by the model store. Each message is one line a user can act on."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises."""


class InvalidModelName(StoreError):
    """A model name that cannot be used (bad characters, path tricks, too long)."""


class ModelNotFound(StoreError):
    """No model of that name is in the store."""


class InvalidGguf(StoreError):
    """A file that is not a readable GGUF model."""


class DigestMismatch(StoreError):
    """A file whose sha256 is not the one it was expected to have."""


class PullError(StoreError):
    """A model could not be pulled from its source."""
