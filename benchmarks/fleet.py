"""The benchmark scenarios of issues 4 and 14: fleet ranking, 30-day summaries, rollup upkeep,
and the storage of packed history.

They run in a database of their own holding a whole fleet's history from an hour before
yesterday (the measured calendar day) up to now, so that the default window (the last 24 whole
hours) is as full as the calendar day: `fleet_size` meters and vehicles × a reading a minute
(14.4M + 14.4M a day at the issue's 10,000), plus 29 more days for the first 100 vehicles and
their meters. The history is written by SQL (generate_series): importing 28.8M simulated
readings would take most of the bench's time for the same rows.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson

from benchmarks import ceilings
from benchmarks.harness import WrkRun, api_headers, engine, run_wrk
from energy_engine import db, sql
from energy_engine.rollups import store as rollups
from energy_engine.settings import Settings

queries = sql.load("benchmarks")

LONG_HISTORY_VEHICLES = 100
LONG_HISTORY_DAYS = 30

HISTORY = (queries.fleet_meter_history, queries.fleet_vehicle_history)


@dataclass(frozen=True, slots=True)
class History:
    """What `write_history` wrote: every later step reads the same days, even past midnight."""

    readings: int
    day: datetime  # the measured calendar day (yesterday when written)
    written_to: datetime  # the last minute written (then the current one)


@dataclass(frozen=True, slots=True)
class Measured:
    """Milliseconds per request (the fleet ranking, the series) and the wrk runs."""

    aligned: list[float]  # the fleet over the whole-hour calendar day
    shifted: list[float]  # the fleet over a day starting at half past
    default: list[float]  # the fleet over the default window (no from/to)
    default_window: str  # [from, to) the engine answered for the default window
    month: list[WrkRun]  # 30-day per-vehicle summaries
    month_ceilings: ceilings.Ceilings  # their statement alone, the HTTP layer alone
    series: list[float]  # 30 daily points of one vehicle


def window_day() -> datetime:
    """The measured day: yesterday, UTC."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


async def write_history(url: str, fleet: int) -> History:
    """The whole fleet from an hour before yesterday up to this minute, 29 earlier days for
    the first vehicles."""
    day = window_day()
    first = day - timedelta(days=LONG_HISTORY_DAYS - 1)
    long_fleet = min(fleet, LONG_HISTORY_VEHICLES)
    last = datetime.now(UTC).replace(second=0, microsecond=0)
    conn = await asyncpg.connect(url)
    try:
        await db.ensure_partitions(conn, first.date() - timedelta(days=1), last.date())
        written = 0
        # Earlier days for the first vehicles: minute 0 of `first` up to an hour before `day`.
        early = int((day - first) / timedelta(minutes=1)) - 60
        # Then every vehicle, a reading a minute, up to `last` (as live devices report).
        recent = int((last - day) / timedelta(minutes=1)) + 61
        for query in HISTORY:
            await conn.execute(query, first, early, long_fleet, 0)
            await conn.execute(query, day - timedelta(hours=1), recent, fleet, early)
            written += early * long_fleet + recent * fleet
        await conn.execute(queries.fleet_vehicle_state, last, fleet)
        await conn.execute(queries.fleet_assignments, first - timedelta(days=1), fleet)
        await conn.execute("VACUUM ANALYZE")
        return History(written, day, last)
    finally:
        await conn.close()


async def roll_up(url: str) -> float:
    """Roll every hour up the way the engine's refresher does; returns the seconds taken."""
    settings = Settings(_env_file=None, database_url=url)
    pool = await db.create_pool(url, settings)
    try:
        async with pool.acquire() as conn:
            await rollups.match_rules(conn, settings)
        began = time.perf_counter()
        await rollups.refresh(pool, settings, datetime.now(UTC), rounds=10_000)
        seconds = time.perf_counter() - began
        async with pool.acquire() as conn:
            await conn.execute("VACUUM ANALYZE meter_rollups, vehicle_rollups")
        return seconds
    finally:
        await pool.close()


