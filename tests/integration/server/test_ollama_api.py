"""The official ollama client (and raw HTTP) against a live lokal serve with the real smollm2:135m."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import ollama
import pytest

from lokal.store.model_store import ModelStore
from tests.conftest import write_tiny_gguf
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def own_home(model_home: Path, home: Path) -> Path:
    """A store of its own holding smollm2 (blob hard-linked, not downloaded again)."""
    src, dst = ModelStore(model_home), ModelStore(home)
    manifest = src.get(MODEL)
    dst.blobs_dir.mkdir(parents=True)
    blob = src.blob_path(manifest.digest)
    try:
        os.link(blob, dst.blob_path(manifest.digest))
    except OSError:
        shutil.copyfile(blob, dst.blob_path(manifest.digest))
    dst.write_manifest(manifest)
    return home


@pytest.fixture(scope="module")
def own(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose models may be copied, deleted, created and unloaded: one slot, no queue."""
    home = own_home(model_home, tmp_path_factory.mktemp("ollama-home"))
    live = LiveServer(home, "--model", MODEL, "--parallel", "1", "--ctx-size", "512", "--max-queue", "0",
                      "--keep-alive", "10m")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def own_client(own: LiveServer) -> ollama.Client:
    return ollama.Client(host=own.url, timeout=120)


