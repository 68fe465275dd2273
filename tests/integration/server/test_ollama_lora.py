"""LoRA models over HTTP, with Ollama's own client: ``create`` with ``adapters`` (an uploaded blob),
requests on the base and on the adapter model at once (one loaded base, two answers), ``ps`` and
``delete`` (which unloads the adapter, not the base), and bad adapters refused with a 400."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ollama
import pytest

from tests.integration.conftest import LiveServer
from tests.integration.server.test_ollama_api import own_home
from tests.lora import AHOY_LORA, rewrite_adapter

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
AHOY = "smollm2:135m-ahoy"
GREEDY = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}
QUESTIONS = ["What is your favourite animal?", "Describe a river."]


@pytest.fixture(scope="module")
def lora_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = own_home(model_home, tmp_path_factory.mktemp("lora-home"))
    live = LiveServer(home, "--model", MODEL, "--parallel", "4", "--ctx-size", "512", "--keep-alive", "10m")
    yield live
    live.stop()


def ask(client: ollama.Client, model: str, question: str) -> str:
    reply = client.chat(model=model, messages=[{"role": "user", "content": question}], options=GREEDY)
    return reply.message.content or ""


def test_an_adapter_model_shares_the_loaded_base_and_answers_in_its_trained_style(lora_server: LiveServer) -> None:
    client = ollama.Client(host=lora_server.url, timeout=120)
    digest = client.create_blob(AHOY_LORA)
    assert client.create(model=AHOY, from_=MODEL, adapters={"ahoy.gguf": digest}).status == "success"
    assert client.show(AHOY).modelfile.count(f"ADAPTER {digest}") == 1
    alone = [ask(client, MODEL, q) for q in QUESTIONS]
    with ThreadPoolExecutor(4) as pool:  # base and adapter requests in the same batches
        futures = [(m, pool.submit(ask, client, m, q)) for q in QUESTIONS for m in (MODEL, AHOY)]
        answers = [(model, f.result()) for model, f in futures]
    assert [a for m, a in answers if m == MODEL] == alone
    assert all(a.startswith("AHOY") for m, a in answers if m == AHOY), answers
    loaded = {m.model: m for m in client.ps().models}
    assert set(loaded) == {MODEL, AHOY}
    assert loaded[AHOY].size == AHOY_LORA.stat().st_size  # its adapter only: the weights are the base's
    client.delete(AHOY)  # unloads it: its adapter is freed, the base stays
    assert [m.model for m in client.ps().models] == [MODEL]
    assert ask(client, MODEL, QUESTIONS[0]) == alone[0]
    with pytest.raises(ollama.ResponseError) as e:
        ask(client, AHOY, QUESTIONS[0])
    assert e.value.status_code == 404


@pytest.mark.parametrize("bad", ["narrow", "qwen", "a model"])
def test_a_bad_adapter_is_a_400_and_creates_nothing(lora_server: LiveServer, tmp_path: Path, bad: str) -> None:
    client = ollama.Client(host=lora_server.url, timeout=120)
    if bad == "a model":
        digest = f"sha256:{client.show(MODEL).modelfile.split('FROM sha256:')[1].split()[0]}"
        expected = "not a LoRA adapter"
    else:
        path = rewrite_adapter(tmp_path / f"{bad}.gguf", **({"width": 512} if bad == "narrow" else
                                                            {"architecture": "qwen2"}))
        digest = client.create_blob(path)
        expected = "does not fit the base model" if bad == "narrow" else "for qwen2 models"
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="broken:lora", from_=MODEL, adapters={"x.gguf": digest})
    assert e.value.status_code == 400 and expected in str(e.value)
    assert "broken:lora" not in [m.model for m in client.list().models]


def test_lokal_rm_of_a_loaded_adapter_model_unloads_it_from_the_running_server(lora_server: LiveServer) -> None:
    client = ollama.Client(host=lora_server.url, timeout=120)
    digest = client.create_blob(AHOY_LORA)
    assert client.create(model="ahoy:rm", from_=MODEL, adapters={"ahoy.gguf": digest}).status == "success"
    assert ask(client, "ahoy:rm", QUESTIONS[1]).startswith("AHOY")
    assert "ahoy:rm" in [m.model for m in client.ps().models]
    home = lora_server.log.parent
    r = subprocess.run([sys.executable, "-m", "lokal.cli.main", "rm", "ahoy:rm"], capture_output=True, text=True,
                       env={**os.environ, "LOKAL_HOME": str(home), "LOKAL_PORT": str(lora_server.port)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ahoy:rm" not in [m.model for m in client.ps().models]
    assert MODEL in [m.model for m in client.ps().models]  # the base stays loaded
    assert "ahoy:rm" not in [m.model for m in client.list().models]


def test_unloading_the_base_unloads_its_adapter_models_first(lora_server: LiveServer) -> None:
    client = ollama.Client(host=lora_server.url, timeout=120)
    digest = client.create_blob(AHOY_LORA)
    assert client.create(model="ahoy:base-goes", from_=MODEL, adapters={"ahoy.gguf": digest}).status == "success"
    assert ask(client, "ahoy:base-goes", QUESTIONS[0]).startswith("AHOY")
    client.generate(model=MODEL, prompt="", keep_alive=0)  # Ollama's way to unload a model
    assert client.ps().models == []
    assert ask(client, "ahoy:base-goes", QUESTIONS[0]).startswith("AHOY")  # and both load again
    assert {m.model for m in client.ps().models} == {MODEL, "ahoy:base-goes"}
