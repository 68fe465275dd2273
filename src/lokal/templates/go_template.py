"""Ollama's Go ``text/template`` chat templates, translated into lokal's Jinja chat templates.

The common subset is translated: ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``,
``{{ range .Messages }}`` with ``.Role``/``.Content`` (and ``$.System``), ``if``/``else if``/
``else``/``end`` with ``eq``/``ne``/``not``/``and``/``or``, ``{{-``/``-}}`` trimming and
``{{/* comments */}}``, ``break``/``continue`` in a range. Anything else (variables,
``len``/``slice``, pipelines, ``.Tools``) is refused with :class:`GoTemplateError` rather than translated wrong.

Templates without ``.Messages`` are rendered as Ollama renders them: once per
(system, prompt, response) turn, and the last turn only up to ``{{ .Response }}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MAX_GO_TEMPLATE_CHARS = 256 * 1024
MAX_DEPTH = 32

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_GO_MARKERS = re.compile(
    r"\{\{-?\s*(?:\.|\$|if\b|range\b|end\b|else\b|with\b|/\*|template\b|block\b|define\b)"
)
_EXPR_TOKEN = re.compile(
    r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\$?\.[A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_]\w*)|(\S))'
)
_FUNCTIONS = {"eq": "==", "ne": "!=", "not": "not", "and": "and", "or": "or"}
_ROOT_FIELDS = ("System", "Prompt", "Response")

SUPPORTED = (
    ".System, .Prompt, .Response, range .Messages with .Role/.Content, $.System, "
    "if/else if/else/end, eq, ne, not, and, or"
)


class GoTemplateError(ValueError):
    """A Go template that uses something lokal does not translate."""


def looks_like_go_template(text: str) -> bool:
    """Whether ``text`` is a Go template (Ollama's) rather than Jinja (Hugging Face's)."""
    return "{%" not in text and _GO_MARKERS.search(text) is not None


@dataclass
class _Text:
    text: str


@dataclass
class _Output:
    expr: str
    response: bool  # refers to .Response (where a legacy template is cut)


@dataclass
class _LoopControl:
    keyword: str  # break or continue


@dataclass
class _If:
    branches: list[tuple[str, bool, list[_Node]]]  # (condition, refers to .Response, body)
    otherwise: list[_Node] | None = None


@dataclass
class _Range:
    body: list[_Node] = field(default_factory=list)


_Node = _Text | _Output | _LoopControl | _If | _Range


def go_to_jinja(template: str) -> str:
    """Translate an Ollama Go template into an equivalent Jinja chat template.

    Raises :class:`GoTemplateError` naming what is not supported.
    """
    if len(template) > MAX_GO_TEMPLATE_CHARS:
        raise GoTemplateError(f"template is {len(template)} characters, limit {MAX_GO_TEMPLATE_CHARS}")
    tokens = _lex(template)
    uses_messages = any(kind == "action" and ".Messages" in body for kind, body in tokens)
    parser = _Parser(tokens)
    nodes = parser.parse_list(in_range=False, depth=0, stop=())
    if parser.pos != len(parser.tokens):
        raise GoTemplateError(f"unexpected {{{{ {parser.tokens[parser.pos][1]} }}}}")
    if uses_messages:
        prelude = (
            "{%- set ns = namespace(system='', prompt='', response='') -%}"
            "{%- for message in messages if message.role == 'system' -%}"
            "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message.content -%}"
            "{%- endfor -%}"
        )
        body, _ = _emit(nodes, cut=False)
        return prelude + body
    full, _ = _emit(nodes, cut=False)
    last, _ = _emit(nodes, cut=True)
    reset = "{%- set ns.system = '' -%}{%- set ns.prompt = '' -%}{%- set ns.response = '' -%}"
    return (
        "{%- set ns = namespace(system='', prompt='', response='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}"
        "{%- if ns.prompt or ns.response -%}" + full + reset + "{%- endif -%}"
        "{%- set ns.system = message.content -%}"
        "{%- elif message.role == 'user' -%}"
        "{%- if ns.response -%}" + full + reset + "{%- endif -%}"
        "{%- set ns.prompt = message.content -%}"
        "{%- elif message.role == 'assistant' -%}"
        "{%- set ns.response = message.content -%}"
        "{%- endif -%}"
        "{%- endfor -%}" + last
    )


def _lex(template: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with Go's ``{{-``/``-}}`` trimming applied."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if text:
            tokens.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    text = template[pos:]
    if trim_next:
        text = text.lstrip()
    if "{{" in text:
        raise GoTemplateError("unterminated {{ action")
    if text:
        tokens.append(("text", text))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def parse_list(self, in_range: bool, depth: int, stop: tuple[str, ...]) -> list[_Node]:
        if depth > MAX_DEPTH:
            raise GoTemplateError(f"blocks nested more than {MAX_DEPTH} deep")
        nodes: list[_Node] = []
        while self.pos < len(self.tokens):
            kind, body = self.tokens[self.pos]
            if kind == "text":
                nodes.append(_Text(body))
                self.pos += 1
                continue
            keyword = body.split(None, 1)[0] if body else ""
            if keyword in stop:
                return nodes
            self.pos += 1
            if keyword == "if":
                nodes.append(self._parse_if(body[2:], in_range, depth))
            elif keyword == "range":
                target = body[5:].strip()
                if target not in (".Messages", "$.Messages"):
                    raise GoTemplateError(
                        f"{{{{ {body} }}}}: only {{{{ range .Messages }}}} is supported"
                    )
                if in_range:
                    raise GoTemplateError("nested {{ range }} is not supported")
                inner = self.parse_list(in_range=True, depth=depth + 1, stop=("end", "else"))
                self._expect_end("range")
                nodes.append(_Range(inner))
            elif body in ("break", "continue") and in_range:
                nodes.append(_LoopControl(body))
            elif keyword in ("end", "else"):
                raise GoTemplateError(f"{{{{ {body} }}}} without a matching {{{{ if }}}} or {{{{ range }}}}")
            else:
                expr, response = _translate_expr(body, in_range)
                nodes.append(_Output(expr, response))
        if stop:
            raise GoTemplateError("missing {{ end }}")
        return nodes

    def _parse_if(self, condition: str, in_range: bool, depth: int) -> _If:
        expr, response = _translate_expr(condition, in_range)
        body = self.parse_list(in_range, depth + 1, stop=("end", "else"))
        node = _If([(expr, response, body)])
        while True:
            if self.pos >= len(self.tokens):
                raise GoTemplateError("missing {{ end }} of an {{ if }}")
            action = self.tokens[self.pos][1]
            self.pos += 1
            if action == "end":
                return node
            rest = action[4:].strip()  # after "else"
            if rest.startswith("if ") or rest.startswith("if\t"):
                expr, response = _translate_expr(rest[2:], in_range)
                node.branches.append((expr, response, self.parse_list(in_range, depth + 1, stop=("end", "else"))))
            elif rest:
                raise GoTemplateError(f"{{{{ {action} }}}} is not supported")
            else:
                node.otherwise = self.parse_list(in_range, depth + 1, stop=("end", "else"))
                self._expect_end("if")
                return node

    def _expect_end(self, block: str) -> None:
        if self.pos >= len(self.tokens) or self.tokens[self.pos][1] != "end":
            raise GoTemplateError(f"missing {{{{ end }}}} of a {{{{ {block} }}}} (or an unsupported {{{{ else }}}})")
        self.pos += 1


def _translate_expr(text: str, in_range: bool) -> tuple[str, bool]:
    """A Go pipeline (subset) as a Jinja expression, and whether it reads ``.Response``."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _EXPR_TOKEN.match(text, pos)
        if match is None:
            break
        pos = match.end()
        kinds = ("(", ")", "string", "raw", "field", "ident", "other")
        kind = next(k for k, g in zip(kinds, match.groups(), strict=True) if g is not None)
        tokens.append((kind, match.group(match.lastindex or 0)))
    if not tokens:
        raise GoTemplateError("empty {{ }} action")
    reads_response = False

    def operand(i: int) -> tuple[str, int]:
        nonlocal reads_response
        kind, value = tokens[i]
        if kind == "(":
            expr, i = command(i + 1)
            if i >= len(tokens) or tokens[i][0] != ")":
                raise GoTemplateError(f"{{{{ {text} }}}}: unbalanced parentheses")
            return expr, i + 1
        if kind == "string":
            try:
                return json.dumps(json.loads(value)), i + 1
            except ValueError:
                raise GoTemplateError(f"{{{{ {text} }}}}: bad string literal {value}") from None
        if kind == "raw":
            return json.dumps(value[1:-1]), i + 1
        if kind == "field":
            root = value.startswith("$")
            name = value.lstrip("$.")
            if name == "Response":
                reads_response = True
            if name in _ROOT_FIELDS and (root or not in_range):
                return f"ns.{name.lower()}", i + 1
            if name == "Messages" and (root or not in_range):
                return "messages", i + 1
            if name in ("Role", "Content") and in_range and not root:
                return f"message.{name.lower()}", i + 1
            where = "inside" if in_range else "outside"
            raise GoTemplateError(f"{{{{ {text} }}}}: {value} is not supported {where} range")
        raise GoTemplateError(f'{{{{ {text} }}}}: "{value}" is not supported')

    def command(i: int) -> tuple[str, int]:
        if i >= len(tokens):
            raise GoTemplateError(f"{{{{ {text} }}}}: incomplete expression")
        kind, value = tokens[i]
        if kind != "ident":
            return operand(i)
        if value not in _FUNCTIONS:
            raise GoTemplateError(f'{{{{ {text} }}}}: function "{value}" is not supported')
        args: list[str] = []
        i += 1
        while i < len(tokens) and tokens[i][0] != ")":
            arg, i = operand(i)
            args.append(arg)
        if value == "not":
            if len(args) != 1:
                raise GoTemplateError(f"{{{{ {text} }}}}: not takes one argument")
            return f"(not {args[0]})", i
        if len(args) < 2:
            raise GoTemplateError(f"{{{{ {text} }}}}: {value} takes at least two arguments")
        if value in ("eq", "ne"):
            tests = [f"{args[0]} {_FUNCTIONS[value]} {other}" for other in args[1:]]
            return "(" + (" or " if value == "eq" else " and ").join(tests) + ")", i
        return "(" + f" {value} ".join(args) + ")", i

    expr, end = command(0)
    if end != len(tokens) or pos != len(text):
        raise GoTemplateError(f"{{{{ {text} }}}} is not supported")
    return expr, reads_response


