"""JSON schema → GBNF for llama.cpp's grammar sampler, refusing what the grammar cannot enforce.

The conversion is llama-cpp-python's port of llama.cpp's json-schema-to-grammar
(``llama_cpp.llama_grammar``), extended here with what pydantic's ``model_json_schema()`` emits
and the port ignores: numeric bounds (``minimum``, ``maximum``, the exclusive ones; see
``number_grammar``), ``uniqueItems`` over a small finite set, the ``email`` and ``uri`` formats
(a strict subset of the addresses), tuples' ``minItems``/``maxItems``, unanchored patterns, and
annotation-only subschemas (``{"title": ...}`` is any value). That converter silently ignores
keywords it does not know (``not``, ``multipleOf``…); here every subschema is checked first, so a
request gets a ``SchemaError`` naming the feature instead of an answer that does not validate."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from llama_cpp import llama_grammar
from llama_cpp.llama_grammar import NON_LITERAL_SET, RESERVED_NAMES, SchemaConverter

from lokal.engine.number_grammar import Bound, RangeError, bound, number_rule

MAX_SCHEMA_CHARS = 64 * 1024
MAX_SCHEMA_DEPTH = 32  # subschemas inside subschemas, $ref hops included
# Objects and arrays inside each other: two per subschema level (properties/<name>, anyOf/<i>) and
# a few for values (const, enum, default). Checked without recursing, before anything that
# recurses (json.dumps, jsonschema's metaschema check, the converter) sees the schema: jsonschema
# takes about 8 Python frames per level, so 72 levels stay well inside the interpreter's 1000.
MAX_JSON_DEPTH = 2 * MAX_SCHEMA_DEPTH + 8
MAX_SCHEMA_NODES = 2**20  # values in a schema, $ref expansions included (a bound on the work)
MAX_PATTERN_DEPTH = MAX_SCHEMA_DEPTH  # groups inside groups in a pattern: re and the converter recurse
# Repetition counts (minLength/maxLength, minItems/maxItems, a pattern's {m,n}): written as {m,n}
# (``_build_repetition``), but a grammar engine may still expand them into one copy per count
# (llama.cpp's parser does, and overflowed its stack at tens of thousands).
MAX_REPETITION = 1000
# The converter recurses once per optional property of an object, and does quadratic work.
MAX_OPTIONAL_PROPERTIES = 256
MAX_GRAMMAR_CHARS = 2 * 2**20

# Keywords that only describe: they constrain nothing, so ignoring them is right.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "strict",
    "discriminator",  # OpenAPI's (pydantic's tagged unions): each alternative's const enforces it
    "contentEncoding", "contentMediaType",
})
_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
# Keywords the converter turns into grammar rules.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "pattern", "format", "minLength", "maxLength",
    *_BOUNDS, "uniqueItems",
})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5",
                      "email", "uri"})
MAX_UNIQUE_VALUES = 16  # uniqueItems is enforced over at most this many possible items
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

# The port's string character rule lets raw control characters through, which JSON forbids
# (llama.cpp's own converter excludes them); tighten it.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
# Its pattern's "." is any character but a line break, quotes and backslashes included, which
# would end or break the JSON string: a pattern's "." writes only characters that need no escape.
_LOOSE_DOT = "dot ::= [^\\x0A\\x0D]"
_STRICT_DOT = 'dot ::= [^"\\\\\\x7F\\x00-\\x1F]'

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
    _check_shape(schema)  # bounded depth and size before json.dumps recurses
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaError(f"the JSON schema is {len(text)} characters, limit {MAX_SCHEMA_CHARS}")
    check_valid(schema)
    schema = _normalized(schema)
    _check_tree(schema, for_grammar=True)
    try:
        converter: Any = _Converter()  # the port is untyped; its grammar is a str
        resolved = converter.resolve_refs(schema, "input")
        converter.visit(resolved, "")
        grammar: str = converter.format_grammar()
    except RecursionError as exc:  # not expected within the bounds above; never a 500 if it happens
        raise SchemaError(_too_deep()) from exc
    except Exception as exc:  # the converter asserts and raises on what it cannot express
        raise SchemaError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise SchemaError(f"the JSON schema makes a grammar of {len(grammar)} characters, limit {MAX_GRAMMAR_CHARS}: "
                          "lower its repetition counts (maxLength, maxItems, {m,n} in patterns)")
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR).replace(_LOOSE_DOT, _STRICT_DOT)


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``json_object``, Ollama's ``format: "json"``)."""
    return schema_grammar(JSON_OBJECT_SCHEMA)


