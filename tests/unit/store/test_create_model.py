"""create_model: a new model from a Modelfile on top of a store model, a GGUF file or a blob digest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lokal.store import create as create_module
from lokal.store.create import create_model, prepare_template
from lokal.store.errors import InvalidGguf, InvalidModelName, ModelNotFound
from lokal.store.manifest import Manifest
from lokal.store.model_store import ModelStore
from lokal.store.modelfile import Modelfile, ModelfileError, parse_modelfile
from lokal.store.progress import PullProgress

MakeGguf = Callable[..., Path]
JINJA = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


@pytest.fixture
def base(store: ModelStore, tiny_gguf: MakeGguf) -> Manifest:
    """``base:latest`` with a system prompt, parameters, a message and a license of its own."""
    imported = store.import_file(tiny_gguf(seed=1), "base")
    manifest = imported.model_copy(
        update={
            "system": "base system",
            "parameters": {"temperature": 0.2, "top_p": 0.9, "stop": ["<end>"]},
            "messages": [{"role": "user", "content": "base question"}],
            "license": "base license",
        }
    )
    store.write_manifest(manifest)
    return manifest


def blobs(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir())


def test_from_a_store_model_shares_its_blob_and_inherits_then_overrides(store: ModelStore, base: Manifest) -> None:
    before = blobs(store)
    spec = parse_modelfile("FROM base\nSYSTEM You are a pirate.\nPARAMETER temperature 0.9\nPARAMETER stop <x>\n")
    made = create_model(store, "pirate", spec)
    assert made.name == "pirate:latest"
    assert made.digest == base.digest and made.size == base.size and made.facts == base.facts
    assert blobs(store) == before  # no second copy of the weights
    assert store.gguf_path("pirate") == store.gguf_path("base")
    assert made.system == "You are a pirate."
    assert made.parameters == {"temperature": 0.9, "top_p": 0.9, "stop": ["<x>"]}
    assert made.messages == base.messages and made.license == "base license" and made.template is None
    assert store.get("pirate") == made
    assert store.get("base") == base  # the base is untouched


def test_modelfile_messages_and_license_replace_the_bases(store: ModelStore, base: Manifest) -> None:
    spec = parse_modelfile("FROM base\nMESSAGE user hi\nMESSAGE assistant arr\nLICENSE MIT\n")
    made = create_model(store, "pirate", spec)
    assert made.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "arr"}]
    assert made.license == "MIT" and made.system == "base system"


def test_from_a_relative_gguf_path_imports_it_relative_to_base_dir(
    store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path
) -> None:
    gguf = tiny_gguf("weights.gguf", seed=2)
    made = create_model(store, "mine:v1", Modelfile(from_="./weights.gguf", system="s"), base_dir=tmp_path)
    assert made.source == f"file:{gguf.resolve()}"
    assert store.blob_path(made.digest).read_bytes() == gguf.read_bytes()
    assert made.facts.architecture == "llama" and made.license == "mit" and made.system == "s"
    assert create_model(store, "again", Modelfile(from_="weights.gguf"), base_dir=tmp_path).digest == made.digest
    assert len(blobs(store)) == 1


def test_from_a_sha256_digest_uses_that_blob(store: ModelStore, base: Manifest) -> None:
    made = create_model(store, "by-digest", Modelfile(from_=base.digest, system="d"))
    assert made.digest == base.digest and made.source == base.source
    assert made.parameters == {} and made.system == "d"  # a bare blob has nothing to inherit
    assert create_model(store, "dash", Modelfile(from_=base.digest.replace(":", "-"))).digest == base.digest


def test_from_the_path_of_a_store_blob_is_that_blob(store: ModelStore, base: Manifest) -> None:
    made = create_model(store, "by-path", Modelfile(from_=str(store.blob_path(base.digest))))
    assert made.digest == base.digest and blobs(store) == [store.blob_path(base.digest).name]


def test_from_a_catalog_name_not_pulled_pulls_it(
    store: ModelStore, tiny_gguf: MakeGguf, monkeypatch: pytest.MonkeyPatch
) -> None:
    pulled: list[str] = []

    def fake_pull(store_: ModelStore, name: str, report: Callable[[PullProgress], None]) -> Manifest:
        pulled.append(name)
        report(PullProgress("pulling manifest"))
        return store_.import_file(tiny_gguf(seed=3), name)

    monkeypatch.setattr(create_module, "pull_model", fake_pull)
    seen: list[str] = []
    made = create_model(store, "small", Modelfile(from_="smollm2:135m"), progress=lambda p: seen.append(p.status))
    assert pulled == ["smollm2:135m"]
    assert made.digest == store.get("smollm2:135m").digest
    assert seen[0] == "using base model" and "pulling manifest" in seen and seen[-1] == "success"


def test_from_an_unknown_model_is_a_clear_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound, match='FROM nothing-here: model "nothing-here:latest" is not in the store'):
        create_model(store, "x", Modelfile(from_="nothing-here"))


@pytest.mark.parametrize(
    ("from_", "error", "match"),
    [
        ("./missing.gguf", ModelfileError, "no such file"),
        (".", ModelfileError, "is a folder"),
        ("sha256:" + "0" * 64, ModelNotFound, "no such blob"),
        ("", ModelfileError, "FROM is empty"),
        ("Bad Name!", ModelfileError, "not a model name"),
    ],
)
def test_bad_from_values_are_refused(
    store: ModelStore, tmp_path: Path, from_: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_model(store, "x", Modelfile(from_=from_), base_dir=tmp_path)
    assert not store.exists("x")


def test_a_file_that_is_not_gguf_is_refused_and_nothing_is_stored(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(InvalidGguf):
        create_model(store, "x", Modelfile(from_="fake.gguf"), base_dir=tmp_path)
    assert not store.blobs_dir.exists() or blobs(store) == []


def test_paths_can_be_refused(store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path) -> None:
    tiny_gguf("w.gguf")
    with pytest.raises(ModelfileError, match="file paths are not accepted here"):
        create_model(store, "x", Modelfile(from_="w.gguf"), base_dir=tmp_path, allow_paths=False)


def test_an_invalid_target_name_is_refused(store: ModelStore, base: Manifest) -> None:
    with pytest.raises(InvalidModelName):
        create_model(store, "../escape", Modelfile(from_="base"))


# -- replacing -----------------------------------------------------------------------------


def test_creating_over_an_existing_name_replaces_it(store: ModelStore, base: Manifest) -> None:
    create_model(store, "pirate", Modelfile(from_="base", system="one"))
    create_model(store, "pirate", Modelfile(from_="base", system="two"))
    assert store.get("pirate").system == "two"
    assert [m.name for m in store.list()] == ["base:latest", "pirate:latest"]
    assert not list(store.manifest_path("pirate").parent.glob(".*"))  # no temp files left


def test_replacing_drops_the_old_blob_only_when_nothing_uses_it(
    store: ModelStore, base: Manifest, tiny_gguf: MakeGguf, tmp_path: Path
) -> None:
    tiny_gguf("other.gguf", seed=9)
    first = create_model(store, "m", Modelfile(from_="other.gguf"), base_dir=tmp_path)
    create_model(store, "m", Modelfile(from_="base"))
    assert not store.blob_path(first.digest).exists()  # nothing refers to it any more
    create_model(store, "m", Modelfile(from_="other.gguf"), base_dir=tmp_path)
    assert store.blob_path(base.digest).exists()  # still base's


def test_a_failed_create_leaves_the_existing_model_untouched(store: ModelStore, base: Manifest) -> None:
    create_model(store, "pirate", Modelfile(from_="base", system="kept"))
    before = store.manifest_path("pirate").read_bytes()
    with pytest.raises(ModelfileError):
        create_model(store, "pirate", Modelfile(from_="base", template="{% for %}"))
    with pytest.raises(ModelfileError):
        create_model(store, "pirate", Modelfile(from_="base", parameters={"bogus": 1}))
    with pytest.raises(ModelNotFound):
        create_model(store, "pirate", Modelfile(from_="missing-model"))
    assert store.manifest_path("pirate").read_bytes() == before


def test_a_bad_template_is_refused_before_a_gguf_is_imported(
    store: ModelStore, tiny_gguf: MakeGguf, tmp_path: Path
) -> None:
    tiny_gguf("w.gguf")
    with pytest.raises(ModelfileError):
        create_model(store, "x", Modelfile(from_="w.gguf", template="{{ .Tools }}"), base_dir=tmp_path)
    assert not store.blobs_dir.exists() or blobs(store) == []


# -- templates -----------------------------------------------------------------------------


def test_a_jinja_template_is_stored_as_is(store: ModelStore, base: Manifest) -> None:
    assert create_model(store, "t", Modelfile(from_="base", template=JINJA)).template == JINJA


def test_a_go_template_is_stored_translated_to_jinja(store: ModelStore, base: Manifest) -> None:
    from lokal.templates.chat_template import ChatTemplate

    made = create_model(store, "t", Modelfile(from_="base", template="{{ .System }}|{{ .Prompt }}|{{ .Response }}"))
    assert made.template is not None and "{%" in made.template
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = ChatTemplate(made.template).render(conversation)
    assert rendered == "S|U|"


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{% for m in messages %}", "does not compile"),
        ("{{ raise_exception('no') }}", "refused the messages"),
        ("static text", "does not render the conversation"),
        ("{{ range .Messages }}{{ .Images }}{{ end }}", "cannot translate this Go template.*Jinja"),
        ("{{ ''.__class__.__mro__ }}{{ messages }}", "unsafe"),
    ],
)
def test_templates_are_checked_on_a_sample_conversation(template: str, match: str) -> None:
    with pytest.raises(ModelfileError, match=match):
        prepare_template(template)


def test_create_validates_json_given_parameters_and_messages(store: ModelStore, base: Manifest) -> None:
    made = create_model(store, "p", Modelfile(from_="base", parameters={"NUM_CTX": "512", "stop": "x"}))
    assert made.parameters["num_ctx"] == 512 and made.parameters["stop"] == ["x"]
    with pytest.raises(ModelfileError, match="role"):
        create_model(store, "p", Modelfile(from_="base", messages=[{"role": "tool", "content": "x"}]))


# -- manifests -----------------------------------------------------------------------------


def test_manifests_written_before_messages_existed_still_load(store: ModelStore, base: Manifest) -> None:
    path = store.manifest_path("base")
    data = json.loads(path.read_text())
    del data["messages"]
    path.write_text(json.dumps(data))
    assert store.get("base").messages == []
