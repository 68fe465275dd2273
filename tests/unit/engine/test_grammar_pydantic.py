"""What pydantic's ``model_json_schema()`` emits becomes a grammar whose every sentence validates:
llama.cpp's grammar sampler, driven by random logits (any allowed token may come next), writes
answers that jsonschema and the pydantic model itself both accept. Numeric bounds are checked
exhaustively against the decimal comparison they stand for."""

from __future__ import annotations

import ctypes
import json
import random
import re
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal
from uuid import UUID

import jsonschema
import numpy as np
import pytest
from pydantic import BaseModel, Field, HttpUrl

from lokal.engine.grammar import SchemaError, schema_grammar
from lokal.engine.llama_model import LlamaModel
from lokal.engine.number_grammar import RangeError, bound, number_rule
from lokal.engine.sampling import SamplingParams


class Color(StrEnum):
    red = "red"
    green = "green"


class Point(BaseModel):
    x: float = Field(ge=-1.5, lt=2)
    y: int = Field(gt=-3, le=120)


class Item(BaseModel):
    name: str = Field(max_length=12, description="what it is")
    count: int = Field(ge=0)


class Everything(BaseModel):
    """Nested models ($defs/$ref), Optional, Literal, Enum, bounded lists, a tuple, a set of
    literals, dates, a uuid, an email, a url, a default, and an untyped field."""

    name: str = Field(min_length=1, max_length=8, title="Name")
    count: int = Field(ge=0)
    ratio: float = Field(gt=0, le=1)
    color: Color
    kind: Literal["a", "b"] = "a"
    maybe: int | None = None
    points: list[Point] = Field(min_length=1, max_length=2)
    when: date
    at: datetime | None = None
    id: UUID | None = None
    tags: set[Literal["x", "y", "z"]] = Field(max_length=2)
    pair: tuple[int, bool]
    contact: str = Field(json_schema_extra={"format": "email"})
    home: HttpUrl
    anything: object = None


def random_sentences(llama: LlamaModel, grammar: str, n: int, max_tokens: int = 300) -> list[str]:
    """Texts llama.cpp's grammar sampler writes with random logits; unfinished ones are dropped."""
    rng = np.random.default_rng(0)
    out = []
    for seed in range(n):
        sampler = llama.new_sampler(SamplingParams(grammar=grammar, temperature=1.0, seed=seed), [])
        text = b""
        try:
            for _ in range(max_tokens):
                logits = (rng.standard_normal(llama.n_vocab) * 3).astype(np.float32)
                token = sampler.sample_constrained(logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
                if llama.is_eog(token):
                    out.append(text.decode())
                    break
                text += llama.piece(token)
        finally:
            sampler.free()
    return out


@pytest.mark.parametrize("model", [Item, Point, Everything])
def test_pydantic_models_answers_validate_with_jsonschema_and_pydantic(llama: LlamaModel,
                                                                      model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    texts = random_sentences(llama, schema_grammar(schema), n=6)
    assert len(texts) >= 4
    for text in texts:
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
        model.model_validate_json(text)


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"enum": ["a", "b", "c", "d"]}, "uniqueItems": True, "minItems": 2, "maxItems": 3},
    {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
    {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": -0.25, "exclusiveMaximum": 0.5},
                                      "k": {"type": "integer", "minimum": -40, "maximum": -7}},
     "required": ["n", "k"]},
])
def test_keywords_beyond_the_port_are_enforced(llama: LlamaModel, schema: dict) -> None:
    texts = random_sentences(llama, schema_grammar(schema), n=8)
    assert len(texts) >= 5
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


def test_a_dict_of_models_compiles(llama: LlamaModel) -> None:
    class Inventory(BaseModel):
        stock: dict[str, Item]

    llama.check_grammar(schema_grammar(Inventory.model_json_schema()))


def test_an_unanchored_pattern_may_have_text_around_it(llama: LlamaModel) -> None:
    grammar = schema_grammar({"type": "string", "pattern": "[0-9]{3}"})  # JSON Schema's patterns search
    llama.check_grammar(grammar)
    assert 'root ::= "\\"" dot* (' in grammar and 'dot ::= [^"\\\\' in grammar  # no quote, no backslash


def test_grammar_for_an_empty_numeric_range_is_refused() -> None:
    with pytest.raises(SchemaError, match="no integer lies between"):
        schema_grammar({"type": "integer", "minimum": 3, "exclusiveMaximum": 3})


def _regex(expr: str) -> re.Pattern[str]:
    """The GBNF expressions number_rule writes (literals, classes, groups, |, counts) as a regex."""
    out, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c in '"[':
            j = expr.index('"' if c == '"' else "]", i + 1)
            out.append(re.escape(expr[i + 1:j]) if c == '"' else expr[i:j + 1])
            i = j + 1
        else:
            out.append("" if c == " " else c)
            i += 1
    return re.compile("".join(out))


@pytest.mark.parametrize(("low", "high", "integer"), [
    (0, None, True), (None, 0, True), (-5, 17, True), (-123, -7, True), (99, 1000, True), (5, 123456, True),
    (0, None, False), (0.5, None, False), (None, 2.25, False), (-1.5, 2.75, False), (-3, -0.25, False),
    (1.25, 1.5, False), (0.1, 0.2, False), (-1000, None, False), (0.001, 0.0015, False), (None, None, False),
])
@pytest.mark.parametrize("inclusive", [(True, True), (False, False), (True, False)])
def test_number_rule_matches_exactly_the_numbers_in_range(low: float | None, high: float | None, integer: bool,
                                                         inclusive: tuple[bool, bool]) -> None:
    lo = None if low is None else bound(low, inclusive[0], "minimum")
    hi = None if high is None else bound(high, inclusive[1], "maximum")
    rx = _regex(number_rule(lo, hi, integer))
    rng = random.Random(0)
    values: set[Decimal] = set()
    for _ in range(2000):
        values.add(Decimal(rng.randint(-2000, 2000)))
        values.add(Decimal(repr(round(rng.uniform(-300, 300), rng.randint(0, 5)))))
    for edge in (low, high):
        if edge is not None:
            for step in ("-1", "-0.5", "-0.001", "0", "0.001", "0.5", "1"):
                values.add(Decimal(repr(edge)) + Decimal(step))
    for d in values:
        text = format(d.normalize(), "f") if d != 0 else "0"
        inside = (lo is None or d > lo.value or (d == lo.value and lo.inclusive)) and \
                 (hi is None or d < hi.value or (d == hi.value and hi.inclusive)) and (not integer or d == int(d))
        assert (rx.fullmatch(text) is not None) == inside, text


def test_bounds_with_too_many_digits_are_refused() -> None:
    with pytest.raises(RangeError):
        bound(10**50, True, "minimum")
    with pytest.raises(SchemaError):
        schema_grammar({"type": "number", "minimum": 0.1234567890123456})


def test_enum_values_are_written_as_listed_and_must_lie_within_the_bounds() -> None:
    assert '"1" | "2"' in schema_grammar({"type": "integer", "enum": [1, 2], "minimum": 0})
    with pytest.raises(SchemaError, match="enum values outside minimum/maximum"):
        schema_grammar({"type": "integer", "enum": [1, 20], "maximum": 5})