def check_valid(schema: dict[str, Any]) -> None:
    """SchemaError if the schema is not valid JSON Schema, or too deep or big to look at safely.

    What a tool's parameters need when no grammar is compiled from them (tool_choice auto, and
    Ollama's /api/chat): the model only reads them, so keywords a grammar could not enforce
    (``minimum``, ``format: email``…) are accepted, as OpenAI and Ollama accept them."""
    if not isinstance(schema, dict):
        raise SchemaError("a JSON schema must be an object")
    _check_shape(schema)
    try:
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise SchemaError(f"invalid JSON schema at {where}: {exc.message}") from exc
    except RecursionError as exc:  # not expected within MAX_JSON_DEPTH; never a 500 if it happens
        raise SchemaError(_too_deep()) from exc


def check_schema(schema: dict[str, Any]) -> None:
    """SchemaError if the schema is not valid JSON Schema or uses a feature lokal cannot enforce.

    Any input is safe: nesting and size are bounded without recursion before anything recursive
    (jsonschema, the converter) sees the schema, so a deep schema is a SchemaError, never a
    RecursionError. The limits that only matter for a grammar (repetition counts, optional
    properties) are checked by ``schema_grammar``."""
    _check(schema, for_grammar=False)


def _check(schema: dict[str, Any], for_grammar: bool) -> None:
    check_valid(schema)
    _check_tree(_normalized(schema), for_grammar)


# Keywords whose value is a subschema, a list of them, or a map of names to them.
_ONE_SCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def _normalized(node: Any, depth: int = 0) -> Any:
    """A copy of a schema as the converter reads it: annotations dropped (``{"title": "X"}``
    is any value, which the converter only knows as ``{}``), a ``pattern`` anchored at both ends
    (JSON Schema's patterns search; the converter's match the whole string). Recursion is
    bounded: ``_check_shape`` has bounded the nesting first."""
    if not isinstance(node, dict) or depth > MAX_JSON_DEPTH:
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS and key not in ("$defs", "definitions"):
            continue
        if key in _ONE_SCHEMA and isinstance(value, dict):
            value = _normalized(value, depth + 1)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_normalized(v, depth + 1) for v in value]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {k: _normalized(v, depth + 1) for k, v in value.items()}
        elif key == "pattern" and isinstance(value, str):
            value = _anchored(_plain_escapes(value))
        out[key] = value
    return out


_CLASS_ESCAPES = {"d": "0-9", "w": "A-Za-z0-9_", "s": " "}


