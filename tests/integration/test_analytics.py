"""GET /v1/analytics/performance/{vehicleId}: energy, efficiency, health over a window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ClientWith
from tests.readings import iso, meter, minute_ago, vehicle

T0 = minute_ago(600)  # ten hours ago: inside the default 24 h window and the accepted age


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def _charge(
    client: httpx.AsyncClient,
    *,
    vehicle_id: str = "V-1",
    meter_id: str | None = "M-1",
    minutes: int = 60,
    ac_per_minute: float = 1.0,
    dc_per_minute: float = 0.9,
    start: float = 0,
) -> None:
    """A vehicle charging for `minutes` from `meter_id`, readings every minute from T0+start."""
    if meter_id is not None:
        await client.post(
            "/v1/ingest/meter",
            json=[
                meter(meter_id, at(start + m), 500 + m * ac_per_minute) for m in range(minutes + 1)
            ],
        )
    temps = [20.0 + (m % 10) for m in range(minutes + 1)]
    await client.post(
        "/v1/ingest/vehicle",
        json=[
            vehicle(
                vehicle_id, at(start + m), 40 + m * dc_per_minute, soc=10 + m / 2, temp=temps[m]
            )
            for m in range(minutes + 1)
        ],
    )


async def _assign(
    client: httpx.AsyncClient, vehicle_id: str, meter_id: str, minutes: float
) -> None:
    response = await client.post(
        "/v1/assignments",
        json={"vehicleId": vehicle_id, "meterId": meter_id, "validFrom": iso(at(minutes))},
    )
    assert response.status_code == 201


async def _report(
    client: httpx.AsyncClient, vehicle_id: str = "V-1", start: float = -30, end: float = 90
) -> dict[str, Any]:
    response = await client.get(
        f"/v1/analytics/performance/{vehicle_id}",
        params={"from": iso(at(start)), "to": iso(at(end))},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_healthy_charge(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client)
    report = await _report(client)
    assert report["vehicleId"] == "V-1"
    assert report["from"] == iso(at(-30))
    assert report["to"] == iso(at(90))
    assert report["acConsumedKwh"] == pytest.approx(60.0)
    assert report["dcDeliveredKwh"] == pytest.approx(54.0)
    assert report["lossKwh"] == pytest.approx(6.0)
    assert report["efficiency"] == pytest.approx(0.9)
    assert report["avgBatteryTemp"] == pytest.approx(
        sum(20 + m % 10 for m in range(61)) / 61, abs=0.01
    )
    assert report["readings"] == {"vehicle": 61, "meter": 61}
    assert report["meterIds"] == ["M-1"]
    assert report["health"] == "healthy"
    assert report["skippedIntervals"] == {"vehicle": 0, "meter": 0}


async def test_baseline_before_the_window_counts_the_first_increment(
    client: httpx.AsyncClient,
) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client)
    # Window starts half-way: the reading at minute 30 is the baseline, 30 increments remain.
    report = await _report(client, start=30.5)
    assert report["acConsumedKwh"] == pytest.approx(30.0)
    assert report["dcDeliveredKwh"] == pytest.approx(27.0)
    assert report["readings"] == {"vehicle": 30, "meter": 30}


async def test_window_end_is_exclusive(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client)
    report = await _report(client, start=-1, end=10)
    assert report["readings"] == {"vehicle": 10, "meter": 10}
    assert report["acConsumedKwh"] == pytest.approx(9.0)


async def test_counter_reset_counts_the_new_value(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    registers = [100.0, 101.0, 102.0, 0.5, 1.5]  # the meter was reset between 2 and 3
    await client.post(
        "/v1/ingest/meter", json=[meter("M-1", at(m), kwh) for m, kwh in enumerate(registers)]
    )
    await client.post(
        "/v1/ingest/vehicle", json=[vehicle("V-1", at(m), 10 + m * 0.8) for m in range(5)]
    )
    report = await _report(client)
    assert report["acConsumedKwh"] == pytest.approx(1 + 1 + 0.5 + 1)
    assert report["dcDeliveredKwh"] == pytest.approx(3.2)
    assert report["skippedIntervals"] == {"vehicle": 0, "meter": 0}


async def test_impossible_jump_is_skipped_and_reported(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    # 10 -> 5,010 kWh in one minute would need 300 MW: a swapped meter, not energy.
    registers = [10.0, 11.0, 5011.0, 5012.0]
    await client.post(
        "/v1/ingest/meter", json=[meter("M-1", at(m), kwh) for m, kwh in enumerate(registers)]
    )
    await client.post(
        "/v1/ingest/vehicle", json=[vehicle("V-1", at(m), 10 + m * 0.9) for m in range(4)]
    )
    report = await _report(client)
    assert report["acConsumedKwh"] == pytest.approx(2.0)
    assert report["skippedIntervals"] == {"vehicle": 0, "meter": 1}


async def test_assignment_change_inside_the_window_uses_each_meter_for_its_part(
    client: httpx.AsyncClient,
) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _assign(client, "V-1", "M-2", 30)
    # M-1 keeps running after the vehicle left it (another car): that must not count.
    await client.post(
        "/v1/ingest/meter", json=[meter("M-1", at(m), 100 + m * 1.0) for m in range(61)]
    )
    # M-2 has a reading before the switch, the baseline of its part.
    await client.post(
        "/v1/ingest/meter", json=[meter("M-2", at(m), 900 + m * 2.0) for m in range(25, 61)]
    )
    await client.post(
        "/v1/ingest/vehicle", json=[vehicle("V-1", at(m), m * 0.9) for m in range(61)]
    )
    report = await _report(client)
    # M-1: increments at minutes 1..29 (29 kWh). M-2: increments at 30..60 (31 x 2 kWh).
    assert report["acConsumedKwh"] == pytest.approx(29 + 62)
    assert report["meterIds"] == ["M-1", "M-2"]
    assert report["readings"] == {"vehicle": 61, "meter": 30 + 31}


async def test_vehicle_without_a_meter_is_unknown(client: httpx.AsyncClient) -> None:
    await _charge(client, meter_id=None)
    report = await _report(client)
    assert report["acConsumedKwh"] is None
    assert report["lossKwh"] is None
    assert report["efficiency"] is None
    assert report["dcDeliveredKwh"] == pytest.approx(54.0)
    assert report["meterIds"] == []
    assert report["health"] == "unknown"


async def test_assigned_meter_without_readings_is_unknown(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client, meter_id=None)
    report = await _report(client)
    assert (report["acConsumedKwh"], report["health"]) == (None, "unknown")
    assert report["meterIds"] == ["M-1"]


async def test_dc_above_ac_is_an_anomaly(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client, ac_per_minute=0.5, dc_per_minute=0.6)
    report = await _report(client)
    assert report["efficiency"] == pytest.approx(1.2)
    assert report["health"] == "anomaly"


@pytest.mark.parametrize(
    ("dc_per_minute", "health"), [(0.85, "healthy"), (0.8, "warning"), (0.7, "critical")]
)
async def test_health_follows_the_thresholds(
    client: httpx.AsyncClient, dc_per_minute: float, health: str
) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client, dc_per_minute=dc_per_minute)
    assert (await _report(client))["health"] == health


async def test_thresholds_are_configurable(client_with: ClientWith) -> None:
    async with client_with(healthy_efficiency=0.92, warning_efficiency=0.88) as client:
        await _assign(client, "V-1", "M-1", -60)
        await _charge(client, dc_per_minute=0.9)
        assert (await _report(client))["health"] == "warning"


async def test_too_little_ac_is_insufficient_data(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client, minutes=5, ac_per_minute=0.1, dc_per_minute=0.09)
    report = await _report(client)
    assert report["acConsumedKwh"] == pytest.approx(0.5)
    assert report["efficiency"] == pytest.approx(0.9)
    assert report["health"] == "insufficient_data"


async def test_interval_semantics_sum_the_readings(client_with: ClientWith) -> None:
    async with client_with(energy_semantics="interval") as client:
        await _assign(client, "V-1", "M-1", -60)
        await client.post("/v1/ingest/meter", json=[meter("M-1", at(m), 1.0) for m in range(10)])
        await client.post(
            "/v1/ingest/vehicle", json=[vehicle("V-1", at(m), 0.9) for m in range(10)]
        )
        report = await _report(client)
        assert report["acConsumedKwh"] == pytest.approx(10.0)
        assert report["dcDeliveredKwh"] == pytest.approx(9.0)
        assert report["health"] == "healthy"


async def test_default_window_is_the_last_24_hours(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", -60)
    await _charge(client)
    response = await client.get("/v1/analytics/performance/V-1")
    report = response.json()
    start, end = (datetime.fromisoformat(report[k]) for k in ("from", "to"))
    assert end - start == timedelta(hours=24)
    assert report["acConsumedKwh"] == pytest.approx(60.0)


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-04-15T00:00:00Z"},
        {"from": "2026-01-01T00:00:00"},
        {"from": "last tuesday"},
    ],
    ids=["from after to", "longer than 90 days", "no offset", "not a time"],
)
async def test_bad_windows_are_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    await client.post("/v1/ingest/vehicle", json=vehicle("V-1", minute_ago(1), 1.0))
    response = await client.get("/v1/analytics/performance/V-1", params=params)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] in ("from", "to")


async def test_unknown_vehicle_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/analytics/performance/ghost")
    assert response.status_code == 404