def ndjson(url: str, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    with httpx.stream("POST", url + path, json=body, timeout=120) as r:
        return r, [json.loads(line) for line in r.iter_lines() if line]


# ---- server basics --------------------------------------------------------------------------

def test_root_answers_like_ollama_and_version_is_lokals(server: LiveServer, client: ollama.Client) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200
    from lokal import __version__

    assert httpx.get(server.url + "/api/version").json() == {"version": __version__}


# ---- generate -------------------------------------------------------------------------------

def test_generate_returns_text_counts_nanosecond_durations_and_context(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="What is the capital of France?", options={"temperature": 0,
                        "num_predict": 12})
    assert r.done and r.done_reason in ("stop", "length") and r.model == MODEL
    assert "Paris" in r.response
    assert r.prompt_eval_count > 5 and 0 < r.eval_count <= 12
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert r.eval_duration > 1_000_000  # nanoseconds: generating takes more than 1 ms
    assert r.load_duration is not None
    assert datetime.fromisoformat(r.created_at).tzinfo is not None
    assert len(r.context) >= r.prompt_eval_count + 1

    # The context carries the conversation: the next prompt is read after it.
    again = client.generate(model=MODEL, prompt="And of Italy?", context=r.context, options=GREEDY)
    assert again.prompt_eval_count > len(r.context)
    assert again.context[: len(r.context)] == list(r.context)


def test_generate_streams_ndjson_chunks_then_a_final_summary(server: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "Name three colors.", "options": GREEDY}
    r, lines = ndjson(server.url, "/api/generate", body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    *chunks, last = lines
    assert chunks and all(c["done"] is False and c["model"] == MODEL and "created_at" in c for c in chunks)
    assert last["done"] is True and last["response"] == "" and last["done_reason"] == "length"
    assert last["eval_count"] == 8
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration",
                "context"):
        assert key in last
    whole = httpx.post(server.url + "/api/generate", json={**body, "stream": False}, timeout=120).json()
    assert whole["response"] == "".join(c["response"] for c in chunks)


def test_raw_prompt_and_template_override(client: ollama.Client) -> None:
    chatml = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    raw = client.generate(model=MODEL, prompt=chatml, raw=True, options={"temperature": 0, "num_predict": 12})
    assert "Paris" in raw.response and raw.context is None
    templated = client.generate(
        model=MODEL, prompt="What is the capital of France?", options={"temperature": 0, "num_predict": 12},
        template="{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                 "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>",
    )
    assert templated.response == raw.response
    ranged = client.generate(
        model=MODEL, prompt="What is the capital of France?", options={"temperature": 0, "num_predict": 12},
        template="{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                 "<|im_start|>assistant\n",
    )
    assert ranged.response == raw.response
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", template="{{ .Prompt | printf }}")
    assert e.value.status_code == 400 and "template" in e.value.error.lower()


def test_a_request_without_prompt_only_loads_the_model(client: ollama.Client) -> None:
    r = client.generate(model=MODEL)
    assert r.done and r.done_reason == "load" and r.response == ""
    c = client.chat(model=MODEL, messages=[])
    assert c.done and c.done_reason == "load" and c.message.role == "assistant"


# ---- chat -----------------------------------------------------------------------------------

def test_chat_streamed_and_not_give_the_same_answer(client: ollama.Client) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    whole = client.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_predict": 16})
    assert whole.message.role == "assistant" and "Paris" in whole.message.content
    assert whole.done and whole.prompt_eval_count > 10 and 0 < whole.eval_count <= 16
    parts = list(client.chat(model=MODEL, messages=messages, stream=True, options={"temperature": 0,
                                                                                    "num_predict": 16}))
    assert parts[-1].done and parts[-1].message.content == "" and parts[-1].eval_count == whole.eval_count
    assert all(not p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_chat_accepts_assistant_and_tool_turns(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, options=GREEDY, messages=[
        {"role": "user", "content": "Remember the number 7."},
        {"role": "assistant", "content": "I will remember 7."},
        {"role": "tool", "content": "42", "tool_name": "lookup"},
        {"role": "user", "content": "Which number?"},
    ])
    assert r.done and r.eval_count > 0


# ---- options --------------------------------------------------------------------------------

def test_num_predict_limits_eval_count(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Write a long story about a dragon.", options={"num_predict": 3})
    assert r.eval_count == 3 and r.done_reason == "length"


def test_seed_and_temperature_make_sampling_reproducible(client: ollama.Client) -> None:
    options = {"temperature": 1.2, "seed": 1234, "num_predict": 12, "top_k": 100, "top_p": 1.0, "min_p": 0.0}
    prompt = "Invent a name for a cat."
    first = client.generate(model=MODEL, prompt=prompt, options=options).response
    second = client.generate(model=MODEL, prompt=prompt, options=options).response
    assert first == second


def test_stop_strings_end_the_answer_before_them(client: ollama.Client) -> None:
    prompt = "Count from 1 to 20, separated by commas."
    full = client.generate(model=MODEL, prompt=prompt, options={"temperature": 0, "num_predict": 24}).response
    assert "5" in full, full
    stopped = client.generate(model=MODEL, prompt=prompt, options={"temperature": 0, "num_predict": 24,
                                                                   "stop": ["5"]})
    assert stopped.response == full[: full.index("5")] and stopped.done_reason == "stop"


def test_unknown_options_are_ignored_and_bad_values_refused(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_gpu": 99, "mirostat": 2, "num_thread": 1,
                                                            "num_predict": 2})
    assert r.eval_count == 2
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="Hi", options={"temperature": -1})
    assert e.value.status_code == 400 and "temperature" in e.value.error


def test_num_ctx_bounds_the_prompt_and_a_larger_one_is_clamped(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="Tell me about the sea. " * 20, options={"num_ctx": 32})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error
    short = client.generate(model=MODEL, prompt="Hi", options={"num_ctx": 40, "num_predict": -1, "temperature": 0})
    assert short.prompt_eval_count + short.eval_count <= 40
    big = client.generate(model=MODEL, prompt="Hi", options={"num_ctx": 131072, "num_predict": 2})
    assert big.eval_count == 2


# ---- models ---------------------------------------------------------------------------------

def test_list_shows_the_model_with_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    m = models[MODEL]
    assert m.size > 50_000_000 and len(m.digest) == 64
    assert m.details.format == "gguf" and m.details.family == "llama"
    assert m.details.quantization_level == "Q4_1" and m.details.parameter_size.endswith("M")


def test_show_reports_details_template_parameters_and_model_info(client: ollama.Client) -> None:
    s = client.show(MODEL)
    assert s.details.family == "llama" and s.details.quantization_level == "Q4_1"
    assert "<|im_start|>" in s.template
    assert s.capabilities == ["completion"]
    assert s.modelinfo["general.architecture"] == "llama"
    assert s.modelinfo["llama.context_length"] == 8192
    assert s.modelinfo["tokenizer.ggml.tokens"] is None  # long arrays are left out, as Ollama does
    assert "FROM" in s.modelfile
    assert s.license


def test_ps_lists_the_loaded_model_with_a_future_expiry(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    m = running[MODEL]
    assert m.expires_at > datetime.now(UTC)
    assert m.context_length == 1024 and m.size_vram == 0
    assert m.size > 98_362_432  # the weights plus the KV cache
    assert len(m.digest) == 64


def test_pull_of_a_present_model_streams_status_lines(server: LiveServer, client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull(MODEL).status == "success"
    r, lines = ndjson(server.url, "/api/pull", {"model": "no-such-model:1b"})
    assert r.status_code == 200 and "error" in lines[-1] and "no-such-model" in lines[-1]["error"]
    with pytest.raises(ollama.ResponseError):
        list(client.pull("no-such-model:1b", stream=True))
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("no-such-model:1b")
    assert e.value.status_code == 500


# ---- errors ---------------------------------------------------------------------------------

def test_unknown_model_is_a_404_in_ollamas_shape(server: LiveServer, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="nope:1b", prompt="Hi")
    assert e.value.status_code == 404 and e.value.error == 'model "nope:1b" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "Hi"}], stream=True).__next__()
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope:1b")
    assert e.value.status_code == 404
    r = httpx.post(server.url + "/api/chat", json={"model": "nope:1b", "messages": []})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    # The OpenAI routes keep OpenAI's shape.
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "nope:1b", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_bad_bodies_are_400s_with_an_error_string(server: LiveServer) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.post(server.url + "/api/generate", content=b"{not json", headers=headers)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(server.url + "/api/generate", json={"prompt": "Hi"})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = httpx.post(server.url + "/api/chat", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "x", "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


@pytest.mark.parametrize(("path", "extra", "field"), [
    ("/api/generate", {"suffix": "return x"}, "suffix"),
    ("/api/generate", {"images": ["aGk="]}, "images"),
    ("/api/generate", {"think": True}, "think"),
])
def test_unsupported_fields_are_refused_by_name(server: LiveServer, path: str, extra: dict, field: str) -> None:
    body = {"model": MODEL, "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}], **extra}
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 400 and field in r.json()["error"]


# ---- state changes, on a server of their own --------------------------------------------------

def test_copy_and_delete(own_client: ollama.Client) -> None:
    assert own_client.copy(MODEL, "mine:copy").status == "success"
    assert "mine:copy" in [m.model for m in own_client.list().models]
    assert own_client.generate(model="mine:copy", prompt="Hi", options={"num_predict": 2}).eval_count == 2
    assert own_client.delete("mine:copy").status == "success"
    assert "mine:copy" not in [m.model for m in own_client.list().models]
    assert "mine:copy" not in [m.model for m in own_client.ps().models]
    assert MODEL in [m.model for m in own_client.list().models]  # the blob is still used by smollm2
    with pytest.raises(ollama.ResponseError) as e:
        own_client.delete("mine:copy")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        own_client.copy("nope:1b", "other:x")
    assert e.value.status_code == 404


def test_create_from_a_model_with_system_and_parameters(own_client: ollama.Client) -> None:
    statuses = [p.status for p in own_client.create(
        model="pirate:latest", from_=MODEL, system="You are a pirate. Always answer with the word Arr.",
        parameters={"temperature": 0, "num_predict": 6, "stop": ["\n\n"]}, stream=True,
    )]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    s = own_client.show("pirate")
    assert "You are a pirate" in s.modelfile
    shown = httpx.post(own_client._client.base_url.join("/api/show"), json={"model": "pirate"}).json()
    assert shown["system"] == "You are a pirate. Always answer with the word Arr."
    assert "num_predict" in s.parameters and "temperature" in s.parameters
    question = {"role": "user", "content": "Hello, who are you?"}
    r = own_client.chat(model="pirate", messages=[question])
    assert r.eval_count <= 6  # the model's own num_predict
    # The same as asking the base model with that system prompt and those options.
    system = {"role": "system", "content": "You are a pirate. Always answer with the word Arr."}
    base = own_client.chat(model=MODEL, messages=[system, question], options={"temperature": 0, "num_predict": 6})
    assert r.message.content == base.message.content and r.prompt_eval_count == base.prompt_eval_count
    # an unknown FROM is a missing model, 404 as for show/copy/delete (Ollama tries to pull it from
    # its registry and answers that failure with a 500; lokal pulls only catalog and hf.co names)
    with pytest.raises(ollama.ResponseError) as e:
        own_client.create(model="broken", from_="nope:1b")
    assert e.value.status_code == 404
    assert e.value.error.startswith('FROM nope:1b: model "nope:1b" is not in the store nor in the catalog')
    assert "broken" not in [m.model.split(":")[0] for m in own_client.list().models]
    # clients before 0.5 sent the Modelfile's text
    url = str(own_client._client.base_url)
    old = httpx.post(url + "/api/create", timeout=60, json={
        "name": "old:style", "modelfile": f'FROM {MODEL}\nSYSTEM "Be brief."\nPARAMETER top_k 7', "stream": False})
    assert old.status_code == 200 and old.json() == {"status": "success"}
    shown = httpx.post(url + "/api/show", json={"name": "old:style"}).json()
    assert shown["system"] == "Be brief." and "top_k" in shown["parameters"]
    r, lines = ndjson(url, "/api/create", {"model": "bad:one", "from": MODEL, "parameters": {"top_k": "many"}})
    assert r.status_code == 400 and "top_k" in lines[-1]["error"]


def test_blob_upload_verifies_digest_and_refuses_non_gguf(own: LiveServer, tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(f"{own.url}/api/blobs/{digest}").status_code == 404
    wrong = "sha256:" + "0" * 64
    r = httpx.post(f"{own.url}/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    text = b"not a model at all"
    r = httpx.post(f"{own.url}/api/blobs/sha256:{hashlib.sha256(text).hexdigest()}", content=text)
    assert r.status_code == 400 and "GGUF" in r.json()["error"]
    assert httpx.post(f"{own.url}/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.head(f"{own.url}/api/blobs/{digest}").status_code == 200
    # create from the uploaded file, as `ollama create -f Modelfile` with "FROM ./tiny.gguf" does
    client = ollama.Client(host=own.url, timeout=60)
    assert client.create(model="tiny:upload", files={"tiny.gguf": digest}).status == "success"
    assert client.show("tiny:upload").details.quantization_level == "Q8_0"
    client.delete("tiny:upload")
    # a path on the server's disk is never read over HTTP: files must be uploaded as blobs
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="tiny:path", from_=str(gguf))
    assert e.value.status_code == 400
    assert "tiny:path" not in [m.model for m in client.list().models]


def test_keep_alive_zero_unloads_and_a_short_one_expires(own_client: ollama.Client) -> None:
    def loaded() -> list[str]:
        return [m.model for m in own_client.ps().models]

    own_client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1}, keep_alive=0)
    assert MODEL not in loaded()
    own_client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1}, keep_alive="1s")
    assert MODEL in loaded()
    deadline = time.monotonic() + 10
    while MODEL in loaded() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert MODEL not in loaded()
    # a request with nothing to generate loads; with keep_alive 0 it unloads (`ollama stop`)
    assert own_client.generate(model=MODEL, keep_alive=-1).done_reason == "load"
    forever = {m.model: m for m in own_client.ps().models}[MODEL]
    assert forever.expires_at.year > 2100
    stopped = own_client.generate(model=MODEL, keep_alive=0)
    assert stopped.done_reason == "unload" and MODEL not in loaded()


def running(live: LiveServer) -> int:
    return sum(m["running"] + m["waiting"] for m in httpx.get(live.url + "/health", timeout=10).json()["loaded"])


def wait_idle(live: LiveServer, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while running(live) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(live) == 0


def test_a_client_that_disconnects_frees_the_slot(own: LiveServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "options": {"num_predict": 480}}
    with httpx.stream("POST", own.url + "/api/chat", json=body, timeout=60) as r:
        assert json.loads(next(r.iter_lines()))["done"] is False
    assert wait_idle(own, 3)  # aborted within a step, not after 480 tokens
    # the only slot (no queue) takes the next request at once
    r = httpx.post(own.url + "/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                    "options": {"num_predict": 2}}, timeout=60)
    assert r.status_code == 200 and r.json()["eval_count"] == 2