def _plain_escapes(pattern: str) -> str:
    """``\\.``, ``\\$``, ``\\/``, ``\\d``, ``\\w`` and ``\\s`` written so that the converter's grammar keeps
    no backslash before them: llama.cpp's parser refuses those escapes (``\\.`` becomes ``[.]``)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            e = pattern[i + 1]
            if e in _CLASS_ESCAPES:  # the grammar writes a subset of the class (\s: a space)
                out.append(_CLASS_ESCAPES[e] if in_class else f"[{_CLASS_ESCAPES[e]}]")
            else:
                out.append((e if in_class or e == "/" else f"[{e}]") if e in "./$" else c + e)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _anchored(pattern: str) -> str:
    """``pattern`` as a whole-string match: what it finds anywhere, with any text around it."""
    starts = pattern.startswith("^")
    ends = pattern.endswith("$") and not pattern.endswith("\\$")
    if starts and ends:
        return pattern
    core = pattern[1 if starts else 0:len(pattern) - 1 if ends else len(pattern)]
    return "^" + ("" if starts else ".*") + "(" + core + ")" + ("" if ends else ".*") + "$"


# Strict subsets of what the formats allow, short enough to bound: the grammar only has to write
# valid values. Characters need no JSON escaping.
_LABEL = "[A-Za-z0-9] ([A-Za-z0-9-]{0,14} [A-Za-z0-9])?"
_FORMAT_RULES = {
    # local@domain.tld (RFC 5321 dot-atoms), 6 to 127 characters
    "email": f'[A-Za-z0-9_%+-]{{1,16}} ("." [A-Za-z0-9_%+-]{{1,16}}){{0,3}} "@" {_LABEL} ("." {_LABEL}){{0,2}} '
             '"." [A-Za-z]{2,8}',
    # http(s)://host[:port][/path], 8 to 216 characters
    "uri": f'"http" "s"? "://" {_LABEL} ("." {_LABEL}){{0,3}} (":" [1-9] [0-9]{{0,3}})? '
           '("/" [A-Za-z0-9._~-]{0,16}){0,8}',
}
_FORMAT_LENGTHS = {"email": (6, 127), "uri": (8, 216)}


def _build_repetition(item_rule: str, min_items: int, max_items: int | None, separator_rule: str | None = None,
                      item_rule_is_literal: bool = False) -> str:
    """A repetition as GBNF's ``{m,n}`` (llama.cpp's current converter), where the port writes
    one nested optional group per count: a ``maxLength`` of 1000 nested 1000 groups deep, which
    a grammar reader that recurses (lokal's check, llguidance's GBNF reader) cannot take."""
    del item_rule_is_literal  # a literal is one item either way
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return f"{item_rule}?"
    if not separator_rule:
        if min_items == 1 and max_items is None:
            return f"{item_rule}+"
        if min_items == 0 and max_items is None:
            return f"{item_rule}*"
        return f"{item_rule}{{{min_items},{'' if max_items is None else max_items}}}"
    rest = _build_repetition(f"({separator_rule} {item_rule})", max(min_items - 1, 0),
                             None if max_items is None else max_items - 1)
    result = f"{item_rule} {rest}".rstrip()
    return f"({result})?" if min_items == 0 else result


llama_grammar._build_repetition = _build_repetition  # the port's methods look it up at call time


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, plus the keywords this module enforces beyond it."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]

    def _add_rule(self, name: str, rule: str) -> str:
        """The port's, with names unique regardless of case: llguidance's GBNF reader upper-cases
        some rules, so ``Color`` (a $defs entry) and ``color`` (a property) would collide."""
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", name)
        rules: dict[str, str] = self._rules
        lower = {k.lower(): k for k in rules}

        def free(key: str) -> bool:
            return key.lower() not in lower or rules.get(key) == rule

        key, i = base, 0
        while not free(key):
            key, i = f"{base}{i}", i + 1
        rules[key] = rule
        return key

    def visit(self, schema: dict[str, Any], name: str) -> str:
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        t = schema.get("type")
        if t in ("integer", "number") and any(k in schema for k in _BOUNDS) and not {"enum", "const"} & set(schema):
            rule = number_rule(*_bounds(schema), integer=t == "integer")
            return self._add_rule(rule_name, f"({rule}) space")
        fmt = schema.get("format")
        if t in (None, "string") and fmt in _FORMAT_RULES and "pattern" not in schema:
            return self._add_rule(rule_name, f'"\\"" ({_FORMAT_RULES[fmt]}) "\\"" space')
        if schema.get("uniqueItems") is True:
            return self._unique_items(schema, rule_name)
        return super().visit(schema, name)  # type: ignore[no-untyped-call,no-any-return]

    def _unique_items(self, schema: dict[str, Any], rule_name: str) -> str:
        """An array of distinct values from a finite set, in the set's order: state (i, c) is
        "values from index i on may follow, c were written"."""
        values = _finite_values(schema["items"])
        k = len(values)
        low, high = schema.get("minItems", 0), min(schema.get("maxItems", k), k)
        literals = [self._generate_constant_rule(v) for v in values]  # type: ignore[no-untyped-call]

        def feasible(i: int, c: int) -> bool:
            return bool(c <= high and c + (k - i) >= low)

        names: dict[tuple[int, int], str] = {}
        for i in range(k, -1, -1):
            for c in range(min(i, high), -1, -1):
                if not feasible(i, c):
                    continue
                alts = ['""'] if c >= low else []
                if i < k and feasible(i + 1, c + 1):
                    sep = '"," space ' if c else ""
                    alts.append(f"{sep}{literals[i]} space {names[i + 1, c + 1]}")
                if i < k and feasible(i + 1, c):
                    alts.append(names[i + 1, c])
                names[i, c] = self._add_rule(f"{rule_name}-u{i}-{c}", " | ".join(alts))
        return self._add_rule(rule_name, f'"[" space {names[0, 0]} "]" space')


def _bounds(schema: dict[str, Any]) -> tuple[Bound | None, Bound | None]:
    """The tighter of ``minimum``/``exclusiveMinimum``, and of the maximums (RangeError if a
    bound is not a finite number or has too many digits)."""
    lows = [bound(schema[k], k == "minimum", k) for k in ("minimum", "exclusiveMinimum") if k in schema]
    highs = [bound(schema[k], k == "maximum", k) for k in ("maximum", "exclusiveMaximum") if k in schema]
    low = max(lows, key=lambda b: (b.value, not b.inclusive), default=None)
    high = min(highs, key=lambda b: (b.value, b.inclusive), default=None)
    return low, high


def _finite_values(items: Any) -> list[Any]:
    """The values a finite ``items`` schema allows (enum, const, boolean); [] if not finite."""
    if not isinstance(items, dict):
        return []
    if "const" in items:
        return [items["const"]]
    if isinstance(items.get("enum"), list):
        unique: list[Any] = []
        for v in items["enum"]:
            if v not in unique:
                unique.append(v)
        return unique
    if items.get("type") == "boolean" and set(items) == {"type"}:
        return [True, False]
    return []


def _too_deep(json_levels: bool = False) -> str:
    detail = f" (more than {MAX_JSON_DEPTH} levels of JSON objects and arrays)" if json_levels else ""
    return f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels{detail}"


def _check_shape(schema: Any) -> None:
    """Bound the JSON value itself, without recursing: nesting of objects and arrays, number of
    values, and the nesting of groups in every ``pattern`` (jsonschema compiles them with ``re``)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_SCHEMA_NODES:
            raise SchemaError(f"the JSON schema has more than {MAX_SCHEMA_NODES} values")
        if isinstance(node, dict):
            children: Any = node.values()
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_pattern_depth(pattern)
            names = node.get("patternProperties")
            if isinstance(names, dict):
                for name in names:
                    if isinstance(name, str):
                        _check_pattern_depth(name)
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise SchemaError(_too_deep(json_levels=True))
        stack.extend((child, depth + 1) for child in children)


