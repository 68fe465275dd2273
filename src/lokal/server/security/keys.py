"""API keys: only their SHA-256 digests are stored, in ``$LOKAL_HOME/keys.json`` (mode 0600).

A key is ``lokal-`` followed by 32 random bytes (256 bits, URL-safe base64), so a fast hash is
enough: a slow KDF (argon2, scrypt) protects low-entropy passwords from guessing, and nobody can
guess 256 random bits. The digest is compared in constant time. The file is re-read when its
mtime changes, so ``lokal keys revoke`` takes effect on a running server at its next request.

A keys file that exists but cannot be read as lokal writes it (not UTF-8, not JSON, empty, entries
of the wrong shape, unreadable) fails closed: :class:`KeyFileError` names the file, the CLI prints
that one line, and the server answers 503 on every route that needs a key (never "no keys, auth
off"). Only a missing file, or ``{"keys": []}`` once every key is revoked, means auth is off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

KEY_PREFIX = "lokal-"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class KeyStoreError(ValueError):
    """A key operation the user asked for cannot be done (bad or duplicate name, unknown key)."""


class KeyFileError(KeyStoreError):
    """``keys.json`` exists but is not a keys file lokal can trust: every keyed route is refused."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}; fix it, or delete it to turn API keys off")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class StoredKey:
    """One key as stored: never the key itself."""

    name: str
    sha256: str
    prefix: str  # the first characters of the key, to tell keys apart in `lokal keys list`
    created: str
    rpm: int | None = None  # this key's requests per minute (None: LOKAL_RATE_RPM)
    tpm: int | None = None  # this key's tokens per minute (None: LOKAL_RATE_TPM)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The API keys of one ``$LOKAL_HOME``."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "keys.json"
        self._cache: tuple[float, int, dict[str, StoredKey]] | None = None

    def keys(self) -> dict[str, StoredKey]:
        """Stored keys by name (cached until the file changes). Raises :class:`KeyFileError` when
        the file exists but is not a valid keys file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache = None
            return {}
        except OSError as e:
            raise KeyFileError(self.path, f"cannot read it ({e.strerror or e})") from None
        if self._cache is not None and self._cache[:2] == (st.st_mtime, st.st_size):
            return self._cache[2]
        keys = _parse(self.path)
        self._cache = (st.st_mtime, st.st_size, keys)
        return keys

    def enabled(self) -> bool:
        """Auth is on exactly when at least one key exists, or when the keys file cannot be read
        (fail closed: :meth:`keys` then says why)."""
        try:
            return bool(self.keys())
        except KeyFileError:
            return True

    def problem(self) -> str | None:
        """Why the keys file cannot be used (one line naming it), or None."""
        try:
            self.keys()
        except KeyFileError as e:
            return str(e)
        return None

    def verify(self, key: str) -> str | None:
        """The name of the key, or None if it is not a valid key."""
        if not key.startswith(KEY_PREFIX):
            self.keys()  # a broken keys file is reported whatever the key
            return None
        wanted = digest(key)
        found = None
        for stored in self.keys().values():  # compare against all: timing says nothing about which
            if hmac.compare_digest(stored.sha256, wanted):
                found = stored.name
        return found

    def create(self, name: str, rpm: int | None = None, tpm: int | None = None) -> str:
        """Make a key called name and return it: the only time it is ever shown. rpm and tpm
        replace the server's rate limits for this key (0: unlimited)."""
        if not NAME_PATTERN.match(name):
            raise KeyStoreError(f"invalid key name {name!r}: letters, digits, '_', '.', '@', '-', at most 64")
        keys = dict(self.keys())
        if name in keys:
            raise KeyStoreError(f"a key named {name!r} exists; revoke it first")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        if (rpm is not None and rpm < 0) or (tpm is not None and tpm < 0):
            raise KeyStoreError("rate limits must be 0 (unlimited) or more")
        keys[name] = StoredKey(name=name, sha256=digest(key), prefix=key[: len(KEY_PREFIX) + 4], created=created,
                               rpm=rpm, tpm=tpm)
        self._write(keys)
        return key

    def revoke(self, name: str) -> None:
        keys = dict(self.keys())
        if keys.pop(name, None) is None:
            raise KeyStoreError(f"no key named {name!r}")
        self._write(keys)

    def _write(self, keys: dict[str, StoredKey]) -> None:
        """Atomic: a temp file (0600) in the same directory, fsync, rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=2).encode()
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)  # created 0600
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._cache = None


_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "sha256": (str,), "prefix": (str,), "created": (str,), "rpm": (int, type(None)),
    "tpm": (int, type(None)),
}
_REQUIRED = ("name", "sha256", "prefix", "created")


def _parse(path: Path) -> dict[str, StoredKey]:
    """The keys in ``path``, which must be ``{"keys": [StoredKey, ...]}`` as :meth:`KeyStore._write`
    writes it; anything else is a :class:`KeyFileError` (an empty file too: it is not "no keys")."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(path, f"cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KeyFileError(path, f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    if not text.strip():
        raise KeyFileError(path, "the file is empty (a keys file with no keys is {\"keys\": []})")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise KeyFileError(path, f"not valid JSON ({e})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(path, 'expected a JSON object {"keys": [...]}')
    keys: dict[str, StoredKey] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in _REQUIRED) or any(
            k not in _FIELDS or not isinstance(v, _FIELDS[k]) or isinstance(v, bool) for k, v in entry.items()
        ):
            raise KeyFileError(path, f"key #{n + 1} is not an object with {', '.join(_REQUIRED)} (text), rpm, tpm")
        key = StoredKey(**entry)
        if key.name in keys:
            raise KeyFileError(path, f"two keys are named {key.name!r}")
        keys[key.name] = key
    return keys
