"""Request dependencies as `Annotated` aliases, resolved from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from energy_engine.bounds import DEVICE_ID_PATTERN, DEVICE_ID_RULE, repeated_keys
from energy_engine.db import Pool
from energy_engine.errors import ApiError, ErrorItem, not_found
from energy_engine.settings import Settings


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a hop that costs
# more than the dependency itself.
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


async def get_read_pool(request: Request) -> Pool:
    """The pool of the read routes: DATABASE_READ_URL's (a replica), else the request pool."""
    pool: Pool = request.app.state.read_pool
    return pool


ReadPoolDep = Annotated[Pool, Depends(get_read_pool)]

# Device ids in paths follow the readings' rule, so an odd id (a NUL, 10 kB) is a 422 here.
VehicleIdPath = Annotated[
    str, Path(alias="vehicleId", pattern=DEVICE_ID_PATTERN, description=DEVICE_ID_RULE)
]
MeterIdPath = Annotated[
    str, Path(alias="meterId", pattern=DEVICE_ID_PATTERN, description=DEVICE_ID_RULE)
]


KNOWN_VEHICLE = """
SELECT EXISTS (SELECT FROM vehicle_state WHERE vehicle_id = $1)
    OR EXISTS (SELECT FROM assignments WHERE vehicle_id = $1)
"""


async def known_vehicle(vehicle_id: VehicleIdPath, pool: PoolDep) -> str:
    """The path's vehicle id, or 404 when the vehicle never reported nor was assigned."""
    async with pool.acquire() as conn:
        known = await conn.fetchval(KNOWN_VEHICLE, vehicle_id)
    if not known:
        raise not_found("vehicle", vehicle_id)
    return vehicle_id


async def known_read_vehicle(vehicle_id: VehicleIdPath, pool: ReadPoolDep) -> str:
    """`known_vehicle` as the read routes' database (a replica) knows it."""
    return await known_vehicle(vehicle_id, pool)


KnownVehicle = Annotated[str, Depends(known_vehicle)]
KnownReadVehicle = Annotated[str, Depends(known_read_vehicle)]


async def unique_keys(request: Request) -> None:
    """422 when a JSON body repeats a key: validation would silently keep the last one."""
    try:
        repeated = list(dict.fromkeys(key for _, key in repeated_keys(await request.body())))
    except ValueError:
        return  # not JSON at all: body validation says so
    if repeated:
        raise ApiError(
            422,
            "invalid_request",
            f"{repeated[0]}: the key appears twice",
            [ErrorItem(field=key, reason="the key appears twice") for key in repeated],
        )


UniqueKeys = Depends(unique_keys)