def _check_pattern_depth(pattern: str) -> None:
    depth = deepest = 0
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":  # a leading ] is a literal
                i += 1
            continue
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(depth - 1, 0)
        i += 1
    if deepest > MAX_PATTERN_DEPTH:
        raise SchemaError(f"a pattern in the JSON schema nests groups deeper than {MAX_PATTERN_DEPTH} levels")


def _unsupported(feature: str, where: str, why: str = "") -> SchemaError:
    return SchemaError(
        f"JSON schema feature {feature!r} (at {where}) is not supported: {why or 'the grammar cannot enforce it'}",
        feature=feature,
    )


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The subschema a local ``$ref`` names, as the converter finds it (no ~0/~1 unescaping); None
    if there is none (the converter then refuses it)."""
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


def _check_tree(root: dict[str, Any], for_grammar: bool) -> None:
    """Check every subschema, depth first and without recursing. A ``$ref`` is followed where the
    converter would first expand it (once per target), so its depth counts as the converter's does."""
    stack: list[tuple[Any, str, int]] = [(root, "#", 0)]
    expanded: set[int] = set()
    visits = 0
    while stack:
        node, where, depth = stack.pop()
        visits += 1
        if visits > MAX_SCHEMA_NODES:
            raise SchemaError(f"the JSON schema has more than {MAX_SCHEMA_NODES} subschemas, references expanded")
        # Children in the converter's order; pushed reversed, so that the first is checked first.
        children = _check_node(node, where, depth, for_grammar)
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = _resolve(root, ref)
            if isinstance(target, dict) and id(target) not in expanded:
                expanded.add(id(target))
                children.insert(0, (target, ref, depth + 1))
        stack.extend(reversed(children))


