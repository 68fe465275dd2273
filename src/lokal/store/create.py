"""``create_model``: a new model from a Modelfile, sharing its base model's weights blob."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lokal.store.adapter import check_adapter
from lokal.store.catalog import find_catalog_entry
from lokal.store.errors import InvalidModelName, ModelNotFound
from lokal.store.gguf_facts import GgufFacts, read_gguf_facts
from lokal.store.kinds import kind_from_facts
from lokal.store.loadable import check_loadable, read_loadable_gguf_facts
from lokal.store.manifest import AdapterLayer, Manifest, utc_now
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import MESSAGE_ROLES, AdapterRef, Modelfile, ModelfileError, parse_parameter
from lokal.store.names import parse_model_name
from lokal.store.progress import ProgressCallback, PullProgress, ignore_progress
from lokal.store.pull import pull_model
from lokal.store.sources.hf import is_hf_name
from lokal.templates.go_template import SUPPORTED, GoTemplateError, go_to_jinja, looks_like_go_template

_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]


@dataclass
class _Base:
    """The weights a new model is built on, and the manifest it inherits from (if any)."""

    digest: str
    size: int
    source: str
    facts: GgufFacts
    manifest: Manifest | None


def create_model(
    store: ModelStore,
    name: str,
    modelfile: Modelfile,
    base_dir: Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    allow_paths: bool = True,
) -> Manifest:
    """Create (or atomically replace) model ``name`` from ``modelfile`` and return its manifest.

    ``FROM`` may be a model in the store, a catalog or ``hf.co/`` name not pulled yet (it is
    pulled), a GGUF file (relative to ``base_dir``, default the working directory; refused
    unless ``allow_paths``), or ``sha256:<hex>`` of a blob in the store. The new manifest points
    at the base's blob (no copy) and inherits its system prompt, template, parameters, messages
    and license, each overridden by the Modelfile's. A Go (Ollama) TEMPLATE is translated into
    Jinja; the template is checked by rendering a sample conversation before anything is written.

    ``ADAPTER`` lines add LoRA adapters (after the base's own, if it has some): each is checked
    against the base's weights and stored as a blob of its own; the weights are not copied.

    Raises :class:`ModelfileError` (bad template, parameter, message), :class:`InvalidModelName`,
    :class:`ModelNotFound` (unknown FROM), :class:`InvalidGguf` (its subclasses
    :class:`UnloadableGguf` for a GGUF llama.cpp cannot load and :class:`InvalidAdapter` for an
    adapter that does not fit the base) or :class:`PullError`.
    """
    report = progress or ignore_progress
    target = parse_model_name(name)
    template = prepare_template(modelfile.template) if modelfile.template is not None else None
    parameters = {key.lower(): parse_parameter(key, value) for key, value in modelfile.parameters.items()}
    messages = [_checked_message(m) for m in modelfile.messages]

    report(PullProgress("using base model"))
    base = _resolve_base(store, modelfile.from_.strip(), base_dir, report, allow_paths)
    inherited = base.manifest
    projector = (_resolve_projector(store, modelfile.projector.strip(), base_dir, allow_paths)
                 if modelfile.projector is not None else inherited.projector if inherited else None)
    try:
        adapters = [*(inherited.adapters if inherited else []),
                    *_store_adapters(store, modelfile.adapters, base, base_dir, report, allow_paths)]
    except BaseException:
        if base.manifest is None and base.source.startswith("file:"):  # FROM a file: imported for nothing
            collect_unused_blob(store, base.digest)
        raise
    manifest = Manifest(
        name=str(target),
        digest=base.digest,
        size=base.size,
        source=base.source,
        facts=base.facts,
        system=modelfile.system if modelfile.system is not None else inherited.system if inherited else None,
        template=template if template is not None else inherited.template if inherited else None,
        parameters={**(inherited.parameters if inherited else {}), **parameters},
        messages=messages or (list(inherited.messages) if inherited else []),
        license=modelfile.license or (inherited.license if inherited else None) or base.facts.license,
        projector=projector,
        adapters=adapters,
        modified_at=utc_now(),
    )
    report(PullProgress("writing manifest"))
    previous = _existing(store, str(target))
    try:
        store.write_manifest(manifest)  # atomic: the old manifest stays whole until the rename
    except BaseException:
        for adapter in adapters:
            collect_unused_blob(store, adapter.digest)
        raise
    for digest in previous.blobs - manifest.blobs if previous is not None else ():
        collect_unused_blob(store, digest)
    report(PullProgress("success"))
    return manifest


def prepare_template(template: str) -> str:
    """``template`` as the Jinja chat template lokal stores: an Ollama Go template is translated,
    and the result must render a sample conversation. Raises :class:`ModelfileError`."""
    # The chat template code is plain Jinja in a sandbox; the store only uses it to validate.
    from lokal.templates.chat_template import ChatTemplate, TemplateError

    jinja = template
    if looks_like_go_template(template):
        try:
            jinja = go_to_jinja(template)
        except GoTemplateError as e:
            raise ModelfileError(
                f"TEMPLATE: cannot translate this Go template ({e}); lokal translates {SUPPORTED}, "
                "or give a Jinja chat template"
            ) from None
    try:
        rendered = ChatTemplate(jinja).render(_SAMPLE_CONVERSATION, add_generation_prompt=True)
    except TemplateError as e:
        raise ModelfileError(f"TEMPLATE: {e} (lokal's chat templates are Jinja, with messages)") from None
    if "What is 2 + 2?" not in rendered:
        raise ModelfileError(
            "TEMPLATE: the template does not render the conversation's messages "
            "(Jinja loops over messages; Go templates use .Prompt or range .Messages)"
        )
    return jinja


def _checked_message(message: dict[str, str]) -> dict[str, str]:
    role, content = message.get("role"), message.get("content")
    if role not in MESSAGE_ROLES:
        raise ModelfileError(f'MESSAGE role must be system, user or assistant, not "{str(role)[:64]}"')
    if not isinstance(content, str):
        raise ModelfileError("MESSAGE content must be text")
    return {"role": role, "content": content}


def _resolve_base(
    store: ModelStore, ref: str, base_dir: Path | None, report: ProgressCallback, allow_paths: bool
) -> _Base:
    if not ref:
        raise ModelfileError("FROM is empty")
    digest_match = _DIGEST.fullmatch(ref)
    if digest_match:
        digest = f"sha256:{digest_match.group(1)}"
        blob = store.blob_path(digest)
        if not blob.is_file():
            raise ModelNotFound(f"FROM {digest}: no such blob in the store")
        owner = next((m for m in store.list() if m.digest == digest), None)
        source = owner.source if owner else f"blob:{digest}"
        # An uploaded blob (POST /api/blobs) becomes a model only if llama.cpp can load it.
        facts = check_loadable(read_gguf_facts(blob), f"FROM {digest}")
        return _Base(digest, blob.stat().st_size, source, facts, None)
    in_store = _existing_name(store, ref)
    if in_store is None and _looks_like_path(ref, base_dir):
        return _import_base(store, ref, base_dir, report, allow_paths)
    try:
        model = parse_model_name(ref)
    except InvalidModelName as e:
        raise ModelfileError(f"FROM {ref}: not a model name, a .gguf path or a sha256 digest ({e})") from None
    base = in_store
    if base is None:
        if find_catalog_entry(model) is None and not is_hf_name(ref):
            raise ModelNotFound(
                f'FROM {ref}: model "{model}" is not in the store nor in the catalog; '
                "run 'lokal list', or give a .gguf path"
            )
        base = pull_model(store, ref, report)
    check_loadable(base.facts, f"FROM {ref}")  # a model stored before lokal checked this
    return _Base(base.digest, base.size, base.source, base.facts, base)


def _import_base(
    store: ModelStore, ref: str, base_dir: Path | None, report: ProgressCallback, allow_paths: bool
) -> _Base:
    if not allow_paths:
        raise ModelfileError(f"FROM {ref}: file paths are not accepted here; use a model name or sha256 digest")
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    blob_name = _DIGEST.fullmatch(path.name)
    if blob_name and path.parent == store.blobs_dir.resolve() and path.is_file():
        return _resolve_base(store, path.name, base_dir, report, allow_paths)  # a blob: nothing to import
    if path.is_dir():
        raise ModelfileError(f"FROM {ref}: is a folder; lokal creates models from one .gguf file")
    if not path.is_file():
        raise ModelfileError(f"FROM {ref}: no such file ({path})")
    read_loadable_gguf_facts(path)  # InvalidGguf / UnloadableGguf before anything is copied
    report(PullProgress(f"importing {path.name}"))
    digest, facts = store.add_gguf(path)  # a copy: the file can change later, the model will not
    return _Base(digest, store.blob_path(digest).stat().st_size, f"file:{path}", facts, None)


def _resolve_projector(store: ModelStore, ref: str, base_dir: Path | None, allow_paths: bool) -> str:
    """The blob digest of a second FROM: a vision projector's GGUF (a path, a sha256 digest, or a
    stored model of kind vision-projector). Whether it fits the model is checked when it loads."""
    where = f"FROM {ref}"
    digest_match = _DIGEST.fullmatch(ref)
    in_store = None if digest_match else _existing_name(store, ref)
    if in_store is not None:
        if in_store.kind != "vision-projector":
            raise ModelfileError(f"{where}: a second FROM must be a vision projector, not a {in_store.kind} model")
        return in_store.digest
    if digest_match:
        digest = f"sha256:{digest_match.group(1)}"
        if not store.blob_path(digest).is_file():
            raise ModelNotFound(f"{where}: no such blob in the store")
    else:
        if not allow_paths:
            raise ModelfileError(f"{where}: file paths are not accepted here; use a model name or sha256 digest")
        path = Path(ref).expanduser()
        path = ((base_dir or Path.cwd()) / path if not path.is_absolute() else path).resolve()
        if not path.is_file():
            raise ModelfileError(f"{where}: no such file ({path})")
        if kind_from_facts(read_gguf_facts(path)) != "vision-projector":
            raise ModelfileError(f"{where}: a second FROM must be a vision projector (mmproj) GGUF")
        digest = store.add_blob(path)
    if kind_from_facts(read_gguf_facts(store.blob_path(digest))) != "vision-projector":
        raise ModelfileError(f"{where}: a second FROM must be a vision projector (mmproj) GGUF")
    return digest


def _store_adapters(
    store: ModelStore, refs: list[AdapterRef], base: _Base, base_dir: Path | None, report: ProgressCallback,
    allow_paths: bool,
) -> list[AdapterLayer]:
    """Check every ``ADAPTER`` against the base's weights (:class:`InvalidAdapter`), then store
    them (a path is copied into the store): all of them, or none if one is refused."""
    checked: list[tuple[AdapterRef, Path, str | None]] = []  # (ref, file, digest if already a blob)
    for ref in refs:
        where = f"ADAPTER {ref.source}"
        digest_match = _DIGEST.fullmatch(ref.source.strip())
        if digest_match:
            digest = f"sha256:{digest_match.group(1)}"
            path = store.blob_path(digest)
            if not path.is_file():
                raise ModelNotFound(f"{where}: no such blob in the store")
        else:
            if not allow_paths:
                raise ModelfileError(f"{where}: file paths are not accepted here; upload the adapter as a blob")
            digest, path = None, Path(ref.source).expanduser()
            path = ((base_dir or Path.cwd()) / path if not path.is_absolute() else path).resolve()
            if not path.is_file():
                raise ModelfileError(f"{where}: no such file ({path})")
        check_adapter(path, store.blob_path(base.digest), where)
        checked.append((ref, path, digest))
    layers: list[AdapterLayer] = []
    try:
        for ref, path, digest in checked:
            if digest is None:
                report(PullProgress(f"importing adapter {path.name}"))
                digest = store.add_blob(path)  # a copy: the model does not depend on the file later
            layers.append(AdapterLayer(digest=digest, size=store.blob_path(digest).stat().st_size, scale=ref.scale))
    except BaseException:
        for layer in layers:
            collect_unused_blob(store, layer.digest)
        raise
    return layers


def _looks_like_path(ref: str, base_dir: Path | None) -> bool:
    if ref.startswith(("/", "./", "../", "~")) or ref.lower().endswith(".gguf"):
        return True
    try:
        return ((base_dir or Path.cwd()) / ref).exists()
    except OSError:
        return False


def _existing_name(store: ModelStore, ref: str) -> Manifest | None:
    """The store's model ``ref`` when ``ref`` is a valid name of one, else None."""
    try:
        return store.get(ref)
    except (ModelNotFound, InvalidModelName):
        return None


def _existing(store: ModelStore, name: str) -> Manifest | None:
    try:
        return store.get(name)
    except ModelNotFound:
        return None


def collect_unused_blob(store: ModelStore, digest: str) -> None:
    """Drop the blob a replaced model used if no model uses it any more."""
    with store.lock():
        if all(digest not in m.blobs for m in store.list()):
            store.blob_path(digest).unlink(missing_ok=True)
