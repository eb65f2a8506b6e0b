"""`energy-engine import`: files through COPY and the ingest merge into a real PostgreSQL."""

from __future__ import annotations

import csv
import gzip
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from energy_engine.cli import cli
from energy_engine.importer import validation
from energy_engine.importer.files import METER_FIELDS, VEHICLE_FIELDS
from energy_engine.importer.run import FileReport, ImportStopped, import_files
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.settings import Settings
from tests.conftest import admin, with_database
from tests.readings import iso, meter, minute_ago, vehicle

METER_HOT = "meter_id, read_at, kwh_consumed_ac, voltage, prev_read_at, prev_kwh_consumed_ac"
VEHICLE_HOT = (
    "vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, prev_read_at, prev_kwh_delivered_dc"
)


def write_ndjson(path: Path, items: list[dict[str, Any]]) -> Path:
    data = b"".join(orjson.dumps(item) + b"\n" for item in items)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_csv(path: Path, items: list[dict[str, Any]]) -> Path:
    fields = METER_FIELDS if "meterId" in items[0] else VEHICLE_FIELDS
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(items)
    return path


async def rows(conn: asyncpg.Connection, query: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(query)]


async def history(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        await rows(conn, "SELECT * FROM meter_readings ORDER BY meter_id, read_at"),
        await rows(conn, "SELECT * FROM vehicle_readings ORDER BY vehicle_id, read_at"),
    )


async def hot_rows(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], ...]:
    """The hot store without `received_at`, which is the time of writing."""
    return (
        await rows(conn, f"SELECT {METER_HOT} FROM meter_state ORDER BY meter_id"),
        await rows(conn, f"SELECT {VEHICLE_HOT} FROM vehicle_state ORDER BY vehicle_id"),
    )


def counts(reports: list[FileReport]) -> list[tuple[str, int, int, int]]:
    return [(r.path.name, r.read, r.inserted, r.duplicates) for r in reports]


