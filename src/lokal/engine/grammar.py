"""JSON schema → GBNF for llama.cpp's grammar sampler, refusing what the grammar cannot enforce.

The conversion itself is llama-cpp-python's port of llama.cpp's json-schema-to-grammar
(``llama_cpp.llama_grammar``). That converter silently ignores keywords it does not know
(``minimum``, ``not``, ``uniqueItems``…); here every subschema is checked first, so a request
gets a ``SchemaError`` naming the feature instead of an answer that does not validate."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from llama_cpp.llama_grammar import SchemaConverter

MAX_SCHEMA_CHARS = 64 * 1024
MAX_SCHEMA_DEPTH = 32

# Keywords that only describe: they constrain nothing, so ignoring them is right.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "strict",
})
# Keywords the converter turns into grammar rules.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "pattern", "format", "minLength", "maxLength",
})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

# The port's string character rule lets raw control characters through, which JSON forbids
# (llama.cpp's own converter excludes them); tighten it.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


class SchemaError(ValueError):
    """A JSON schema that is invalid, or that uses a feature the grammar cannot enforce."""

    def __init__(self, message: str, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


def schema_grammar(schema: Any) -> str:
    """The GBNF grammar (root rule ``root``) whose every sentence is JSON valid against ``schema``."""
    if not isinstance(schema, dict):
        raise SchemaError("a JSON schema must be an object")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaError(f"the JSON schema is {len(text)} characters, limit {MAX_SCHEMA_CHARS}")
    check_schema(schema)
    try:
        # llama-cpp-python's converter is untyped; its grammar is a str.
        converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        resolved = converter.resolve_refs(json.loads(text), "input")
        converter.visit(resolved, "")
        grammar: str = converter.format_grammar()
    except RecursionError as exc:
        raise SchemaError("the JSON schema nests too deeply") from exc
    except Exception as exc:  # the converter asserts and raises on what it cannot express
        raise SchemaError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``json_object``, Ollama's ``format: "json"``)."""
    return schema_grammar(JSON_OBJECT_SCHEMA)


def check_schema(schema: dict[str, Any]) -> None:
    """SchemaError if the schema is not valid JSON Schema or uses a feature lokal cannot enforce."""
    try:
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise SchemaError(f"invalid JSON schema at {where}: {exc.message}") from exc
    _check_node(schema, "#", 0)


def _unsupported(feature: str, where: str, why: str = "") -> SchemaError:
    return SchemaError(
        f"JSON schema feature {feature!r} (at {where}) is not supported: {why or 'the grammar cannot enforce it'}",
        feature=feature,
    )


def _check_node(node: Any, where: str, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, bool):
        raise _unsupported("boolean schema", where, "write {} instead of true")
    if not isinstance(node, dict):
        raise SchemaError(f"invalid JSON schema at {where}: a schema must be an object")
    for key in node:
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            raise _unsupported(key, where)
    keys = set(node) & _ENFORCED
    t = node.get("type")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise _unsupported("$ref", where, "only local references (#/$defs/…) are resolved")
        if keys - {"$ref"}:
            raise _unsupported("$ref with sibling keywords", where, f"{sorted(keys - {'$ref'})} would be ignored")
    for union in ("anyOf", "oneOf"):
        if union in node:
            if keys - {union}:
                raise _unsupported(f"{union} with sibling keywords", where,
                                   f"{sorted(keys - {union})} would be ignored; move them into each alternative")
            for i, sub in enumerate(node[union]):
                _check_node(sub, f"{where}/{union}/{i}", depth + 1)
            return
    if isinstance(t, list):
        if not set(t) <= _TYPES:
            raise SchemaError(f"invalid JSON schema at {where}: unknown type in {t}")
        if keys - {"type"}:
            raise _unsupported("type list with other keywords", where,
                               "use anyOf with one schema per type instead")
        return
    if "const" in node or "enum" in node:
        return  # the grammar emits exactly one of the listed values
    if "format" in node:
        if node["format"] not in _FORMATS:
            raise _unsupported(f"format {node['format']!r}", where,
                               f"supported formats: {', '.join(sorted(_FORMATS))}")
        if keys - {"type", "format"}:
            raise _unsupported("format with other string keywords", where)
    if "pattern" in node and keys & {"minLength", "maxLength", "format"}:
        raise _unsupported("pattern with minLength/maxLength", where, "put the length into the pattern")
    if keys & {"minLength", "maxLength"} and t != "string":
        raise _unsupported("minLength/maxLength without type string", where)
    if keys & {"properties", "required", "additionalProperties"} and t not in (None, "object"):
        raise _unsupported("object keywords on a non-object type", where)
    props = node.get("properties", {})
    for name in node.get("required", []):
        if name not in props:
            raise _unsupported("required property not in properties", f"{where}/required",
                               f"{name!r} has no schema under properties")
    for name, sub in props.items():
        _check_node(sub, f"{where}/properties/{name}", depth + 1)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _check_node(extra, f"{where}/additionalProperties", depth + 1)
    if keys & {"items", "prefixItems", "minItems", "maxItems"}:
        if t not in (None, "array"):
            raise _unsupported("array keywords on a non-array type", where)
        items, prefix = node.get("items"), node.get("prefixItems")
        if prefix is not None and items is not None:
            raise _unsupported("prefixItems with items", where)
        if items is None and prefix is None:
            raise _unsupported("minItems/maxItems without items", where)
        if isinstance(items, bool):
            raise _unsupported("boolean items", where)
        if isinstance(prefix or items, list) and keys & {"minItems", "maxItems"}:
            raise _unsupported("minItems/maxItems with prefixItems", where)
        if isinstance(items, dict):
            _check_node(items, f"{where}/items", depth + 1)
        for i, sub in enumerate(prefix if isinstance(prefix, list) else items if isinstance(items, list) else []):
            _check_node(sub, f"{where}/prefixItems/{i}", depth + 1)
    for defs in ("$defs", "definitions"):
        for name, sub in (node.get(defs) or {}).items():
            _check_node(sub, f"{where}/{defs}/{name}", depth + 1)
