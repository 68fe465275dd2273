"""`lokal keys create | list | revoke`: API keys of this ``$LOKAL_HOME`` (only hashes are stored)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lokal.config import Settings
from lokal.server.security.keys import KeyStore, KeyStoreError

keys_app = typer.Typer(help="API keys: once one exists, every API request needs Authorization: Bearer <key>.",
                       no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _store() -> KeyStore:
    return KeyStore(Settings().home)


def _fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as one red line (a JSON error's own newlines folded) and exit 1."""
    message = " ".join(str(exc).split())
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for the key (shown in the audit log)")],
    rpm: Annotated[int | None, typer.Option(help="requests per minute (default LOKAL_RATE_RPM; 0 = no limit)")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute (default LOKAL_RATE_TPM; 0 = no limit)")] = None,
) -> None:
    """Make a key and print it: it is shown this once, and only its hash is kept."""
    try:
        key = _store().create(name, rpm=rpm, tpm=tpm)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    print(key)  # alone on stdout, so that `KEY=$(lokal keys create ci)` works
    err_console.print(f"key [bold]{escape(name)}[/bold] created; store it now, it cannot be shown again",
                      highlight=False)


@keys_app.command("list")
def list_keys() -> None:
    """Names, key prefixes and creation times (never the keys)."""
    try:
        keys = _store().keys()
    except KeyStoreError as exc:  # a corrupt or empty keys.json: one line, never "auth is off"
        raise _fail(exc) from None
    if not keys:
        console.print("no keys: auth is off (every client is allowed)")
        return
    table = Table("NAME", "PREFIX", "CREATED", "RPM", "TPM", box=None, pad_edge=False)

    def limit(value: int | None) -> str:
        return "default" if value is None else str(value or "unlimited")

    for k in keys.values():
        table.add_row(escape(k.name), escape(k.prefix) + "…", k.created, limit(k.rpm), limit(k.tpm))
    console.print(table)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Delete a key; a running server refuses it from its next request."""
    store = _store()
    try:
        store.revoke(name)
        left = len(store.keys())
    except KeyStoreError as exc:
        raise _fail(exc) from None
    console.print(f"revoked {escape(name)}" + ("" if left else "; no keys left: auth is off"))