async def test_mixed_ndjson_fills_history_and_hot_rows(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    t = [minute_ago(m) for m in (3, 2, 1)]
    items = [meter("M-1", t[0], 1.0), vehicle("V-1", t[0], 5.0, 40.0)]
    items += [meter("M-1", t[1], 2.0), meter("M-2", t[1], 7.0), vehicle("V-1", t[2], 6.0, 41.0)]
    items += [meter("M-1", t[2], 3.0, 229.5)]
    path = write_ndjson(tmp_path / "mixed.ndjson", items)
    reports = await import_files(conn, [path], settings, chunk_rows=4)  # two chunks
    assert counts(reports) == [("mixed.ndjson", 6, 6, 0)]
    assert reports[0].appended == 4  # both streams of both chunks: all new, straight in
    meters, vehicles = await history(conn)
    assert len(meters) == 4
    assert len(vehicles) == 2
    assert await hot_rows(conn) == (
        [("M-1", t[2], 3.0, 229.5, t[1], 2.0), ("M-2", t[1], 7.0, 230.0, None, None)],
        [("V-1", t[2], 41.0, 6.0, 25.0, t[0], 5.0)],
    )


@pytest.mark.parametrize("name", ["meters.csv", "vehicles.csv", "both.ndjson.gz", "m.csv.gz"])
async def test_each_format(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path, name: str
) -> None:
    at = [minute_ago(m) for m in range(5, 0, -1)]
    meters = [meter(f"M-{n}", t, float(n)) for n in range(3) for t in at]
    vehicles = [vehicle(f"V-{n}", t, float(n)) for n in range(2) for t in at]
    if name.endswith(".ndjson.gz"):
        path = write_ndjson(tmp_path / name, meters + vehicles)
    else:
        path = write_csv(tmp_path / name, vehicles if name.startswith("v") else meters)
    reports = await import_files(conn, [path], settings, chunk_rows=4)
    stored = (
        await conn.fetchval("SELECT count(*) FROM meter_readings"),
        await conn.fetchval("SELECT count(*) FROM vehicle_readings"),
    )
    expected = {"meters.csv": (15, 0), "vehicles.csv": (0, 10)}.get(
        name, (15, 10) if "ndjson" in name else (15, 0)
    )
    assert stored == expected
    assert counts(reports) == [(name, sum(expected), sum(expected), 0)]
    assert await conn.fetchval("SELECT count(*) FROM meter_state") == (3 if expected[0] else 0)


async def test_importing_a_file_again_stores_nothing_twice(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    minutes = range(6, 0, -1)  # oldest first: every chunk holds only new readings
    items = [meter(f"M-{n}", minute_ago(m), float(m)) for n in range(4) for m in minutes]
    items += [vehicle(f"V-{n}", minute_ago(m), float(m)) for n in range(3) for m in minutes]
    path = write_ndjson(tmp_path / "a.ndjson", items)
    first = await import_files(conn, [path], settings, chunk_rows=10)
    stored, hot = await history(conn), await conn.fetch("SELECT * FROM meter_state")
    again = await import_files(conn, [path, path], settings, chunk_rows=7)
    assert counts(first) == [("a.ndjson", 42, 42, 0)]
    assert counts(again) == [("a.ndjson", 42, 0, 42)] * 2
    assert [r.appended for r in first + again] == [6, 0, 0]  # 5 chunks, one with both streams
    assert await history(conn) == stored
    # Untouched, received_at included: nothing new, so no hot row was written.
    assert await conn.fetch("SELECT * FROM meter_state") == hot


async def test_older_readings_fill_prev_but_never_move_the_hot_row_back(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    newest = minute_ago(2)
    await client.post("/v1/ingest", json=[meter("M-1", newest, 50.0), vehicle("V-1", newest, 9.0)])
    await client.post("/v1/ingest", json=[meter("M-2", newest, 60.0)])
    await client.post("/v1/ingest", json=[meter("M-2", newest - timedelta(minutes=5), 55.0)])
    older = [minute_ago(m) for m in (20, 10, 8)]
    items = [meter("M-1", t, n) for n, t in enumerate(older)]
    items += [meter("M-2", t, n) for n, t in enumerate(older)]
    items += [vehicle("V-1", older[0], 1.0)]
    reports = await import_files(
        conn, [write_ndjson(tmp_path / "old.ndjson", items)], settings, chunk_rows=100
    )
    assert counts(reports) == [("old.ndjson", 7, 7, 0)]
    assert reports[0].appended == 0
    meters, vehicles = await hot_rows(conn)
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in meters] == [
        ("M-1", newest, 50.0, older[2], 2.0),  # the newest older reading became prev
        ("M-2", newest, 60.0, newest - timedelta(minutes=5), 55.0),  # prev is newer still
    ]
    assert [(r[0], r[1], r[5]) for r in vehicles] == [("V-1", newest, older[0])]
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 9


async def test_an_invalid_row_stores_nothing_of_its_chunk(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    items: list[Any] = [meter("M-1", minute_ago(m), float(10 - m)) for m in range(9, 0, -1)]
    items[4] = {**items[4], "voltage": 1200}  # line 5, in the second chunk (lines 4-6)
    items[7] = {**items[7], "kwhConsumedAc": "8"}  # line 8, in the third
    path = write_ndjson(tmp_path / "bad.ndjson", items)
    with pytest.raises(ImportStopped) as caught:
        await import_files(conn, [path], settings, chunk_rows=3)
    stop = caught.value
    assert [(p.line, p.field, p.reason) for p in stop.cause.problems] == [
        (5, "voltage", "Input should be less than or equal to 1000")
    ]
    assert str(stop.cause.problems[0]).startswith(f"{path}, line 5, voltage: ")
    assert stop.cause.first_line == 4
    assert counts(stop.reports) == [("bad.ndjson", 3, 3, 0)]  # the first chunk is committed
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 3
    state = await conn.fetchrow("SELECT read_at, kwh_consumed_ac FROM meter_state")
    assert state is not None
    assert tuple(state) == (minute_ago(7), 3.0)


async def test_the_first_of_two_rows_for_one_device_and_time_wins(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    t1, t2 = minute_ago(2), minute_ago(1)
    items = [
        meter("M-1", t1, 1.0),
        meter("M-1", t1, 2.0),  # same chunk
        meter("M-1", t2, 3.0),
        meter("M-1", t2, 4.0),  # next chunk
    ]
    path = write_ndjson(tmp_path / "dups.ndjson", items)
    reports = await import_files(conn, [path], settings, chunk_rows=3)
    assert counts(reports) == [("dups.ndjson", 4, 2, 2)]
    assert reports[0].appended == 1  # the second chunk repeats a stored reading
    assert await rows(conn, "SELECT read_at, kwh_consumed_ac FROM meter_readings ORDER BY 1") == [
        (t1, 1.0),
        (t2, 3.0),
    ]
    assert await hot_rows(conn) == ([("M-1", t2, 3.0, 230.0, t1, 1.0)], [])


async def test_a_row_stored_without_its_hot_row_is_still_a_duplicate(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    # History written behind the hot store's back: the chunk looks new, the plain insert
    # meets the stored key, and the chunk falls back to ON CONFLICT.
    t1, t2 = minute_ago(2), minute_ago(1)
    await conn.execute(
        "INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)"
        " VALUES ('M-1', $1, 9.0, 230)",
        t1,
    )
    path = write_ndjson(tmp_path / "a.ndjson", [meter("M-1", t1, 1.0), meter("M-1", t2, 2.0)])
    reports = await import_files(conn, [path], settings, chunk_rows=10)
    assert counts(reports) == [("a.ndjson", 2, 1, 1)]
    assert reports[0].appended == 0
    assert await rows(conn, "SELECT read_at, kwh_consumed_ac FROM meter_readings ORDER BY 1") == [
        (t1, 9.0),
        (t2, 2.0),
    ]
    assert await hot_rows(conn) == ([("M-1", t2, 2.0, 230.0, None, None)], [])


async def test_missing_partitions_are_created(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    day = datetime.now(UTC) - timedelta(days=10)
    suffix = day.strftime("%Y%m%d")
    await conn.execute(f"DROP TABLE meter_readings_p{suffix}, vehicle_readings_p{suffix}")
    path = write_ndjson(tmp_path / "a.ndjson", [meter("M-1", day, 1.0), vehicle("V-1", day, 1.0)])
    reports = await import_files(conn, [path], settings, chunk_rows=10)
    assert counts(reports) == [("a.ndjson", 2, 2, 0)]
    assert await conn.fetchval(f"SELECT count(*) FROM meter_readings_p{suffix}") == 1


@pytest.fixture
async def other_conn(
    postgres_url: str, template_database: str
) -> AsyncIterator[asyncpg.Connection]:
    """A second fresh database, for the same readings written another way."""
    name = f"energy_import_{uuid.uuid4().hex[:12]}"
    await admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    connection = await asyncpg.connect(
        with_database(postgres_url, name), server_settings={"timezone": "UTC"}
    )
    yield connection
    await connection.close()
    await admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("chunk_rows", [5, 1000])
async def test_an_import_stores_what_the_api_stores(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    other_conn: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
    chunk_rows: int,
) -> None:
    # Out of order, late, repeated with other values, interleaved streams: the API takes them
    # in batches of 7, the import in chunks of 5 or all at once, each into its own database.
    chance = random.Random(7)
    items: list[dict[str, Any]] = []
    for _ in range(120):
        at = minute_ago(chance.randint(1, 40)) + timedelta(seconds=chance.choice([0, 30]))
        value = round(chance.uniform(0, 500), 3)
        if chance.random() < 0.5:
            items.append(meter(f"M-{chance.randint(1, 4)}", at, value, chance.uniform(220, 240)))
        else:
            items.append(
                vehicle(
                    f"V-{chance.randint(1, 3)}",
                    at,
                    value,
                    round(chance.uniform(0, 100), 1),
                    chance.uniform(-10, 45),
                )
            )
    items += items[10:20]  # sent again, in a later batch and a later chunk
    keys = [(i.get("meterId", i.get("vehicleId")), i["timestamp"]) for i in items]
    assert len(set(keys)) < len(set(map(orjson.dumps, items))) < len(items)  # both kinds
    accepted = duplicates = 0
    for start in range(0, len(items), 7):
        response = await client.post("/v1/ingest", json=items[start : start + 7])
        assert response.status_code == 200
        accepted += response.json()["accepted"]
        duplicates += response.json()["duplicates"]
    path = write_ndjson(tmp_path / "same.ndjson", items)
    reports = await import_files(other_conn, [path], settings, chunk_rows=chunk_rows)
    # Each distinct (device, time) is new once, to the API and to the import alike.
    assert accepted == len(set(keys))
    assert counts(reports) == [("same.ndjson", len(items), accepted, duplicates)]
    assert await history(other_conn) == await history(conn)
    assert await hot_rows(other_conn) == await hot_rows(conn)
    assert len((await hot_rows(conn))[0]) == 4


def test_the_import_command(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    t1, t2 = minute_ago(2), minute_ago(1)
    good = write_ndjson(tmp_path / "good.ndjson", [meter("M-1", t1, 1.0), vehicle("V-1", t2, 2.0)])
    plain = write_csv(tmp_path / "more.csv", [meter("M-1", t2, 3.0)])

    result = runner.invoke(cli, ["import", "--quiet", str(good), str(plain)], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{good}: 2 read, 2 inserted, 0 duplicates, ")
    assert lines[1].startswith(f"{plain}: 1 read, 1 inserted, 0 duplicates, ")
    assert lines[2].startswith("total: 3 read, 3 inserted, 0 duplicates, ")

    result = runner.invoke(cli, ["import", str(good), "--chunk-rows", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{good}: 2 read, 0 inserted, 2 duplicates, ")

    bad = tmp_path / "bad.csv"
    bad.write_text(f"meterId,kwhConsumedAc,voltage,timestamp\nM-2,1,231,{iso(t1)}\nM-2,-1,1,x\n")
    result = runner.invoke(cli, ["import", "--quiet", str(bad)], env=env)
    assert result.exit_code == 2
    assert f"error: {bad}, line 3, kwhConsumedAc: Input should be greater than or equal to 0" in (
        result.stderr
    )
    assert f"error: {bad}, line 3, timestamp: Input should be a valid datetime" in result.stderr
    assert f"nothing from line 2 of {bad} on was stored" in result.stderr

    for args in (["nowhere.ndjson"], [str(tmp_path / "readings.json")]):
        result = runner.invoke(cli, ["import", *args], env=env)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ")


async def test_readings_in_sealed_hours_mark_them_as_the_api_does(
    conn: asyncpg.Connection,
    other_conn: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    sealed = minute_ago(0).replace(minute=0)
    marks = "SELECT stream, device_id, hour FROM rollup_dirty ORDER BY 1, 2, 3"
    first = [meter("M-1", minute_ago(0), 9.0), vehicle("V-1", minute_ago(0), 9.0)]
    late = [
        meter("M-2", sealed - timedelta(minutes=90), 1.0),  # a new device: COPY straight in
        meter("M-2", sealed - timedelta(minutes=30), 2.0),
        meter("M-2", minute_ago(0), 3.0),  # not sealed yet
        vehicle("V-1", sealed - timedelta(minutes=30), 1.0),  # behind its hot row: merged
        meter("M-1", sealed - timedelta(minutes=150), 1.0),  # behind its hot row: merged
    ]
    for db in (conn, other_conn):
        await db.execute("UPDATE rollup_watermarks SET at = $1 WHERE name = 'sealed'", sealed)
    # The API's write statement into one database, the import into the other.
    parse = validation.ANY_READING.validate_json
    for batch in (first, late):
        readings = [parse(orjson.dumps(item)) for item in batch]
        await write_readings(
            conn,
            [r for r in readings if isinstance(r, MeterReading)],
            [r for r in readings if isinstance(r, VehicleReading)],
        )
    reports = await import_files(
        other_conn, [write_ndjson(tmp_path / "first.ndjson", first)], settings, chunk_rows=10
    )
    assert counts(reports) == [("first.ndjson", 2, 2, 0)]
    reports = await import_files(
        other_conn, [write_ndjson(tmp_path / "late.ndjson", late)], settings, chunk_rows=10
    )
    assert counts(reports) == [("late.ndjson", 5, 5, 0)]
    assert reports[0].appended == 0  # meters: M-1 is behind its hot row, so the chunk merges
    hour = timedelta(hours=1)
    expected = [
        ("meter", "M-1", sealed - 3 * hour),
        ("meter", "M-2", sealed - 2 * hour),
        ("meter", "M-2", sealed - hour),
        ("vehicle", "V-1", sealed - hour),
    ]
    assert await rows(conn, marks) == expected
    assert await rows(other_conn, marks) == expected
    assert await history(other_conn) == await history(conn)
    assert await hot_rows(other_conn) == await hot_rows(conn)


async def test_new_readings_in_sealed_hours_copied_straight_in_are_marked(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    sealed = minute_ago(0).replace(minute=0)
    await conn.execute("UPDATE rollup_watermarks SET at = $1 WHERE name = 'sealed'", sealed)
    items = [meter("M-1", sealed - timedelta(minutes=m), 1.0) for m in (150, 90, 30, 20)]
    items += [
        vehicle("V-1", sealed - timedelta(minutes=5), 1.0),
        vehicle("V-2", minute_ago(0), 1.0),
    ]
    path = write_ndjson(tmp_path / "late.ndjson", items)
    reports = await import_files(conn, [path], settings, chunk_rows=100)
    assert counts(reports) == [("late.ndjson", 6, 6, 0)]
    assert reports[0].appended == 2  # both streams went straight into history
    hour = timedelta(hours=1)
    assert await rows(
        conn, "SELECT stream, device_id, hour FROM rollup_dirty ORDER BY 1, 2, 3"
    ) == [
        ("meter", "M-1", sealed - 3 * hour),
        ("meter", "M-1", sealed - 2 * hour),
        ("meter", "M-1", sealed - hour),
        ("vehicle", "V-1", sealed - hour),
    ]
