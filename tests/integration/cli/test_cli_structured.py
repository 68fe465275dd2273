"""`lokal run --format json` and `--schema FILE`: the answer printed is JSON that validates."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.integration.cli.test_cli import MODEL, lokal

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    # maxLength: a 135M model may otherwise write on inside the string until the token limit
    "properties": {"city": {"type": "string", "maxLength": 24},
                   "country": {"type": "string", "enum": ["France", "Spain"]}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def test_run_format_json_prints_one_json_object(model_home: Path) -> None:
    r = lokal(model_home, "run", MODEL, "Describe Paris as JSON.", "--format", "json", "--seed", "3",
              "--max-tokens", "120")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)


def test_run_schema_answer_validates(model_home: Path, tmp_path: Path) -> None:
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(SCHEMA))
    r = lokal(model_home, "run", MODEL, "Which city is the capital of France?", "--schema", str(schema),
              "--temperature", "0", "--max-tokens", "120")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), SCHEMA)


def test_run_warns_on_stderr_when_the_token_limit_cuts_the_json(model_home: Path) -> None:
    r = lokal(model_home, "run", MODEL, "Describe Paris as JSON.", "--format", "json", "--max-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "token limit before the JSON was complete" in r.stderr
    assert "warning" not in r.stdout


def test_run_refuses_a_schema_it_cannot_enforce_in_one_line(model_home: Path, tmp_path: Path) -> None:
    schema = tmp_path / "bounded.json"
    schema.write_text(json.dumps({"type": "integer", "multipleOf": 3}))
    r = lokal(model_home, "run", MODEL, "A number.", "--schema", str(schema))
    assert r.returncode != 0
    assert "multipleOf" in r.stderr and "Traceback" not in r.stderr
