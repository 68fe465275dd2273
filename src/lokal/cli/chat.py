"""`lokal run`: stream an answer to the terminal, or chat interactively, without a server: a
client of the runtime in this process."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from lokal.engine.sequence import FinishReason
from lokal.runtime.errors import LokalError
from lokal.runtime.events import Caller, Delta, Failed, Finished
from lokal.runtime.keep_alive import FOREVER
from lokal.runtime.pipeline import output_grammar
from lokal.runtime.request import GenerateRequest, JsonOutput
from lokal.runtime.runtime import Runtime

BYE = {"/bye", "/exit", "/quit"}
HELP = "Type a message. /bye leaves, /clear forgets the conversation, Ctrl-C stops an answer."


def json_output(fmt: str | None, schema_file: Path | None) -> JsonOutput | None:
    """The output constraint of ``--format json`` or ``--schema FILE``, checked now (before the
    model loads); ValueError with one readable line."""
    if fmt is not None and schema_file is not None:
        raise ValueError("give --format json or --schema FILE, not both")
    if fmt is not None:
        if fmt != "json":
            raise ValueError(f'--format {fmt!r}: only "json" is supported (use --schema FILE for a schema)')
        return JsonOutput(None, "--format json")
    if schema_file is None:
        return None
    try:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--schema {schema_file}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--schema {schema_file}: not valid JSON ({exc})") from exc
    if not isinstance(schema, dict):
        raise ValueError(f"--schema {schema_file}: a JSON schema is an object")
    output = JsonOutput(schema, f"--schema {schema_file}")
    try:
        output_grammar(output)
    except LokalError as exc:
        raise ValueError(f"--schema {schema_file}: {exc}") from exc
    return output


class ChatSession:
    """``lokal run``'s client of the runtime: one model kept loaded, the user's options and output
    format, each answer one ``GenerateRequest`` streamed to the terminal."""

    def __init__(self, runtime: Runtime, model: str, options: dict[str, Any], output: JsonOutput | None) -> None:
        self.runtime = runtime
        self.model = model
        self.options = options
        self.output = output

    def load(self) -> None:
        asyncio.run(self.runtime.model(self.model, keep_alive=FOREVER))

    def close(self) -> None:
        asyncio.run(self.runtime.close())

    async def _stream(self, messages: list[dict[str, Any]], console: Console) -> str:
        stream = await self.runtime.generate(GenerateRequest(
            model=self.model, messages=messages, options=self.options, output=self.output, keep_alive=FOREVER,
            caller=Caller("cli"),
        ))
        parts: list[str] = []
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    parts.append(event.text)
                    console.out(event.text, end="", highlight=False)
                elif isinstance(event, Failed):
                    raise event.error
                elif isinstance(event, Finished) and event.reason is FinishReason.LENGTH and self.output:
                    # stderr, so that stdout stays the answer alone (what a script pipes into a JSON parser)
                    print("\nwarning: the answer reached the token limit before the JSON was complete "
                          "(raise --max-tokens)", file=sys.stderr)
        finally:
            await stream.aclose()
        return "".join(parts)

    def answer(self, messages: list[dict[str, Any]], console: Console) -> str | None:
        """Stream one answer; Ctrl-C stops it and returns None (the program goes on)."""
        try:
            text = asyncio.run(self._stream(messages, console))
        except KeyboardInterrupt:
            console.print("\n[dim]stopped[/dim]")
            return None
        console.out("")
        return text


def interactive(session: ChatSession, console: Console, system: str | None) -> None:
    """A chat that keeps its history until /bye, Ctrl-D or Ctrl-C at the prompt."""
    console.print(f"[dim]{HELP}[/dim]")
    base: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    history = list(base)
    while True:
        try:
            line = console.input("[bold green]>>> [/bold green]")
        except (EOFError, KeyboardInterrupt):
            console.out("")
            return
        text = line.strip()
        if not text:
            continue
        if text in BYE:
            return
        if text == "/clear":
            history = list(base)
            console.print("[dim]conversation cleared[/dim]")
            continue
        if text in {"/?", "/help"}:
            console.print(f"[dim]{HELP}[/dim]")
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = session.answer(history, console)
        except LokalError as exc:
            console.print(f"[bold red]error:[/bold red] {escape(str(exc))} (/clear starts over)", highlight=False)
            reply = None
        if reply is None:
            history.pop()  # a stopped answer is not part of the conversation
        else:
            history.append({"role": "assistant", "content": reply})
