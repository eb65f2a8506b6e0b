"""The analytics SQL computes exactly what `energy_engine.energy` defines, on random streams."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energy_engine.energy import Reading, window_energy
from energy_engine.ingest import store as ingest
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.settings import EnergySemantics, Settings
from tests import window_sql as windows
from tests.conftest import cloned_database

T0 = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
_ids = itertools.count()


@pytest.fixture(scope="module")
def sql_database(postgres_url: str, template_database: str) -> Iterator[str]:
    """One database for all examples; each example uses devices of its own."""
    with cloned_database(postgres_url, template_database, "energy_prop") as url:
        yield url


streams = st.lists(
    st.tuples(
        st.integers(0, 300),  # minute
        st.one_of(st.floats(0, 5_000, allow_nan=False), st.integers(0, 20).map(float)),
    ),
    max_size=40,
)


async def _check(
    url: str,
    arrivals: list[tuple[int, float]],
    batches: int,
    start: datetime,
    end: datetime,
    config: Settings,
) -> None:
    n = next(_ids)
    vehicle_id, meter_id = f"pv-{n}", f"pm-{n}"
    readings = [Reading(T0 + timedelta(minutes=m), kwh) for m, kwh in arrivals]
    conn = await asyncpg.connect(url, server_settings={"timezone": "UTC"})
    try:
        # Arrival order matters for duplicates: send the stream as consecutive batches.
        size = max(1, -(-len(readings) // batches))
        for i in range(0, len(readings), size):
            chunk = readings[i : i + size]
            await ingest.insert_vehicle_readings(
                conn,
                [
                    VehicleReading(
                        vehicle_id=vehicle_id,
                        soc=50,
                        kwh_delivered_dc=r.kwh,
                        battery_temp=20,
                        timestamp=r.at,
                    )
                    for r in chunk
                ],
            )
            await ingest.insert_meter_readings(
                conn,
                [
                    MeterReading(
                        meter_id=meter_id, kwh_consumed_ac=r.kwh, voltage=230, timestamp=r.at
                    )
                    for r in chunk
                ],
            )
        await conn.execute(
            "INSERT INTO assignments (vehicle_id, meter_id, valid_from) VALUES ($1, $2, $3)",
            vehicle_id,
            meter_id,
            T0 - timedelta(days=1),
        )
        dc = await windows.vehicle_window(conn, vehicle_id, start, end, config)
        ac = await windows.meter_windows(conn, vehicle_id, start, end, config)
    finally:
        await conn.close()
    want = window_energy(
        readings,
        start,
        end,
        semantics=config.energy_semantics,
        max_power_kw=config.max_power_kw,
        baseline_lookback=config.baseline_lookback,
    )
    assert (dc.readings, dc.skipped) == (want.readings, want.skipped)
    assert dc.kwh == pytest.approx(want.kwh, rel=1e-9, abs=1e-9)
    assert len(ac) == 1
    assert (ac[0].readings, ac[0].skipped) == (want.readings, want.skipped)
    assert ac[0].kwh == pytest.approx(want.kwh, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    arrivals=streams,
    batches=st.integers(1, 3),
    start_minute=st.integers(-20, 300),
    length=st.integers(1, 400),
    semantics=st.sampled_from(EnergySemantics),
    max_power_kw=st.sampled_from([1.0, 500.0, 1e9]),
    lookback_minutes=st.sampled_from([5, 10_000]),
)
def test_sql_window_energy_equals_the_pure_module(
    sql_database: str,
    arrivals: list[tuple[int, float]],
    batches: int,
    start_minute: int,
    length: int,
    semantics: EnergySemantics,
    max_power_kw: float,
    lookback_minutes: int,
) -> None:
    start = T0 + timedelta(minutes=start_minute)
    config = Settings(
        _env_file=None,
        energy_semantics=semantics,
        max_power_kw=max_power_kw,
        baseline_lookback=timedelta(minutes=lookback_minutes),
    )
    asyncio.run(
        _check(sql_database, arrivals, batches, start, start + timedelta(minutes=length), config)
    )