def _check_node(node: Any, where: str, depth: int, for_grammar: bool) -> list[tuple[Any, str, int]]:
    """Check one subschema; returns its subschemas (node, where, depth) in the converter's order."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(_too_deep())
    if isinstance(node, bool):
        raise _unsupported("boolean schema", where, "write {} instead of true")
    if not isinstance(node, dict):
        raise SchemaError(f"invalid JSON schema at {where}: a schema must be an object")
    for key in node:
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            raise _unsupported(key, where)
    keys = set(node) & _ENFORCED
    t = node.get("type")
    children: list[tuple[Any, str, int]] = []
    if for_grammar:
        _check_grammar_limits(node, where)
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
            children.extend((sub, f"{where}/{union}/{i}", depth + 1) for i, sub in enumerate(node[union]))
            return children + _defs(node, where, depth)
    if isinstance(t, list):
        if not set(t) <= _TYPES:
            raise SchemaError(f"invalid JSON schema at {where}: unknown type in {t}")
        if keys - {"type"}:
            raise _unsupported("type list with other keywords", where,
                               "use anyOf with one schema per type instead")
        return children + _defs(node, where, depth)
    if "const" in node or "enum" in node:
        if keys & set(_BOUNDS):  # the grammar writes the listed values: each must be within the bounds
            bounds = jsonschema.Draft202012Validator({k: node[k] for k in _BOUNDS if k in node})
            values = [node["const"]] if "const" in node else node["enum"]
            if not all(bounds.is_valid(v) for v in values):
                raise _unsupported("enum values outside minimum/maximum", where, "list only values within the bounds")
        return children + _defs(node, where, depth)  # the grammar emits exactly one of the listed values
    if keys & set(_BOUNDS):
        if t not in ("integer", "number"):
            raise _unsupported("minimum/maximum without type integer or number", where)
        try:
            number_rule(*_bounds(node), integer=t == "integer")
        except RangeError as exc:
            raise SchemaError(f"invalid JSON schema at {where}: {exc}") from exc
    if "format" in node:
        fmt = node["format"]
        if fmt not in _FORMATS:
            raise _unsupported(f"format {fmt!r}", where, f"supported formats: {', '.join(sorted(_FORMATS))}")
        shortest, longest = _FORMAT_LENGTHS.get(fmt, (0, 0))
        if fmt in _FORMAT_LENGTHS and node.get("minLength", 0) <= shortest and \
                node.get("maxLength", longest) >= longest:
            keys -= {"minLength", "maxLength"}  # lokal's values of the format always fit these lengths
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
    children.extend((sub, f"{where}/properties/{name}", depth + 1) for name, sub in props.items())
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        children.append((extra, f"{where}/additionalProperties", depth + 1))
    if keys & {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}:
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
            n = len(prefix) if isinstance(prefix, list) else len(items) if isinstance(items, list) else 0
            if not node.get("minItems", 0) <= n <= node.get("maxItems", n):  # a tuple's own length is fine
                raise _unsupported("minItems/maxItems with prefixItems", where,
                                   "the grammar writes exactly one item per prefixItems entry")
        if node.get("uniqueItems") is True:
            values = _finite_values(items)
            if not values or prefix is not None:
                raise _unsupported("uniqueItems", where, "enforced only for items from a finite set "
                                   "(enum, const or boolean items)")
            if len(values) > MAX_UNIQUE_VALUES:
                raise _unsupported("uniqueItems", where, f"enforced for at most {MAX_UNIQUE_VALUES} possible items")
            if node.get("minItems", 0) > len(values):
                raise SchemaError(f"invalid JSON schema at {where}: minItems {node['minItems']} distinct items "
                                  f"from {len(values)} values")
        if isinstance(items, dict):
            children.append((items, f"{where}/items", depth + 1))
        subs = prefix if isinstance(prefix, list) else items if isinstance(items, list) else []
        children.extend((sub, f"{where}/prefixItems/{i}", depth + 1) for i, sub in enumerate(subs))
    return children + _defs(node, where, depth)


def _defs(node: dict[str, Any], where: str, depth: int) -> list[tuple[Any, str, int]]:
    return [(sub, f"{where}/{defs}/{name}", depth + 1)
            for defs in ("$defs", "definitions") for name, sub in (node.get(defs) or {}).items()]


def _check_grammar_limits(node: dict[str, Any], where: str) -> None:
    """What the converter and llama.cpp's grammar parser cannot take, though the schema is fine."""
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key.endswith("Length") and node.get("format") in _FORMAT_LENGTHS:
            continue  # the format's own grammar is short; its lengths are checked in _check_node
        n = node.get(key)
        if isinstance(n, int) and n > MAX_REPETITION:
            raise _unsupported(f"{key} above {MAX_REPETITION}", where,
                               f"{key} {n}: the grammar writes one rule per count; at most {MAX_REPETITION}")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        problem = _converter_pattern_problem(pattern)
        if problem is not None:
            raise _unsupported(problem[0], where, problem[1])
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required", [])) & set(props)
        optional = len(props) - len(required) + (node.get("additionalProperties") not in (None, False))
        if optional > MAX_OPTIONAL_PROPERTIES:
            raise _unsupported(f"more than {MAX_OPTIONAL_PROPERTIES} optional properties", where,
                               f"{optional} properties are optional; list the others under required")


