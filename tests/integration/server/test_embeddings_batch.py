"""An embedding does not depend on what else the request holds: six copies of one text and other
texts in one /v1/embeddings call each equal the text embedded alone (they differed by up to 2e-3
when inputs shared one llama_decode)."""

from __future__ import annotations

import numpy as np
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
LONG = ("Stock markets fell sharply after the interest rate decision, and investors fled to bonds while the "
        "dollar rallied against most currencies.")
OTHERS = ["The cat sat on the mat.", "hi", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "a " * 40]


def test_six_copies_and_other_texts_each_equal_the_text_alone(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    texts = [LONG] * 6 + OTHERS
    batch = [d.embedding for d in client.embeddings.create(model=MODEL, input=texts).data]
    for text, vector in zip(texts, batch, strict=True):
        alone = client.embeddings.create(model=MODEL, input=text).data[0].embedding
        assert np.abs(np.asarray(vector) - np.asarray(alone)).max() <= 1e-6, text
