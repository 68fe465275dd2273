"""Modelfiles, as Ollama writes them: ``FROM``, ``PARAMETER``, ``SYSTEM``, ``TEMPLATE``,
``MESSAGE``, ``LICENSE`` and ``ADAPTER`` (a LoRA adapter, with lokal's optional scale).

The text is untrusted (it arrives over HTTP in ``/api/create``): its size, the number of
instructions and every value are bounded, and each error names the line it is about.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lokal.options import BY_OLLAMA, MAX_STOP_STRINGS, OptionError, check_ollama

if TYPE_CHECKING:
    from lokal.store.manifest import Manifest

MAX_MODELFILE_CHARS = 1024 * 1024
MAX_INSTRUCTIONS = 4096
MESSAGE_ROLES = ("system", "user", "assistant")
MAX_ADAPTERS = 8  # LoRA adapters of one model (llama.cpp applies them all in every decode)
MAX_ADAPTER_SCALE = 4.0

_INSTRUCTIONS = ("from", "parameter", "system", "template", "message", "license", "adapter")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class AdapterRef:
    """An ``ADAPTER`` line: a LoRA adapter's GGUF (a path, or ``sha256:<hex>`` of a stored blob)
    and the scale its update is applied with (``ADAPTER path.gguf 0.5``; default 1)."""

    source: str
    scale: float = 1.0


@dataclass
class Modelfile:
    """What a Modelfile says: the base model and what the new model changes about it."""

    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    projector: str | None = None  # a second FROM: the vision projector (mmproj GGUF), as in Ollama
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: str | None = None
    adapters: list[AdapterRef] = field(default_factory=list)


class ModelfileError(ValueError):
    """A Modelfile that cannot be used; the message names the line (``line 3: …``)."""


def parse_parameter(name: str, value: Any) -> Any:
    """``value`` (text, or already typed from JSON) as the type Ollama gives option ``name``,
    within the range lokal states for it (``lokal.options``), so that a model never stores a value
    every request would then be refused for.

    Raises :class:`ModelfileError` for an unknown name or a bad value. ``stop`` values come back
    as a list of strings.
    """
    key = name.lower()
    option = BY_OLLAMA.get(key)
    if option is None:
        raise ModelfileError(f'unknown parameter "{name[:64]}"')
    try:
        return check_ollama(option, value, key)[0]
    except OptionError as e:
        raise ModelfileError(f"parameter {key} {e.reason}") from None


def parse_adapter(value: str, where: str = "") -> AdapterRef:
    """``ADAPTER``'s value: a path or digest, then optionally a scale (the last word, when it is a
    number; lokal's addition: Ollama has no scale). Raises :class:`ModelfileError`."""
    source, scale = value.strip(), 1.0
    head, _, last = source.rpartition(" ")
    if head.strip():
        try:
            scale = float(last)
        except ValueError:
            pass  # a path with a space in it
        else:
            source = head.strip()
    if not source:
        raise ModelfileError(f"{where}ADAPTER needs a path to a LoRA adapter's GGUF file")
    if not 0.0 < scale <= MAX_ADAPTER_SCALE:  # also refuses nan
        raise ModelfileError(f"{where}ADAPTER scale must be above 0 and at most {MAX_ADAPTER_SCALE:g}, not {last}")
    return AdapterRef(source, scale)


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile. Raises :class:`ModelfileError` naming the line of the first problem.

    Instruction keywords are case-insensitive; ``#`` starts a comment line; a value is the rest
    of its line, a ``"quoted"`` string (``\\"`` and ``\\\\`` escapes), or a ``\"\"\"triple-quoted\"\"\"``
    block taken verbatim, both of which may span lines. ``SYSTEM``/``TEMPLATE`` given twice: the
    last wins; ``PARAMETER stop``, ``MESSAGE`` and ``ADAPTER`` accumulate; ``LICENSE`` texts are joined.
    """
    if not isinstance(text, str):
        raise ModelfileError("a Modelfile must be text")
    if len(text) > MAX_MODELFILE_CHARS:
        raise ModelfileError(f"the Modelfile is {len(text)} characters, more than the limit of {MAX_MODELFILE_CHARS}")
    if "\x00" in text:
        raise ModelfileError(f"line {text.count(chr(10), 0, text.index(chr(0))) + 1}: NUL character")

    reader = _Reader(text.replace("\r\n", "\n"))
    from_: str | None = None
    projector: str | None = None
    parameters: dict[str, Any] = {}
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    adapters: list[AdapterRef] = []
    count = 0
    while True:
        reader.skip_blank_and_comments()
        if reader.at_end():
            break
        line = reader.line
        count += 1
        if count > MAX_INSTRUCTIONS:
            raise ModelfileError(f"line {line}: more than {MAX_INSTRUCTIONS} instructions")
        keyword = reader.word()
        instruction = keyword.lower()
        if instruction not in _INSTRUCTIONS:
            raise ModelfileError(
                f'line {line}: unknown instruction "{keyword[:64]}" '
                "(expected FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE, ADAPTER)"
            )
        if instruction == "adapter":
            adapters.append(parse_adapter(reader.value("ADAPTER"), f"line {line}: "))
            if len(adapters) > MAX_ADAPTERS:
                raise ModelfileError(f"line {line}: more than {MAX_ADAPTERS} ADAPTER lines")
            continue
        if instruction == "parameter":
            name = reader.word()
            if not name:
                raise ModelfileError(f"line {line}: PARAMETER needs a name and a value")
            value = reader.value(f"PARAMETER {name[:64]}")
            try:
                typed = parse_parameter(name, value)
            except ModelfileError as e:
                raise ModelfileError(f"line {line}: {e}") from None
            if isinstance(typed, list):
                stops = parameters.setdefault(name.lower(), [])
                stops.extend(typed)
                if len(stops) > MAX_STOP_STRINGS:
                    raise ModelfileError(f"line {line}: more than {MAX_STOP_STRINGS} stop strings")
            else:
                parameters[name.lower()] = typed
            continue
        if instruction == "message":
            role = reader.word()
            if role.lower() not in MESSAGE_ROLES:
                raise ModelfileError(
                    f'line {line}: MESSAGE role must be system, user or assistant, not "{role[:64]}"'
                )
            messages.append({"role": role.lower(), "content": reader.value("MESSAGE", allow_empty=True)})
            continue
        value = reader.value(keyword.upper(), allow_empty=instruction in ("system", "template"))
        if instruction == "from":
            if from_ is None:
                from_ = value
            elif projector is None:  # Ollama's way to give a model its vision projector
                projector = value
            else:
                raise ModelfileError(f"line {line}: a third FROM (a Modelfile has one base model and at most "
                                     "one vision projector)")
        elif instruction == "system":
            system = value
        elif instruction == "template":
            template = value
        else:
            licenses.append(value)
    if from_ is None:
        raise ModelfileError("the Modelfile has no FROM line (FROM <model name, .gguf path or sha256:digest>)")
    return Modelfile(
        from_=from_,
        projector=projector,
        parameters=parameters,
        system=system,
        template=template,
        messages=messages,
        license="\n\n".join(licenses) if licenses else None,
        adapters=adapters,
    )


def render_modelfile(manifest: Manifest) -> str:
    """The Modelfile that recreates ``manifest`` (``lokal show --modelfile``): parsing it gives
    back the same system prompt, template, parameters, messages and license."""
    short = manifest.digest.split(":", 1)[1][:12]
    lines = [
        f"# Modelfile of {manifest.name} ({short}), generated by lokal show",
        "# To build a new model on top of it, replace the FROM line with:",
        f"# FROM {manifest.name}",
        "",
        f"FROM {manifest.digest}",
    ]
    if manifest.projector is not None:
        lines.append(f"FROM {manifest.projector}")
    if manifest.template is not None:
        lines.append(f"TEMPLATE {quote(manifest.template)}")
    if manifest.system is not None:
        lines.append(f"SYSTEM {quote(manifest.system)}")
    for name, value in manifest.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {_parameter_text(item)}")
    for message in manifest.messages:
        lines.append(f"MESSAGE {message.get('role', 'user')} {quote(message.get('content', ''))}")
    if manifest.license:
        lines.append(f"LICENSE {quote(manifest.license)}")
    for adapter in manifest.adapters:
        lines.append(f"ADAPTER {adapter.digest}" + (f" {json.dumps(adapter.scale)}" if adapter.scale != 1.0 else ""))
    return "\n".join(lines) + "\n"


def quote(value: str) -> str:
    """``value`` as a Modelfile value that parses back to exactly ``value``."""
    if '"' not in value and "\\" not in value and "\n" not in value:
        return f'"{value}"'
    if '"""' not in value and not value.endswith('"'):
        return f'"""{value}"""'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return quote(str(value))


class _Reader:
    """A cursor over the Modelfile text that tracks its line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _advance(self, to: int) -> None:
        self.line += self.text.count("\n", self.pos, to)
        self.pos = to

    def skip_blank_and_comments(self) -> None:
        while not self.at_end():
            char = self.text[self.pos]
            if char.isspace():
                self._advance(self.pos + 1)
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self._advance(len(self.text) if end < 0 else end)
            else:
                return

    def _skip_inline_space(self) -> None:
        while not self.at_end() and self.text[self.pos] in " \t":
            self.pos += 1

    def word(self) -> str:
        """The next whitespace-free word on this line ("" at the end of the line)."""
        self._skip_inline_space()
        match = _WORD.match(self.text, self.pos)
        if match is None:
            return ""
        end = match.end()
        newline = self.text.find("\n", self.pos, end)
        if newline >= 0:
            end = newline
        word = self.text[self.pos : end]
        self.pos = end
        return word

    def value(self, what: str, allow_empty: bool = False) -> str:
        """The value that ends an instruction: quoted, triple-quoted, or the rest of the line."""
        self._skip_inline_space()
        start_line = self.line
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise ModelfileError(f'line {start_line}: {what}: unterminated """ (no closing """)')
            value = self.text[self.pos + 3 : end]
            self._advance(end + 3)
        elif self.text.startswith('"', self.pos):
            value = self._quoted(what, start_line)
        else:
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            value = self.text[self.pos : end].strip()
            self.pos = end
            if not value and not allow_empty:
                raise ModelfileError(f"line {start_line}: {what} needs a value")
            return value
        self._skip_inline_space()
        if not self.at_end() and self.text[self.pos] != "\n":
            raise ModelfileError(f"line {self.line}: {what}: unexpected text after the closing quote")
        if not value and not allow_empty:
            raise ModelfileError(f"line {start_line}: {what} needs a value")
        return value

    def _quoted(self, what: str, start_line: int) -> str:
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text):
            char = self.text[i]
            if char == "\\" and i + 1 < len(self.text) and self.text[i + 1] in '"\\':
                out.append(self.text[i + 1])
                i += 2
            elif char == '"':
                self._advance(i + 1)
                return "".join(out)
            else:
                out.append(char)
                i += 1
        raise ModelfileError(f'line {start_line}: {what}: unterminated " (no closing quote)')