def _converter_pattern_problem(pattern: str) -> tuple[str, str] | None:
    """(feature, why) if the converter would loop forever on ``pattern`` (it never moves past a ``}``
    or ``]`` it did not open, though regular expressions allow them), recurse too deep, or write a
    runaway repetition; None otherwise. Walks the pattern as the converter's tokenizer does."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return None  # the converter refuses it itself
    p, i, depth = pattern[1:-1], 0, 0
    n = len(p)
    while i < n:
        c = p[i]
        if c == "(":
            depth += 1
            if depth > MAX_PATTERN_DEPTH:
                return "pattern groups", f"groups nest deeper than {MAX_PATTERN_DEPTH} levels"
            i += 1
        elif c == ")":
            depth -= 1
            i += 1
        elif c in ".|*+?":
            i += 1
        elif c == "[":  # to the first ] not after a backslash: "[]a]" is "[]" then a stray "]"
            i += 1
            while i < n and p[i] != "]":
                i += 2 if p[i] == "\\" else 1
            i += 1
        elif c == "{":
            end = p.find("}", i)
            if end < 0:
                return None  # the converter refuses it itself
            for count in p[i + 1:end].split(","):
                if count.strip().isdigit() and int(count) > MAX_REPETITION:
                    return (f"pattern repetition above {MAX_REPETITION}",
                            f"{p[i:end + 1]}: the grammar writes one rule per count; at most {MAX_REPETITION}")
            i = end + 1
        else:  # a literal run, as the converter reads it
            start, literal = i, False
            while i < n:
                if p[i] == "\\" and i < n - 1:
                    i += 2
                elif p[i] == '"' or (p[i] not in NON_LITERAL_SET and (
                        i == n - 1 or not literal or p[i + 1] == "." or p[i + 1] not in NON_LITERAL_SET)):
                    i += 1
                else:
                    break
                literal = True
            if i == start:
                return f"pattern with an unescaped {c!r}", f"at index {start + 1}: write \\{c} for the character"
    return None


def regex_grammar(pattern: str) -> str:
    """The GBNF grammar of text matching ``pattern`` whole (vLLM's ``regex``), through the
    converter's pattern translation; SchemaError for what it cannot take."""
    if not isinstance(pattern, str):
        raise SchemaError("the regex must be a string")
    _check_pattern_depth(pattern)
    anchored = _plain_escapes(pattern)
    if not (anchored.startswith("^") and anchored.endswith("$")):
        anchored = f"^({anchored.removeprefix('^').removesuffix('$')})$"
    problem = _converter_pattern_problem(anchored)
    if problem is not None:
        raise _unsupported(problem[0], "the regex", problem[1])
    try:
        converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=True)
        converter.visit({"type": "string", "pattern": anchored}, "")
        grammar: str = converter.format_grammar()
    except RecursionError as exc:
        raise SchemaError(_too_deep()) from exc
    except Exception as exc:  # the converter asserts and raises on what it cannot express
        raise SchemaError(f"the regex cannot be turned into a grammar: {exc}") from exc
    return grammar


def choice_grammar(choices: list[str]) -> str:
    """The GBNF grammar of exactly one of ``choices`` (vLLM's ``choice``)."""
    if not choices or not all(isinstance(c, str) for c in choices):
        raise SchemaError("choice must be a non-empty list of strings")
    return "root ::= " + " | ".join(_literal(c) for c in choices) + "\n"


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal (llama.cpp reads \\\\, \\", \\n, \\r, \\t and \\xHH)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
