"""Each worker's copy of the valid keys, so that checking a request's key is a hash and a
dict lookup, never a database round trip.

The copy is reloaded every `auth_refresh_every` (2 s): a key revoked anywhere is refused by
every worker within that time. A key the copy does not know may be one created since the last
reload, so it is looked up once in the database; an attacker sending random keys must not turn
that into a database query each, hence a negative cache (a hash found missing is not asked
about again until the next reload) and a small budget of lookups a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from energy_engine.auth import store
from energy_engine.auth.keys import Scope
from energy_engine.auth.limits import TokenBucket, limit_for
from energy_engine.db import Pool
from energy_engine.errors import log_outage, outage
from energy_engine.settings import RateLimit, Settings

log = logging.getLogger(__name__)

# Database lookups of unknown keys a worker makes, per second and at once; past it an unknown
# key is refused without asking (a new key still works from the next reload on).
LOOKUPS = RateLimit(per_second=10, burst=20)
# Hashes remembered as unknown at most; past it the memory starts afresh.
MAX_UNKNOWN = 10_000


@dataclass(slots=True)
class ActiveKey:
    """A valid key as a worker checks it, with its rate-limit bucket."""

    id: str
    scopes: frozenset[Scope]
    device_id: str | None
    bucket: TokenBucket | None
    admin: bool = field(init=False)

    def __post_init__(self) -> None:
        self.admin = Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        """Whether the key may do what `scope` stands for."""
        return self.admin or scope in self.scopes


class KeyCache:
    """The valid keys by hash, reloaded from PostgreSQL by `refresh`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_hash: dict[bytes, ActiveKey] = {}
        self.unknown: dict[bytes, float] = {}  # hash -> until when it is known to be unknown
        self.fingerprint: tuple[int, int] | None = None
        self.lookups = TokenBucket(LOOKUPS, time.monotonic())

    def _active(self, row: store.ActiveKeyRow, previous: ActiveKey | None) -> ActiveKey:
        if previous is not None:  # keeps its bucket: a reload must not reset a limit
            return previous
        limit = limit_for(row.scopes, row.device_id, self.settings)
        bucket = None if limit is None else TokenBucket(limit, time.monotonic())
        return ActiveKey(row.id, row.scopes, row.device_id, bucket)

    async def refresh(self, pool: Pool) -> bool:
        """Reload the keys if any was created or revoked since the last reload; whether
        they were."""
        async with pool.acquire() as conn:
            fingerprint = await store.keys_fingerprint(conn)
            if fingerprint == self.fingerprint:
                return False
            rows = await store.active_keys(conn)
        self.by_hash = {row.sha256: self._active(row, self.by_hash.get(row.sha256)) for row in rows}
        self.fingerprint = fingerprint
        self.unknown = {}
        return True

    async def keep_fresh(self, pool: Pool) -> None:
        """Reload every `auth_refresh_every`, for as long as the app runs."""
        interval = self.settings.auth_refresh_every.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(pool)
            except Exception as exc:  # the keys known keep working; the next round retries
                found = outage(exc)
                if found is None:
                    log.exception("API key refresh failed")
                else:
                    log_outage("API key refresh", found)

    async def lookup(self, sha256: bytes, pool: Pool) -> ActiveKey | None:
        """The valid key whose hash is `sha256` and which `by_hash` does not hold (yet): asked
        of the database at most once per reload, and within the lookup budget."""
        now = time.monotonic()
        if self.unknown.get(sha256, 0.0) > now or self.lookups.take(now) > 0.0:
            return None
        try:
            async with pool.acquire() as conn:
                row = await store.active_key(conn, sha256)
        except Exception as exc:
            found_outage = outage(exc)
            if found_outage is None:
                raise
            log_outage("API key lookup", found_outage)
            return None
        if row is None:
            if len(self.unknown) >= MAX_UNKNOWN:
                self.unknown = {}
            self.unknown[sha256] = now + self.settings.auth_refresh_every.total_seconds()
            return None
        active = self._active(row, None)
        self.by_hash[sha256] = active
        return active
