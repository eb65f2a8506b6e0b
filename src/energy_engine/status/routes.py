"""GET /v1/vehicles/{vehicleId}/status, /v1/vehicles/status (several), /v1/meters/{meterId}/status
and /v1/fleet/status."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated

from asyncpg import Record
from fastapi import APIRouter, Query

from energy_engine.bounds import DEVICE_ID, WHEN, DeviceId
from energy_engine.db import as_sent
from energy_engine.deps import MeterIdPath, ReadPoolDep, SettingsDep, VehicleIdPath
from energy_engine.energy import Reading, power_kw
from energy_engine.errors import INVALID, UNAVAILABLE, UNKNOWN_DEVICE, invalid_request, not_found
from energy_engine.settings import EnergySemantics, Settings
from energy_engine.status import store
from energy_engine.status.models import (
    FleetStatus,
    MeterStatus,
    StaleDevice,
    VehicleStatus,
    VehicleStatuses,
)

router = APIRouter(tags=["status"], responses={**INVALID, **UNAVAILABLE})


def _online(read_at: datetime, settings: Settings) -> bool:
    return datetime.now(UTC) - read_at <= settings.online_within


def _power(
    prev_at: datetime | None, prev_kwh: float | None, at: datetime, kwh: float, settings: Settings
) -> float | None:
    prev = Reading(prev_at, prev_kwh) if prev_at is not None and prev_kwh is not None else None
    power = power_kw(prev, Reading(at, kwh), settings.energy_semantics, settings.max_power_kw)
    return None if power is None else round(power, 3)


def _vehicle_status(row: Record, settings: Settings) -> VehicleStatus:
    online = _online(row["read_at"], settings)
    power = _power(
        row["prev_read_at"],
        row["prev_kwh_delivered_dc"],
        row["read_at"],
        row["kwh_delivered_dc"],
        settings,
    )
    return VehicleStatus(
        vehicle_id=row["vehicle_id"],
        soc=as_sent(row["soc"]),
        kwh_delivered_dc=row["kwh_delivered_dc"],
        battery_temp=as_sent(row["battery_temp"]),
        timestamp=row["read_at"],
        received_at=row["received_at"],
        power_kw=power,
        # Charging: DC energy rose over the latest interval (plausibly) and the reading is fresh.
        charging=online and power is not None and power > 0,
        online=online,
        meter_id=row["meter_id"],
    )


@router.get("/v1/vehicles/{vehicleId}/status", responses=UNKNOWN_DEVICE)
async def vehicle_status(
    vehicle_id: VehicleIdPath, pool: ReadPoolDep, settings: SettingsDep
) -> VehicleStatus:
    """Latest state of a vehicle: SoC, energy, temperature, power, charging, online, meter."""
    async with pool.acquire() as conn:
        row = await store.vehicle_state(conn, vehicle_id)
    if row is None:
        raise not_found("vehicle", vehicle_id)
    return _vehicle_status(row, settings)


MAX_VEHICLES = 1000


@router.get("/v1/vehicles/status")
async def vehicles_status(
    pool: ReadPoolDep,
    settings: SettingsDep,
    vehicle_ids: Annotated[
        list[DeviceId],
        Query(
            alias="vehicleId",
            min_length=1,
            max_length=MAX_VEHICLES,
            description=f"1 to {MAX_VEHICLES} vehicle ids (repeat the parameter).",
        ),
    ],
) -> VehicleStatuses:
    """The latest state of several vehicles at once (a page of a fleet table), by id; ids
    never seen are left out."""
    async with pool.acquire() as conn:
        rows = await store.vehicle_states(conn, list(dict.fromkeys(vehicle_ids)))
    return VehicleStatuses(vehicles=[_vehicle_status(row, settings) for row in rows])


@router.get("/v1/meters/{meterId}/status", responses=UNKNOWN_DEVICE)
async def meter_status(
    meter_id: MeterIdPath, pool: ReadPoolDep, settings: SettingsDep
) -> MeterStatus:
    """Latest state of a meter: energy, voltage, power, online, vehicle."""
    async with pool.acquire() as conn:
        row = await store.meter_state(conn, meter_id)
    if row is None:
        raise not_found("meter", meter_id)
    return MeterStatus(
        meter_id=row["meter_id"],
        kwh_consumed_ac=row["kwh_consumed_ac"],
        voltage=as_sent(row["voltage"]),
        timestamp=row["read_at"],
        received_at=row["received_at"],
        power_kw=_power(
            row["prev_read_at"],
            row["prev_kwh_consumed_ac"],
            row["read_at"],
            row["kwh_consumed_ac"],
            settings,
        ),
        online=_online(row["read_at"], settings),
        vehicle_id=row["vehicle_id"],
    )


def _cursor(device: StaleDevice) -> str:
    raw = f"{device.last_seen.isoformat()}|{device.kind}|{device.device_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(cursor: str | None) -> tuple[datetime, str, str] | None:
    if cursor is None:
        return None
    try:
        at, kind, device = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 2)
        if kind not in ("meter", "vehicle") or not DEVICE_ID.fullmatch(device):
            raise ValueError(cursor)
        return WHEN.validate_python(at), kind, device
    except ValueError:
        raise invalid_request(
            "cursor",
            "pass nextCursor from the previous page",
            "the cursor is not one this API gave out",
        ) from None


@router.get("/v1/fleet/status")
async def fleet_status(
    pool: ReadPoolDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Stale devices per page.")] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page.")] = None,
) -> FleetStatus:
    """Devices known, online and charging now, average SoC, and the stale devices (paginated),
    from the hot store only."""
    after = _after(cursor)
    now = datetime.now(UTC)
    online_since = now - settings.online_within
    async with pool.acquire() as conn:
        counts = await store.fleet(
            conn,
            online_since,
            settings.energy_semantics is EnergySemantics.INTERVAL,
            settings.max_power_kw,
        )
        rows = await store.stale(conn, online_since, after, limit + 1)
    stale = [
        StaleDevice(kind=r["kind"], device_id=r["device_id"], last_seen=r["read_at"])
        for r in rows[:limit]
    ]
    avg_soc = counts["avg_soc_online"]
    return FleetStatus(
        at=now,
        online_since=online_since,
        vehicles=counts["vehicles"],
        vehicles_online=counts["vehicles_online"],
        vehicles_charging=counts["vehicles_charging"],
        avg_soc_online=None if avg_soc is None else round(avg_soc, 2),
        meters=counts["meters"],
        meters_online=counts["meters_online"],
        stale=stale,
        next_cursor=_cursor(stale[-1]) if len(rows) > limit else None,
    )
