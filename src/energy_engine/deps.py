"""Request dependencies as `Annotated` aliases, resolved from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from energy_engine.db import Pool
from energy_engine.errors import not_found
from energy_engine.settings import Settings


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a hop that cost
# more than the dependency itself on the analytics path (py-spy: run_in_threadpool).
async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_pool(request: Request) -> Pool:
    """The pool opened by the app's lifespan."""
    pool: Pool = request.app.state.pool
    return pool


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[Pool, Depends(get_pool)]


KNOWN_VEHICLE = """
SELECT EXISTS (SELECT FROM vehicle_state WHERE vehicle_id = $1)
    OR EXISTS (SELECT FROM assignments WHERE vehicle_id = $1)
"""


async def known_vehicle(vehicle_id: str, pool: PoolDep) -> str:
    """The path's vehicle id, or 404 when the vehicle never reported nor was assigned."""
    async with pool.acquire() as conn:
        known = await conn.fetchval(KNOWN_VEHICLE, vehicle_id)
    if not known:
        raise not_found("vehicle", vehicle_id)
    return vehicle_id


KnownVehicle = Annotated[str, Depends(known_vehicle)]
