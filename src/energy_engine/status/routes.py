"""GET /v1/vehicles/{vehicleId}/status and /v1/meters/{meterId}/status."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from energy_engine.deps import PoolDep, SettingsDep
from energy_engine.energy import Reading, power_kw
from energy_engine.errors import ErrorBody, not_found
from energy_engine.settings import Settings
from energy_engine.status import store
from energy_engine.status.models import MeterStatus, VehicleStatus

router = APIRouter(tags=["status"], responses={404: {"model": ErrorBody}})


def _sensor(value: float) -> float:
    """A sensor value as sent: history stores these as `real` (migration 0002) and hands the
    hot row the stored value, so 230.9 arrives here as 230.89999389648438. Seven significant
    digits is what a `real` holds and far more than the sensors resolve."""
    return float(f"{value:.7g}")


def _online(read_at: datetime, settings: Settings) -> bool:
    return datetime.now(UTC) - read_at <= settings.online_within


def _power(
    prev_at: datetime | None, prev_kwh: float | None, at: datetime, kwh: float, settings: Settings
) -> float | None:
    prev = Reading(prev_at, prev_kwh) if prev_at is not None and prev_kwh is not None else None
    power = power_kw(prev, Reading(at, kwh), settings.energy_semantics, settings.max_power_kw)
    return None if power is None else round(power, 3)


@router.get("/v1/vehicles/{vehicle_id}/status")
async def vehicle_status(vehicle_id: str, pool: PoolDep, settings: SettingsDep) -> VehicleStatus:
    """Latest state of a vehicle: SoC, energy, temperature, power, charging, online, meter."""
    async with pool.acquire() as conn:
        row = await store.vehicle_state(conn, vehicle_id)
    if row is None:
        raise not_found("vehicle", vehicle_id)
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
        soc=_sensor(row["soc"]),
        kwh_delivered_dc=row["kwh_delivered_dc"],
        battery_temp=_sensor(row["battery_temp"]),
        timestamp=row["read_at"],
        received_at=row["received_at"],
        power_kw=power,
        # Charging: DC energy rose over the latest interval (plausibly) and the reading is fresh.
        charging=online and power is not None and power > 0,
        online=online,
        meter_id=row["meter_id"],
    )


@router.get("/v1/meters/{meter_id}/status")
async def meter_status(meter_id: str, pool: PoolDep, settings: SettingsDep) -> MeterStatus:
    """Latest state of a meter: energy, voltage, power, online, vehicle."""
    async with pool.acquire() as conn:
        row = await store.meter_state(conn, meter_id)
    if row is None:
        raise not_found("meter", meter_id)
    return MeterStatus(
        meter_id=row["meter_id"],
        kwh_consumed_ac=row["kwh_consumed_ac"],
        voltage=_sensor(row["voltage"]),
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
