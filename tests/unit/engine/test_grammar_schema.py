"""JSON schema checks before a schema becomes a grammar: bad schemas and unenforceable features are refused."""

from __future__ import annotations

import pytest

from lokal.engine.grammar import SchemaError, check_schema, json_object_grammar, schema_grammar

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "where": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "when": {"type": "string", "format": "date"},
        "kind": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "ref": {"$ref": "#/$defs/point"},
    },
    "required": ["name", "tags"],
    "$defs": {"point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}},
}


def test_nested_schema_with_supported_features_becomes_a_grammar() -> None:
    grammar = schema_grammar(NESTED)
    assert "root ::=" in grammar
    assert '"\\"name\\""' in grammar


def test_string_characters_exclude_raw_control_characters() -> None:
    grammar = schema_grammar({"type": "object", "properties": {"s": {"type": "string"}}})
    assert "\\x00-\\x1F" in grammar


def test_json_object_grammar_is_any_object() -> None:
    assert "root ::= object" in json_object_grammar()


@pytest.mark.parametrize(
    ("schema", "feature"),
    [
        ({"type": "string", "minimum": 0}, "minimum/maximum without type integer or number"),
        ({"type": "number", "multipleOf": 2}, "multipleOf"),
        ({"not": {"type": "string"}}, "not"),
        ({"if": {"type": "string"}, "then": {"maxLength": 2}}, "if"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "hostname"}, "format 'hostname'"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "items": {"enum": list(range(17))}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 2}, "minItems/maxItems with prefixItems"),
        ({"$ref": "https://example.com/s.json"}, "$ref"),
        ({"allOf": [{"type": "object"}]}, "allOf"),
        ({"type": ["string", "null"], "maxLength": 3}, "type list with other keywords"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
         "required property not in properties"),
    ],
)
def test_unsupported_feature_is_refused_by_name(schema: dict, feature: str) -> None:
    with pytest.raises(SchemaError) as info:
        schema_grammar(schema)
    assert info.value.feature == feature
    assert feature in str(info.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "strng"},
        {"type": "object", "properties": []},
        {"type": "array", "maxItems": -1, "items": {}},
        {"enum": "not-a-list"},
    ],
)
def test_invalid_schema_is_refused(schema: dict) -> None:
    with pytest.raises(SchemaError) as info:
        check_schema(schema)
    assert info.value.feature is None
    assert "invalid JSON schema" in str(info.value)


def test_a_schema_must_be_an_object() -> None:
    with pytest.raises(SchemaError):
        schema_grammar(["type", "object"])
