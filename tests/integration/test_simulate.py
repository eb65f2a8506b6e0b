"""The simulator driven through the engine: what it sends is accepted and judged correctly."""

from __future__ import annotations

import asyncio
import gzip
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from energy_engine.cli import cli
from energy_engine.settings import Settings
from energy_engine.simulate.files import assignments_path, read_assignments
from energy_engine.simulate.fleet import Fleet, FleetConfig, floor_minute
from energy_engine.simulate.send import post_assignments, simulate
from energy_engine.simulate.stats import Stats
from tests.reference import stored_body

# Six vehicles, each on its own bay (no roaming), plugging in at every short stop; two of the
# six chargers are faulty.
DEPOT = FleetConfig(
    meters=6,
    vehicles=6,
    seed=4,
    faulty_share=0.34,
    roam_share=0.0,
    trip_minutes=(5, 20),
    stop_minutes=(40, 90),
    charge_below_soc=(100.0, 100.0),
    initial_soc=(10.0, 40.0),
)


def now() -> datetime:
    return floor_minute(datetime.now(UTC))


async def report(client: httpx.AsyncClient, vehicle_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/analytics/performance/{vehicle_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# The readings of each meter while it was assigned to the vehicle, inside the report's window.
METER_READINGS_WHILE_ASSIGNED = """
SELECT count(*)
FROM assignments AS a
JOIN meter_readings AS r
  ON r.meter_id = a.meter_id
 AND r.read_at >= greatest(a.valid_from, $2)
 AND r.read_at < least(coalesce(a.valid_to, 'infinity'), $3)
WHERE a.vehicle_id = $1
"""


def window_of(body: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(body["from"]), datetime.fromisoformat(body["to"])


async def test_backfill_is_accepted_and_judged_per_charger(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    end = now()
    fleet = Fleet(DEPOT, end - timedelta(hours=3))
    stats = await simulate(client, fleet, end=end, batch_size=500, concurrency=3)

    minutes = 3 * 60 + 1
    assert stats.readings == stats.accepted == 12 * minutes
    assert (stats.duplicates, stats.rejected, stats.first_error) == (0, 0, None)
    assert stats.assignments == 6  # each vehicle once, to its own bay
    assert stats.assignment_conflicts == stats.assignment_errors == 0

    faulty = 0
    for vehicle, charger in zip(fleet.vehicles, fleet.chargers, strict=True):
        body = await report(client, vehicle.vehicle_id)
        assert body["meterIds"] == [charger.meter_id]
        meter_readings = await conn.fetchval(
            METER_READINGS_WHILE_ASSIGNED, vehicle.vehicle_id, *window_of(body)
        )
        assert meter_readings > 0
        assert body["readings"] == {"vehicle": minutes, "meter": meter_readings}
        assert body["acConsumedKwh"] > 1
        assert body["efficiency"] == pytest.approx(charger.efficiency, abs=2e-3)
        if charger.efficiency >= 0.85:
            assert body["health"] == "healthy"
        else:
            faulty += 1
            assert body["efficiency"] == pytest.approx(0.70, abs=0.03)
            assert body["health"] == "critical"
    assert faulty == 2


async def test_sending_again_stores_nothing_twice(client: httpx.AsyncClient) -> None:
    end = now()
    start = end - timedelta(minutes=90)
    first = await simulate(client, Fleet(DEPOT, start), end=end)
    again = await simulate(client, Fleet(DEPOT, start), end=end)
    assert again.readings == again.duplicates == first.accepted
    assert again.accepted == again.rejected == 0
    # Each vehicle is still assigned to its bay; the repeated plug-ins change nothing.
    assert again.assignments_unchanged == first.assignments
    assert again.assignment_conflicts == again.assignment_errors == 0


async def test_roaming_vehicles_get_assignments_in_order(
    client: httpx.AsyncClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    config = replace(DEPOT, meters=3, vehicles=8, roam_share=0.5, stop_minutes=(20, 60))
    end = now()
    stats = await simulate(client, Fleet(config, end - timedelta(hours=4)), end=end)
    assert stats.readings == stats.accepted
    assert stats.assignments > 8
    assert stats.assignment_conflicts == stats.assignment_errors == 0
    judged = 0
    for index in range(1, 9):
        vehicle_id = f"vehicle-{index:05d}"
        body = await report(client, vehicle_id)
        start, end = window_of(body)
        del body["from"], body["to"]
        # Null only where the raw history says so (no charger yet, or nothing drawn).
        assert body == await stored_body(conn, vehicle_id, start, end, settings)
        if body["efficiency"] is not None:
            judged += 1
            # A mix of the chargers it used: never above the best nor below the worst.
            assert 0.68 <= body["efficiency"] <= 0.95, body
    # Three chargers for eight vehicles over four hours: most of them charge (seven, as the
    # seed falls), so a report that left efficiency out would not pass unseen.
    assert judged >= 4


async def test_paced_replay_takes_its_time(client: httpx.AsyncClient) -> None:
    end = now()
    fleet = Fleet(replace(DEPOT, meters=2, vehicles=3), end - timedelta(minutes=4))
    started = time.monotonic()
    stats = await simulate(client, fleet, end=end, speedup=300, batch_size=2)
    # Five minutes of readings at 300x: the last minute is due 4 min / 300 = 0.8 s in.
    assert time.monotonic() - started >= 0.75
    assert stats.readings == stats.accepted == 5 * 5


async def test_the_api_refusing_a_batch_is_counted(client: httpx.AsyncClient) -> None:
    # Readings older than the API accepts: every batch is refused with a 422.
    start = now() - timedelta(days=40)
    fleet = Fleet(replace(DEPOT, meters=1, vehicles=1), start)
    stats = await simulate(client, fleet, end=start + timedelta(minutes=9), batch_size=5)
    assert stats.readings == stats.rejected == 20
    assert stats.accepted == 0
    assert stats.first_error is not None and stats.first_error.startswith("POST /v1/ingest: 422")


async def test_out_file_is_what_the_api_takes(client: httpx.AsyncClient, tmp_path: Path) -> None:
    out = tmp_path / "fleet.ndjson.gz"
    result = CliRunner().invoke(
        cli,
        ["simulate", "--meters", "3", "--vehicles", "4", "--backfill", "0.05", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert assignments_path(out) == tmp_path / "fleet.assignments.ndjson"

    with gzip.open(out, "rb") as lines:
        readings = [orjson.loads(line) for line in lines]
    minutes = 72 + 1  # 0.05 days, both ends included
    assert len(readings) == 7 * minutes
    assert {tuple(r) for r in readings} == {
        ("meterId", "kwhConsumedAc", "voltage", "timestamp"),
        ("vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"),
    }
    response = await client.post("/v1/ingest", content=orjson.dumps(readings))
    assert response.json() == {"accepted": len(readings), "duplicates": 0}

    plugs = read_assignments(assignments_path(out))
    assert plugs
    stats = Stats()
    await post_assignments(client, plugs, stats)
    assert stats.assignments == len(plugs)
    assert stats.first_error is None


def test_out_needs_a_backfill_and_no_pace(tmp_path: Path) -> None:
    out = str(tmp_path / "x.ndjson")
    for extra in ([], ["--backfill", "1", "--speedup", "10"]):
        result = CliRunner().invoke(cli, ["simulate", "--out", out, *extra])
        assert result.exit_code == 2
    result = CliRunner().invoke(cli, ["simulate", "--rate", "10", "--speedup", "10"])
    assert result.exit_code == 2
    assert not Path(out).exists()


async def test_out_files_import_into_a_fresh_database(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "fleet.ndjson.gz"
    runner = CliRunner()
    args = ["--meters", "6", "--vehicles", "6", "--seed", "3", "--faulty-share", "0.34"]
    result = runner.invoke(cli, ["simulate", *args, "--backfill", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    side = assignments_path(out)
    plugs = read_assignments(side)

    env = {"DATABASE_URL": database_url}
    command = ["import", "--quiet", str(out), str(side)]
    # The import runs its own event loop: off this test's loop.
    imported = await asyncio.to_thread(runner.invoke, cli, command, env=env)
    assert imported.exit_code == 0, imported.output
    summary = f"{side}: {len(plugs)} assignments read, {len(plugs)} created, 0 unchanged"
    assert summary in imported.stdout.splitlines()
    with gzip.open(out, "rb") as lines:
        written = sum(1 for _ in lines)
    assert f"{out}: {written:,} read, {written:,} inserted, 0 duplicates, " in imported.stdout

    judged = 0
    for vehicle_id in sorted({plug["vehicleId"] for plug in plugs}):
        assignments = await client.get(f"/v1/vehicles/{vehicle_id}/assignments")
        assert [a["meterId"] for a in assignments.json()] == [
            plug["meterId"] for plug in plugs if plug["vehicleId"] == vehicle_id
        ]
        body = await report(client, vehicle_id)
        if body["acConsumedKwh"] is not None and body["acConsumedKwh"] >= 1:
            assert body["health"] in ("healthy", "warning", "critical"), body
            judged += 1
    assert judged >= 3

    again = await asyncio.to_thread(runner.invoke, cli, command, env=env)
    assert again.exit_code == 0, again.output
    assert f"{side}: {len(plugs)} assignments read, 0 created, {len(plugs)} unchanged" in (
        again.stdout.splitlines()
    )


def test_sigterm_ends_the_out_files_cleanly_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "fleet.ndjson.gz"
    command = [sys.executable, "-m", "energy_engine.cli", "simulate", "--meters", "300"]
    command += ["--vehicles", "300", "--backfill", "30", "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    # Thirty days of 600 devices take minutes to write: stop it once writing is under way.
    deadline = time.monotonic() + 30
    while not (out.exists() and out.stat().st_size > 0):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = re.search(r"^([\d,]+) readings in [\d.,]+ s", stderr, re.MULTILINE)
    assert summary is not None, stderr
    with gzip.open(out, "rb") as lines:  # a complete gzip stream: it was closed, not cut off
        written = sum(1 for line in lines if orjson.loads(line))
    assert written == int(summary[1].replace(",", "")) < 600 * 30 * 24 * 60
    assert f"assignments ({len(read_assignments(assignments_path(out))):,})" in stderr