def migrate(url: str) -> None:
    """The engine's own migrations and partitions, as `energy-engine migrate` applies them."""
    subprocess.run(
        [sys.executable, "-m", "energy_engine.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


async def rollups_caught_up(url: str, timeout_s: float = 900) -> float:
    """Seconds until the engine's refresher has rolled up every sealed hour and redone every
    dirty one (the steady state analytics are measured in)."""
    began = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        while time.perf_counter() - began < timeout_s:
            behind = await conn.fetchval(queries.rollups_behind)
            if behind == 0:
                return time.perf_counter() - began
            await asyncio.sleep(1)
    finally:
        await conn.close()
    raise RuntimeError(f"the rollups did not catch up within {timeout_s:.0f} s")


def time_requests(
    base: str,
    path: str,
    params: dict[str, str],
    count: int,
    *,
    budget_s: float = float("inf"),
    at_least: int = 3,
) -> list[float]:
    """Milliseconds of `count` sequential GETs (the first one, which warms caches, dropped);
    fewer, but never fewer than `at_least`, once they have taken `budget_s` seconds."""
    times: list[float] = []
    began_all = time.perf_counter()
    with httpx.Client(base_url=base, timeout=120, headers=api_headers()) as client:
        for _ in range(count + 1):
            began = time.perf_counter()
            response = client.get(path, params=params)
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
            if len(times) > at_least and time.perf_counter() - began_all > budget_s:
                break
    return times[1:]


def answered_window(base: str, path: str) -> str:
    """The [from, to) the engine chose for a request without a window."""
    with httpx.Client(base_url=base, timeout=120, headers=api_headers()) as client:
        response = client.get(path, params={"limit": "1"})
        response.raise_for_status()
        found = response.json()
    return f"[{found['from']}, {found['to']})"


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def iso(at: datetime) -> str:
    """ISO-8601 with Z, as the API's query strings take it."""
    return at.isoformat().replace("+00:00", "Z")


def summary_line(times: list[float]) -> str:
    """p50, p90 and max of request times."""
    return (
        f"p50 {statistics.median(times):.0f} ms, p90 {percentile(times, 0.9):.0f} ms, "
        f"max {max(times):.0f} ms over {len(times)} requests"
    )


def measure(
    wrk: str,
    scripts: Path,
    url: str,
    log: Path,
    *,
    fleet: int,
    day: datetime,
    requests: int,
    repeat: int,
    seconds: int,
    ceiling_seconds: int,
    work: Path,
) -> Measured:
    """Against a running engine on the fleet database: the fleet ranking (whole-hour calendar
    day, a day starting at half past, the default window) and wrk on 30-day per-vehicle
    summaries, then their ceilings; `day` is the calendar day measured."""
    with engine(url, log=log) as base:
        # An hour sealed since the history was rolled up is the refresher's: wait for it.
        asyncio.run(rollups_caught_up(url))
        aligned = time_requests(
            base,
            "/v1/analytics/fleet",
            {"from": iso(day), "to": iso(day + timedelta(days=1))},
            requests,
        )
        shifted = time_requests(
            base,
            "/v1/analytics/fleet",
            {
                "from": iso(day + timedelta(minutes=30)),
                "to": iso(day + timedelta(days=1, minutes=30)),
            },
            requests,
            budget_s=20,
        )
        default = time_requests(base, "/v1/analytics/fleet", {}, requests, budget_s=20)
        default_window = answered_window(base, "/v1/analytics/fleet")
        end = day + timedelta(days=1, minutes=30)
        long = min(fleet, LONG_HISTORY_VEHICLES)
        env = {
            "BENCH_VEHICLES": str(long),
            "BENCH_WINDOW": f"from={iso(end - timedelta(days=30))}&to={iso(end)}",
        }
        month = [
            run_wrk(wrk, scripts, "analytics.lua", base, connections=10, seconds=seconds, env=env)
            for _ in range(repeat)
        ]
        month_ceilings = ceilings.measure(
            wrk,
            scripts,
            base,
            url,
            vehicles=long,
            start=end - timedelta(days=30),
            end=end,
            seconds=ceiling_seconds,
            work=work,
        )
        series = time_requests(
            base,
            "/v1/analytics/performance/vehicle-00001/series",
            {"from": iso(end - timedelta(days=30)), "to": iso(end), "step": "1d"},
            requests,
        )
    return Measured(aligned, shifted, default, default_window, month, month_ceilings, series)


# --- packed history (issue 14) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packed:
    """What packing the days before the measured day did, and what it changed in answers."""

    before: datetime  # the boundary given to pack_readings_before
    raw_readings: int  # raw readings before it, counted before packing
    packed: int  # readings pack_readings_before reported packed
    raw_left: int  # raw readings before it, counted after packing
    packed_bytes: int  # heap, indexes and TOAST of the packed tables' partitions
    raw_bytes: tuple[int, int]  # the same of the raw tables, before and after packing
    seconds: float  # the call of pack_readings_before
    requests: int  # analytics requests compared
    mismatches: list[str]  # one line per request answered differently after packing

    @property
    def per_reading(self) -> float:
        """Bytes of packed history per packed reading."""
        return self.packed_bytes / max(self.packed, 1)


Request = tuple[str, dict[str, str]]
RAW_TABLES = ("meter_readings", "vehicle_readings")
PACKED_TABLES = ("meter_readings_packed", "vehicle_readings_packed")


def _odd_minute(rng: random.Random) -> timedelta:
    return timedelta(hours=rng.randrange(24), minutes=rng.randrange(1, 60, 2))


def old_requests(fleet: int, day: datetime) -> list[Request]:
    """Analytics requests over windows in the days before the measured `day` (the days packed),
    starting and ending at odd minutes so that their edges are read from readings, not
    rollups: 20 per-vehicle reports from 38 minutes to 9 days (two running on into the
    measured day, whose readings stay raw), 3 series by hour and by day, and 3 fleet rankings
    of days starting at half past. The same list every time (a fixed seed)."""
    rng = random.Random(14)
    first = day - timedelta(days=LONG_HISTORY_DAYS - 1)
    long = min(fleet, LONG_HISTORY_VEHICLES)
    # Whole even minutes long: a window starting at an odd minute never ends on the hour.
    lengths = [timedelta(minutes=38), timedelta(hours=3, minutes=22), timedelta(days=1, hours=5)]
    lengths += [timedelta(days=2, minutes=46), timedelta(days=9, hours=7, minutes=14)]
    found: list[Request] = []
    for number in range(20):
        length = lengths[number % len(lengths)]
        if number >= 18:  # into the measured day
            start = day - timedelta(days=1) + _odd_minute(rng)
            end = day + _odd_minute(rng)
        else:
            latest = (day - first - timedelta(days=2) - length).days
            start = first + timedelta(days=1 + rng.randrange(max(latest, 1))) + _odd_minute(rng)
            end = start + length
        path = f"/v1/analytics/performance/vehicle-{rng.randint(1, long):05d}"
        found.append((path, {"from": iso(start), "to": iso(end)}))
    series = [
        (1, first + timedelta(days=3, hours=5, minutes=17), timedelta(hours=30), "1h"),
        (2, first + timedelta(days=2, hours=7, minutes=43), timedelta(days=10, minutes=88), "1d"),
        (long, day - timedelta(hours=6, minutes=29), timedelta(hours=9, minutes=42), "1h"),
    ]
    for vehicle, start, length, step in series:
        path = f"/v1/analytics/performance/vehicle-{vehicle:05d}/series"
        found.append((path, {"from": iso(start), "to": iso(start + length), "step": step}))
    # A day of the vehicles with long history; a day from the fleet's packed hour before the
    # measured day, by two orders.
    for start, order in (
        (first + timedelta(days=10, minutes=30), {}),
        (day - timedelta(minutes=30), {}),
        (day - timedelta(minutes=30), {"sort": "lossKwh", "order": "desc"}),
    ):
        window = {"from": iso(start), "to": iso(start + timedelta(days=1)), "limit": "1000"}
        found.append(("/v1/analytics/fleet", {**window, **order}))
    return found


def answers(base: str, requests: list[Request]) -> list[tuple[int, object]]:
    """Each request's status and JSON answer."""
    found: list[tuple[int, object]] = []
    with httpx.Client(base_url=base, timeout=120, headers=api_headers()) as client:
        for path, params in requests:
            response = client.get(path, params=params)
            try:
                body: object = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = response.text
            found.append((response.status_code, body))
    return found


def _difference(request: Request, before: tuple[int, object], after: tuple[int, object]) -> str:
    path, params = request
    where = f"{path}?" + "&".join(f"{k}={v}" for k, v in params.items())
    if before[0] != after[0] or before[0] != 200:
        return f"{where}: status {before[0]} then {after[0]}: {str(after[1])[:200]}"
    if not (isinstance(before[1], dict) and isinstance(after[1], dict)):
        return f"{where}: {str(before[1])[:120]} then {str(after[1])[:120]}"
    keys = sorted(
        k for k in before[1].keys() | after[1].keys() if before[1].get(k) != after[1].get(k)
    )
    first = keys[0]
    return (
        f"{where}: {', '.join(keys)} differ, e.g. {first} "
        f"{str(before[1].get(first))[:120]} then {str(after[1].get(first))[:120]}"
    )


async def _sizes(conn: asyncpg.Connection, tables: tuple[str, ...]) -> int:
    return sum([await conn.fetchval(queries.total_size, table) for table in tables])


async def _pack(url: str, before: datetime) -> tuple[int, int, int, tuple[int, int], int, float]:
    conn = await asyncpg.connect(url)
    try:
        raw_readings = await conn.fetchval(queries.raw_readings_before, before)
        raw_bytes = await _sizes(conn, RAW_TABLES)
        began = time.perf_counter()
        packed = await conn.fetchval(queries.pack_readings_before, before)
        seconds = time.perf_counter() - began
        # What autovacuum would do soon after: statistics, visibility and free-space maps.
        await conn.execute(f"VACUUM ANALYZE {', '.join(RAW_TABLES + PACKED_TABLES)}")
        raw_left = await conn.fetchval(queries.raw_readings_before, before)
        sizes = (raw_bytes, await _sizes(conn, RAW_TABLES))
        return raw_readings, packed, raw_left, sizes, await _sizes(conn, PACKED_TABLES), seconds
    finally:
        await conn.close()


def pack_and_compare(url: str, log: Path, *, fleet: int, day: datetime) -> Packed:
    """Answers over old windows, then every day before the measured `day` packed, then the
    same requests again from a freshly started engine (no process holds answers or rows from
    before), and the packed tables' size. An answer other than 200 before packing counts as
    a mismatch too: an error equal to itself proves nothing."""
    requests = old_requests(fleet, day)
    with engine(url, log=log) as base:
        asyncio.run(rollups_caught_up(url))
        before = answers(base, requests)
    raw_readings, packed, raw_left, raw_bytes, packed_bytes, seconds = asyncio.run(_pack(url, day))
    with engine(url, log=log) as base:
        after = answers(base, requests)
    mismatches = [
        _difference(request, was, now)
        for request, was, now in zip(requests, before, after, strict=True)
        if was != now or was[0] != 200
    ]
    return Packed(
        day, raw_readings, packed, raw_left, packed_bytes, raw_bytes, seconds,
        len(requests), mismatches,
    )  # fmt: skip
