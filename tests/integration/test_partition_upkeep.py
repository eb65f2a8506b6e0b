"""The partition upkeep task of a running engine: it puts back the days ahead, and a round that
fails is logged and retried by the next one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest

from energy_engine.app import create_app
from tests.conftest import MakeSettings

# The newest partition of each history table: the last day start-up created ahead.
NEWEST = """
SELECT c.relname
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
ORDER BY pg_get_expr(c.relpartbound, c.oid) DESC
LIMIT 1
"""
PARTITIONS = """
SELECT count(*) FROM pg_inherits
WHERE inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
"""


async def _until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


async def test_upkeep_puts_back_missing_days_and_retries_after_a_failed_round(
    make_settings: MakeSettings, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(partition_upkeep_every=timedelta(milliseconds=20))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        complete = await conn.fetchval(PARTITIONS)
        newest = [await conn.fetchval(NEWEST, t) for t in ("meter_readings", "vehicle_readings")]

        async def restored() -> bool:
            return bool(await conn.fetchval(PARTITIONS) == complete)

        def failed_rounds() -> int:
            return sum(
                r.getMessage() == "maintenance failed" and r.exc_info is not None
                for r in caplog.records
            )

        async def failed_again(than: int) -> None:
            async def more() -> bool:
                return failed_rounds() > than

            await _until(more, "a failed round logs its traceback")

        # Rounds that fail: the function they call is missing (as after a broken migration).
        await conn.execute("ALTER FUNCTION ensure_reading_partitions RENAME TO hidden_partitions")
        await failed_again(0)  # no round still running from before can create a partition now
        await conn.execute(f"DROP TABLE {newest[0]}, {newest[1]}")
        await failed_again(failed_rounds())
        assert await conn.fetchval(PARTITIONS) == complete - 2

        # The next rounds retry and create the missing days again.
        await conn.execute("ALTER FUNCTION hidden_partitions RENAME TO ensure_reading_partitions")
        await _until(restored, "the upkeep task creates the missing partitions")
        assert [
            await conn.fetchval(NEWEST, t) for t in ("meter_readings", "vehicle_readings")
        ] == newest
