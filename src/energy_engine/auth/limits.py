"""The per-key rate limit: a token bucket per key, in each worker's memory.

Each `serve` worker keeps its own buckets, and the limits are not divided by the number of
workers: a client on one keep-alive connection talks to one worker and gets exactly the
configured limit, where dividing would give it 1/N of it. Clients spreading requests over
many connections may get up to N times the limit; the limit is there to stop one runaway
client from crowding out the others, not to meter usage, so per-worker is enough and costs no
shared state.
"""

from __future__ import annotations

from energy_engine.auth.keys import Scope
from energy_engine.settings import RateLimit, Settings


class TokenBucket:
    """`per_second` tokens a second, holding at most `burst`; a request takes one."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.per_second = limit.per_second
        self.burst = float(limit.burst)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be there."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.per_second


def limit_for(
    scopes: frozenset[Scope], device_id: str | None, settings: Settings
) -> RateLimit | None:
    """The limit of a key: the device limit for a device-bound key, else its most generous
    scope's (None, no limit, beats any)."""
    if device_id is not None:
        return settings.rate_limit_device
    by_scope = {
        Scope.INGEST: settings.rate_limit_ingest,
        Scope.READ: settings.rate_limit_read,
        Scope.METRICS: settings.rate_limit_metrics,
        Scope.ADMIN: settings.rate_limit_admin,
    }
    limits = [by_scope[scope] for scope in scopes]
    if any(limit is None for limit in limits):
        return None
    return max((limit for limit in limits if limit is not None), default=None)