def _emit(nodes: list[_Node], cut: bool) -> tuple[str, bool]:
    """Jinja for ``nodes``; with ``cut``, stop at the first use of ``.Response`` (returns True)."""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, _Text):
            # As an expression, not literal text: trim_blocks/lstrip_blocks never touch it.
            out.append("{{ " + json.dumps(node.text, ensure_ascii=False) + " }}")
        elif isinstance(node, _Output):
            if cut and node.response:
                return "".join(out), True
            out.append("{{ " + node.expr + " }}")
        elif isinstance(node, _LoopControl):
            out.append("{%- " + node.keyword + " -%}")
        elif isinstance(node, _Range):
            body, stopped = _emit(node.body, cut)
            out.append("{%- for message in messages -%}" + body + "{%- endfor -%}")
            if stopped:
                return "".join(out), True
        else:
            parts: list[str] = []
            stopped = False
            for index, (condition, response, body_nodes) in enumerate(node.branches):
                if cut and response:
                    stopped = True
                    break
                body, stopped = _emit(body_nodes, cut)
                parts.append(("{%- if " if index == 0 else "{%- elif ") + condition + " -%}" + body)
                if stopped:
                    break
            if not stopped and node.otherwise is not None:
                body, stopped = _emit(node.otherwise, cut)
                parts.append("{%- else -%}" + body)
            if parts:
                out.append("".join(parts) + "{%- endif -%}")
            if stopped:
                return "".join(out), True
    return "".join(out), False
