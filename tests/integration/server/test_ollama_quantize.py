"""Ollama's quantize in ``/api/create`` (``{"model": new, "from": model, "quantize": "q4_K_M"}``),
with Ollama's own client: an F16 model is quantized with progress lines and answers; an already
quantized one, an unknown type or model is refused before any line streams, with nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from lokal.store.model_store import ModelStore
from lokal.workshop.quantize import quantize_model
from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow

F16 = "smollm2:135m-f16"


@pytest.fixture(scope="module")
def own(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server over a store of its own holding smollm2:135m and its F16 (made from the Q4_1 file:
    what matters here is that the source is not quantized)."""
    home = tmp_path_factory.mktemp("quantize-api")
    store = ModelStore(home)
    src = ModelStore(model_home).get("smollm2:135m")
    store.import_file(ModelStore(model_home).blob_path(src.digest), "smollm2:135m")
    quantize_model(store, "smollm2:135m", "F16", allow_requantize=True, threads=1)
    server = LiveServer(home, "--threads", "1", "--parallel", "1", "--ctx-size", "512")
    yield server
    server.stop()


def _names(client: ollama.Client) -> list[str]:
    return [m.model for m in client.list().models]


def test_an_f16_model_is_quantized_with_progress_and_answers(own: LiveServer) -> None:
    client = ollama.Client(host=own.url, timeout=300)
    lines = list(client.create(model="small:q8", from_=F16, quantize="q8_0", system="Answer in one word.",
                               stream=True))
    statuses = [p.status for p in lines]
    assert statuses[-1] == "success"
    counted = [p for p in lines if p.status == "quantizing F16 model to Q8_0" and p.total]
    assert counted and counted[-1].completed == counted[-1].total == 272
    shown = client.show("small:q8")
    assert shown.details.quantization_level == "Q8_0"
    assert "Answer in one word." in (shown.modelfile or "")  # the request's other fields apply to the new model
    answer = client.generate(model="small:q8", prompt="What is the capital of France?",
                             options={"temperature": 0, "num_predict": 8})
    assert "paris" in answer.response.lower()


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"model": "x:q8", "from": "smollm2:135m", "quantize": "q8_0"}, 400, "already quantized (Q4_1)"),
    ({"model": "x:q8", "from": F16, "quantize": "q7_k"}, 400, 'unknown quantization type "q7_k"; choose one of'),
    ({"model": "x:q8", "from": "nope:1b", "quantize": "q8_0"}, 404, 'model "nope:1b" not found'),
    ({"model": "x:q8", "quantize": "q8_0"}, 400, "quantize needs 'from'"),
    ({"model": "x:q8", "from": "../etc", "quantize": "q8_0"}, 400, "invalid model name"),
])
def test_a_refused_quantize_is_a_4xx_before_any_line_and_stores_nothing(
    own: LiveServer, body: dict, status: int, error: str
) -> None:
    client = ollama.Client(host=own.url, timeout=60)
    before = _names(client)
    r = httpx.post(own.url + "/api/create", json={**body, "stream": True}, timeout=60)
    assert r.status_code == status
    assert error in r.json()["error"]
    assert _names(client) == before
