"""API keys in PostgreSQL: small typed functions over a connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from energy_engine import sql
from energy_engine.auth.keys import NewKey, Scope
from energy_engine.db import Connection

queries = sql.load("energy_engine.auth")


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as `keys list` shows it (never its text or hash)."""

    id: str
    name: str
    scopes: tuple[Scope, ...]
    device_id: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ActiveKeyRow:
    """A key not revoked, as the key cache needs it."""

    id: str
    sha256: bytes
    scopes: frozenset[Scope]
    device_id: str | None


def _args(key: NewKey) -> tuple[object, ...]:
    return (key.id, key.sha256, key.name, [s.value for s in key.scopes], key.device_id)


async def insert_key(conn: Connection, key: NewKey) -> datetime:
    """Store `key` (its hash); returns its creation time."""
    created: datetime = await conn.fetchval(queries.insert_key, *_args(key))
    return created


async def insert_first_key(conn: Connection, key: NewKey) -> bool:
    """Store `key` only if the table holds no key at all; whether it was stored."""
    async with conn.transaction():
        created = await conn.fetchval(queries.insert_first_key, *_args(key))
    return created is not None


async def list_keys(conn: Connection) -> list[StoredKey]:
    """Every key, revoked ones too, oldest first."""
    rows = await conn.fetch(queries.list_keys)
    return [
        StoredKey(
            row["id"],
            row["name"],
            tuple(Scope(s) for s in row["scopes"]),
            row["device_id"],
            row["created_at"],
            row["revoked_at"],
        )
        for row in rows
    ]


async def revoke_key(conn: Connection, key_id: str) -> datetime | None:
    """Revoke a key (again: no change); its revocation time, None for an unknown id."""
    revoked: datetime | None = await conn.fetchval(queries.revoke_key, key_id)
    return revoked


def _active(row: asyncpg.Record) -> ActiveKeyRow:
    return ActiveKeyRow(
        row["id"], row["key_sha256"], frozenset(Scope(s) for s in row["scopes"]), row["device_id"]
    )


async def active_keys(conn: Connection) -> list[ActiveKeyRow]:
    """Every key not revoked."""
    return [_active(row) for row in await conn.fetch(queries.active_keys)]


async def active_key(conn: Connection, sha256: bytes) -> ActiveKeyRow | None:
    """The key not revoked whose hash is `sha256`, if any."""
    row = await conn.fetchrow(queries.active_key, sha256)
    return None if row is None else _active(row)


async def keys_fingerprint(conn: Connection) -> tuple[int, int]:
    """A value that changes whenever a key is created or revoked."""
    row = await conn.fetchrow(queries.keys_fingerprint)
    assert row is not None
    return int(row["total"]), int(row["digest"])
