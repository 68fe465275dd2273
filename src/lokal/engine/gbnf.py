"""A check of GBNF text from a client before llama.cpp's grammar parser sees it.

llama.cpp refuses most malformed grammars itself (its parser logs and returns NULL), but not
all: a repetition ``{m,n}`` with m > n sends it into an endless loop, groups nested thousands
deep overflow its stack (the process dies), large counts are expanded into that many copies, and
an inverted class ``[z-a]`` leaves the sampler no token to pick. This walks the text as its
parser does (rules, alternatives, literals, classes, groups, repetitions, rule references) and
refuses those, and anything it cannot read, with a message naming the place."""

from __future__ import annotations

import re

from lokal.engine.grammar import MAX_GRAMMAR_CHARS, MAX_PATTERN_DEPTH, MAX_REPETITION

_NAME = re.compile(r"[A-Za-z0-9-]+")
_COUNT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")
_ESCAPES = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = set('nrt\\"[]-')  # what llama.cpp's parser reads after a backslash


class GbnfError(ValueError):
    """GBNF text lokal will not hand to llama.cpp."""


def check_gbnf(text: str, limit: int = MAX_GRAMMAR_CHARS) -> None:
    """GbnfError unless ``text`` is a GBNF grammar of at most ``limit`` characters with a ``root``
    rule, every referenced rule defined, groups nested at most MAX_PATTERN_DEPTH deep and
    repetition counts m <= n <= MAX_REPETITION."""
    if len(text) > limit:
        raise GbnfError(f"the grammar is {len(text)} characters, limit {limit}")
    _Reader(text).grammar()


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.defined: set[str] = set()
        self.used: dict[str, int] = {}

    def fail(self, what: str) -> GbnfError:
        line = self.text.count("\n", 0, self.i) + 1
        near = self.text[self.i:self.i + 20].split("\n")[0]
        return GbnfError(f"invalid grammar at line {line}: {what}" + (f" (near {near!r})" if near else ""))

    def space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            elif c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            else:
                return

    def grammar(self) -> None:
        self.space(newlines=True)
        while self.i < len(self.text):
            name = self.name()
            self.space(newlines=False)
            if not self.text.startswith("::=", self.i):
                raise self.fail("expected ::= after the rule name")
            self.i += 3
            self.space(newlines=True)
            self.alternatives(depth=0)
            self.defined.add(name)
            if self.i < len(self.text) and self.text[self.i] not in "\r\n":
                raise self.fail("expected the end of the rule")
            self.space(newlines=True)
        if "root" not in self.defined:
            raise GbnfError("invalid grammar: it has no root rule")
        missing = sorted(set(self.used) - self.defined)
        if missing:
            raise GbnfError(f"invalid grammar: rule {missing[0]!r} is used but not defined")

    def name(self) -> str:
        m = _NAME.match(self.text, self.i)
        if not m:
            raise self.fail("expected a rule name (letters, digits and -)")
        self.i = m.end()
        return m.group()

    def alternatives(self, depth: int) -> None:
        if depth > MAX_PATTERN_DEPTH:
            raise self.fail(f"groups nest deeper than {MAX_PATTERN_DEPTH} levels")
        nested = depth > 0
        self.sequence(depth, nested)
        while self.i < len(self.text) and self.text[self.i] == "|":
            self.i += 1
            self.space(newlines=True)
            self.sequence(depth, nested)

    def sequence(self, depth: int, nested: bool) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == '"':
                self.literal()
            elif c == "[":
                self.char_class()
            elif c == "(":
                self.i += 1
                self.space(newlines=True)
                self.alternatives(depth + 1)
                if self.i >= len(self.text) or self.text[self.i] != ")":
                    raise self.fail("expected )")
                self.i += 1
            elif c == ".":
                self.i += 1
            elif _NAME.match(c):
                start = self.i
                name = self.name()
                self.space(newlines=nested)
                if self.text.startswith("::=", self.i):  # the next rule begins: this one ended
                    self.i = start
                    return
                self.used.setdefault(name, start)
                self.repetition()
                continue
            elif c in "*+?{":
                raise self.fail(f"{c} follows nothing")
            else:
                return
            self.space(newlines=nested)
            self.repetition()

    def repetition(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in "*+?{":
            if self.text[self.i] == "{":
                m = _COUNT.match(self.text, self.i)
                if not m:
                    raise self.fail("expected {m}, {m,} or {m,n}")
                low = int(m.group(1))
                high = int(m.group(3)) if m.group(3) else (None if m.group(2) else low)
                if high is not None and low > high:
                    raise self.fail(f"repetition {m.group()} has its minimum above its maximum")
                if max(low, high or 0) > MAX_REPETITION:
                    raise self.fail(f"repetition {m.group()} is above {MAX_REPETITION}")
                self.i = m.end()
            else:
                self.i += 1
            self.space(newlines=False)

    def literal(self) -> None:
        self.i += 1
        while True:
            if self.i >= len(self.text) or self.text[self.i] in "\r\n":
                raise self.fail("unterminated string")
            c = self.text[self.i]
            if c == '"':
                self.i += 1
                return
            self.char()

    def char_class(self) -> None:
        self.i += 1
        if self.text.startswith("^", self.i):
            self.i += 1
        while True:
            if self.i >= len(self.text) or self.text[self.i] in "\r\n":
                raise self.fail("unterminated character class")
            if self.text[self.i] == "]":
                self.i += 1
                return
            low = self.char()
            if self.text.startswith("-", self.i) and not self.text.startswith("-]", self.i):
                self.i += 1
                high = self.char()
                if high < low:
                    raise self.fail("a character range ends below its start")

    def char(self) -> int:
        """One character or escape of a literal or class; its code point."""
        if self.i >= len(self.text):
            raise self.fail("unexpected end")
        c = self.text[self.i]
        if c != "\\":
            self.i += 1
            return ord(c)
        e = self.text[self.i + 1:self.i + 2]
        if e in _ESCAPES:
            digits = self.text[self.i + 2:self.i + 2 + _ESCAPES[e]]
            if len(digits) != _ESCAPES[e] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"expected {_ESCAPES[e]} hex digits after \\{e}")
            self.i += 2 + _ESCAPES[e]
            return int(digits, 16)
        if e in _SIMPLE_ESCAPES:
            self.i += 2
            return {"n": 10, "r": 13, "t": 9}.get(e, ord(e))
        raise self.fail(f"unknown escape \\{e}")
