"""Assignment writes and reads. Opening one closes the vehicle's and the meter's open ones."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from energy_engine.db import Connection

# Serialises all assignment changes. Per-device locks are not enough: opening V1->M closes
# whatever vehicle held M, so a change touches devices the request does not name. Assignments
# change when a vehicle plugs in (a few a second fleet-wide), far below what one lock serves.
LOCK_ASSIGNMENTS = "SELECT pg_advisory_xact_lock(hashtext('energy_engine.assignments'))"

# The newest boundary already recorded for either device: a new assignment may not start
# before it, or two assignments would overlap in time.
LATEST_BOUNDARY = """
SELECT max(greatest(valid_from, valid_to))
FROM assignments
WHERE vehicle_id = $1 OR meter_id = $2
"""

OPEN_ASSIGNMENT = """
SELECT * FROM assignments WHERE vehicle_id = $1 AND valid_to IS NULL
"""

CLOSE_OPEN = """
UPDATE assignments SET valid_to = $3
WHERE (vehicle_id = $1 OR meter_id = $2) AND valid_to IS NULL
"""

INSERT_ASSIGNMENT = """
INSERT INTO assignments (vehicle_id, meter_id, valid_from)
VALUES ($1, $2, $3)
RETURNING *
"""

VEHICLE_ASSIGNMENTS = """
SELECT * FROM assignments WHERE vehicle_id = $1 ORDER BY valid_from, assignment_id
"""


class Conflict(Exception):
    """The assignment would start before an existing boundary of the vehicle or meter."""

    def __init__(self, boundary: datetime) -> None:
        super().__init__(f"an assignment boundary exists at {boundary.isoformat()}")
        self.boundary = boundary


async def assign(
    conn: Connection, vehicle_id: str, meter_id: str, valid_from: datetime | None
) -> tuple[asyncpg.Record, bool]:
    """Open an assignment (from now when `valid_from` is None), closing the ones it replaces.

    Returns the assignment and whether it is new.
    """
    async with conn.transaction():
        await conn.execute(LOCK_ASSIGNMENTS)
        if valid_from is None:
            # Read the clock only once the lock is held, so "now" is never before a boundary
            # that a concurrent request has just committed.
            valid_from = await conn.fetchval("SELECT clock_timestamp()")
            assert valid_from is not None
        current = await conn.fetchrow(OPEN_ASSIGNMENT, vehicle_id)
        if current is not None and current["meter_id"] == meter_id:
            return current, False  # already assigned: the request is a no-op
        boundary = await conn.fetchval(LATEST_BOUNDARY, vehicle_id, meter_id)
        if boundary is not None and valid_from < boundary:
            raise Conflict(boundary)
        await conn.execute(CLOSE_OPEN, vehicle_id, meter_id, valid_from)
        created = await conn.fetchrow(INSERT_ASSIGNMENT, vehicle_id, meter_id, valid_from)
        assert created is not None
        return created, True


async def vehicle_assignments(conn: Connection, vehicle_id: str) -> list[asyncpg.Record]:
    """Every assignment of a vehicle, oldest first."""
    return await conn.fetch(VEHICLE_ASSIGNMENTS, vehicle_id)
