"""What an API key is: its text, its hash, its scopes. Pure functions, no I/O.

A key reads `ee_<id>_<secret>`: the `ee_` prefix makes a leaked key recognisable (secret
scanners, grep), `<id>` (12 hex digits) names the key in logs and in `keys list|revoke`
without revealing it, and `<secret>` is 32 random bytes (256 bits), base64url.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "ee_"
_KEY = re.compile(rb"ee_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


class Scope(StrEnum):
    """What a key may do; `admin` may do everything."""

    INGEST = "ingest"  # POST readings
    READ = "read"  # GET status, analytics, assignments
    METRICS = "metrics"  # GET /metrics
    ADMIN = "admin"  # everything, including writing assignments


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the only moment its text exists outside the client."""

    id: str
    text: str
    sha256: bytes
    name: str
    scopes: tuple[Scope, ...]
    device_id: str | None


def generate(scopes: tuple[Scope, ...], *, name: str = "", device_id: str | None = None) -> NewKey:
    """A new random key with `scopes`, optionally bound to one device."""
    key_id = secrets.token_hex(6)
    text = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, text, digest(text.encode()), name, scopes, device_id)


def digest(key: bytes) -> bytes:
    """The SHA-256 the database stores and the key cache is keyed by."""
    return hashlib.sha256(key).digest()


def well_formed(key: bytes) -> bool:
    """Whether `key` has the shape of a key (says nothing of whether it exists)."""
    return _KEY.fullmatch(key) is not None


def key_id(key: str) -> str | None:
    """The id inside a key's text, safe to log; None when it is not a key."""
    match = _KEY.fullmatch(key.encode())
    return match[1].decode() if match else None
