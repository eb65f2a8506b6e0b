"""The benchmark scenarios of issue 4: fleet ranking, 30-day summaries, rollup upkeep.

They run in a database of their own holding a whole fleet's day: `fleet_size` meters and
vehicles × 1,440 readings each (14.4M + 14.4M at the issue's 10,000), plus 29 more days for
the first 100 vehicles and their meters. The history is written by SQL (generate_series):
importing 28.8M simulated readings would take most of the bench's time for the same rows.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from benchmarks.harness import WrkRun, api_headers, engine, run_wrk
from energy_engine import db, sql
from energy_engine.rollups import store as rollups
from energy_engine.settings import Settings

queries = sql.load("benchmarks")

LONG_HISTORY_VEHICLES = 100
LONG_HISTORY_DAYS = 30

HISTORY = (queries.fleet_meter_history, queries.fleet_vehicle_history)


@dataclass(frozen=True, slots=True)
class Measured:
    """Milliseconds per request (the fleet ranking, the series) and the wrk runs."""

    aligned: list[float]  # the fleet over the whole-hour day
    shifted: list[float]  # the fleet over a day starting at half past
    month: list[WrkRun]  # 30-day per-vehicle summaries
    series: list[float]  # 30 daily points of one vehicle


def window_day() -> datetime:
    """The measured day: yesterday, UTC."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


async def write_history(url: str, fleet: int) -> int:
    """The fleet's day (and the hour before it), 29 earlier days for the first vehicles;
    returns the readings written."""
    day = window_day()
    first = day - timedelta(days=LONG_HISTORY_DAYS - 1)
    long_fleet = min(fleet, LONG_HISTORY_VEHICLES)
    conn = await asyncpg.connect(url)
    try:
        await db.ensure_partitions(conn, first.date() - timedelta(days=1), day.date())
        written = 0
        # Earlier days for the first vehicles: minute 0 of `first` up to an hour before `day`.
        early = int((day - first) / timedelta(minutes=1)) - 60
        for query in HISTORY:
            await conn.execute(query, first, early, long_fleet, 0)
            await conn.execute(query, day - timedelta(hours=1), 25 * 60, fleet, early)
            written += early * long_fleet + 25 * 60 * fleet
        await conn.execute(queries.fleet_vehicle_state, day + timedelta(days=1), fleet)
        await conn.execute(queries.fleet_assignments, first - timedelta(days=1), fleet)
        await conn.execute("VACUUM ANALYZE")
        return written
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


def time_requests(base: str, path: str, params: dict[str, str], count: int) -> list[float]:
    """Milliseconds of `count` sequential GETs (the first one, which warms caches, dropped)."""
    times = []
    with httpx.Client(base_url=base, timeout=120, headers=api_headers()) as client:
        for _ in range(count + 1):
            began = time.perf_counter()
            response = client.get(path, params=params)
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return times[1:]


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
    requests: int,
    repeat: int,
    seconds: int,
) -> Measured:
    """Against a running engine on the fleet database: the fleet ranking (whole-hour day and
    a day starting mid-hour) and wrk on 30-day per-vehicle summaries."""
    day = window_day()
    with engine(url, log=log) as base:
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
            max(1, requests // 5),
        )
        end = day + timedelta(days=1, minutes=30)
        env = {
            "BENCH_VEHICLES": str(min(fleet, LONG_HISTORY_VEHICLES)),
            "BENCH_WINDOW": f"from={iso(end - timedelta(days=30))}&to={iso(end)}",
        }
        month = [
            run_wrk(wrk, scripts, "analytics.lua", base, connections=10, seconds=seconds, env=env)
            for _ in range(repeat)
        ]
        series = time_requests(
            base,
            "/v1/analytics/performance/vehicle-00001/series",
            {"from": iso(end - timedelta(days=30)), "to": iso(end), "step": "1d"},
            requests,
        )
    return Measured(aligned, shifted, month, series)
