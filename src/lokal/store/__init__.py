"""The model store: content-addressed GGUF blobs, manifests, the catalog, and pulls."""

from lokal.store.catalog import CATALOG, DEFAULT_MODEL, CatalogEntry, WheelPart, find_catalog_entry
from lokal.store.errors import DigestMismatch, InvalidGguf, InvalidModelName, ModelNotFound, PullError, StoreError
from lokal.store.gguf_facts import GgufFacts, read_gguf_facts
from lokal.store.loadable import UnloadableGguf, read_loadable_gguf_facts
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import ModelName, parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress
from lokal.store.pull import pull_model

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogEntry",
    "DigestMismatch",
    "GgufFacts",
    "InvalidGguf",
    "InvalidModelName",
    "Manifest",
    "ModelName",
    "ModelNotFound",
    "ModelStore",
    "ProgressCallback",
    "PullError",
    "PullProgress",
    "StoreError",
    "UnloadableGguf",
    "WheelPart",
    "find_catalog_entry",
    "parse_model_name",
    "pull_model",
    "read_gguf_facts",
    "read_loadable_gguf_facts",
]
