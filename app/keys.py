"""API keys: where they come from, and checking one without leaking timing or the key."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from app.config import private_dir

log = logging.getLogger(__name__)

KEY_FILE = "api_key"


def key_hash(key: str) -> str:
    """The owner id stored with jobs: a SHA-256 of the key, never the key itself."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def read_or_create_secret(path: Path, make) -> tuple[str, bool]:
    """The secret in `path`; on first use `make()` writes one there, mode 0600, created
    exclusively (two processes starting at once agree on one). Returns (secret, created)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if not secret:
            raise SystemExit(f"{path} is empty: delete it to get a new one") from None
        return secret, False
    secret = make()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret, True


def load_or_create_key(data_dir: Path) -> str:
    """The key in DATA_DIR/api_key, created on first start when SVD_API_KEYS is unset."""
    path = data_dir / KEY_FILE
    key, created = read_or_create_secret(path, lambda: "sk-" + secrets.token_urlsafe(32))
    if created:
        log.warning("No SVD_API_KEYS set: generated an API key into %s (read it from there)", path)
    return key


class KeyRing:
    """Holds only hashes of the accepted keys; `owner_of` compares in constant time."""

    def __init__(self, keys: list[str] | tuple[str, ...]):
        if not keys:
            raise ValueError("at least one API key is needed")
        self._hashes = [bytes.fromhex(key_hash(k)) for k in keys]

    def owner_of(self, presented: str | None) -> str | None:
        """The owner id for a presented key, or None. Every stored hash is compared."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        match = False
        for h in self._hashes:
            match |= hmac.compare_digest(digest, h)
        return digest.hex() if match else None


def key_from_header(value: str | None) -> str | None:
    """`Bearer <key>` or the bare key, as the hosted API accepts both."""
    if value is None:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return value or None
