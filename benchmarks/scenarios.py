"""The benchmark scenarios of issues 3, 4 and 14, run in order on one machine, and their targets.

Everything runs on a PostgreSQL of the benchmark's own (the embedded one in a temporary
directory unless `--database-url` names a server): the write statements alone (1, 14) in a
database of their own, the fleet scenarios (8-10, 12, 13, 17) in another, the others in one
database that a real `energy-engine serve` process writes to. The load comes from wrk (closed
model) or from `openload` (open model); after every ingest scenario the readings the server
acknowledged are counted in SQL.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
from rich.console import Console

from benchmarks import brokers, ceilings, fleet, mqttload
from benchmarks.harness import (
    BenchError,
    WrkRun,
    api_headers,
    engine,
    ensure_wrk,
    median,
    median_run,
    queue_worker,
    rss_peaks,
    run_wrk,
    serve,
)
from benchmarks.openload import open_load
from energy_engine import db, sql
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.settings import Settings
from energy_engine.simulate import files, send
from energy_engine.simulate.stats import Stats

queries = sql.load("benchmarks")


@dataclass(frozen=True, slots=True)
class Options:
    """How long and how big: the defaults are the issue's; `quick()` is a smoke run."""

    scripts: Path
    work: Path
    database_url: str | None = None
    repeat: int = 3
    raw_seconds: int = 15
    batch_seconds: int = 20
    single_seconds: int = 30
    open_seconds: int = 60
    analytics_seconds: int = 20
    ceiling_seconds: int = 10  # each ceiling of the report rows (5, 9), run once
    stream_seconds: int = 15  # scenarios 14 and 15: one stream, 1,000 different vehicles a batch
    stream_devices: int = 100_000
    fleet: int = 1000  # meters and vehicles simulated for the analytics scenarios
    history_factor: int = 10
    open_rate: float = 333.0  # requests/s of 100 readings: 33,300 readings/s
    workers: int = 1
    fleet_size: int = 10_000  # meters and vehicles × 24 h for the fleet ranking (8 to 10)
    fleet_requests: int = 15
    mqtt_readings: int = 1_000_000  # scenario 18: published per run, 100 a message
    only: frozenset[int] | None = None  # the rows to measure (with those they are measured
    # against, `wanted`); None: all

    @classmethod
    def quick(cls, scripts: Path, work: Path, database_url: str | None = None) -> Options:
        """A run of about two minutes that exercises every scenario at small sizes."""
        return cls(
            scripts=scripts,
            work=work,
            database_url=database_url,
            repeat=1,
            raw_seconds=3,
            batch_seconds=3,
            single_seconds=3,
            open_seconds=3,
            analytics_seconds=3,
            ceiling_seconds=3,
            stream_seconds=3,
            fleet=20,
            history_factor=3,
            open_rate=50.0,
            fleet_size=50,
            fleet_requests=3,
            mqtt_readings=50_000,
        )


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    number: int
    scenario: str
    target: str
    measured: str
    met: bool | None  # None: reported, no target
    details: list[str] = field(default_factory=list)


Say = Callable[[str], None]


@contextmanager
def _postgres(options: Options) -> Iterator[str]:
    if options.database_url:
        yield options.database_url
        return
    with db.embedded_postgres(options.work / "pgdata", cleanup=True) as url:
        yield url


# The rows a row needs measured in the same run: the ceiling or rate it is a share of, or the
# data it reads.
NEEDS: dict[int, tuple[int, ...]] = {
    2: (1,),
    5: (6,),
    7: (6,),
    9: (6,),
    15: (14,),
    16: (2, 15),
    **dict.fromkeys((8, 10, 12, 13, 17, 18, 19, 20, 21, 22), (2,)),
}


def wanted(only: frozenset[int] | None) -> Callable[[int], bool]:
    """Whether a row is measured: all when `only` is None, else those and what they need."""
    if only is None:
        return lambda _: True
    rows, todo = set(), list(only)
    while todo:
        row = todo.pop()
        if row not in rows:
            rows.add(row)
            todo += NEEDS.get(row, ())
    return rows.__contains__


def run_all(options: Options, console: Console) -> tuple[list[Row], str]:
    """Run every scenario (or those `options.only` names); returns the rows and the PostgreSQL
    version measured against."""
    say: Say = console.log
    want = wanted(options.only)
    wrk = ensure_wrk()
    # The brokers of the last scenarios: missing, say so now, not after the others ran.
    brokers.ensure_binary("mosquitto", "mosquitto")
    brokers.ensure_binary("nats-server", "nats-server")
    rows: list[Row] = []
    suffix = uuid.uuid4().hex[:6]
    with _postgres(options) as admin_url:
        raw_db, bench_db = f"bench_raw_{suffix}", f"bench_{suffix}"
        asyncio.run(
            db.run_statements(admin_url, f"CREATE DATABASE {raw_db}", f"CREATE DATABASE {bench_db}")
        )
        raw_url, url = db.with_database(admin_url, raw_db), db.with_database(admin_url, bench_db)
        try:
            version = str(asyncio.run(_fetchval(url, "SHOW server_version")))
            say(f"PostgreSQL {version}")
            if want(1):
                say("scenario 1: the write statement without HTTP")
                rows.append(_raw_ceiling(raw_url, options, say))
            if want(14):
                say("scenario 14: the one-stream write statement without HTTP")
                rows.append(_stream_ceiling(raw_url, options, say))
            log = options.work / "engine.log"
            batch_peaks: dict[int, int] = {}
            if any(map(want, (2, 3, 4, 5, 6, 9))):
                with serve(url, workers=options.workers, log=log) as server:
                    base = server.base
                    if want(2):
                        with rss_peaks(server.pid) as peaks:
                            rows.append(_batch_ingest(wrk, base, url, options, _rate(rows, 1), say))
                        batch_peaks = dict(peaks)
                    if want(3):
                        rows.append(_single_ingest(wrk, base, url, options, say))
                    if want(4):
                        rows.append(_open_model(base, url, options, say))
                    if want(6):
                        import_row = _seed_and_import(base, url, options, say)
                        if want(5) or want(9):
                            rows.append(_analytics(wrk, base, url, options, say))
                        rows.append(import_row)
            if want(15):
                stream_row, stream_peaks = _stream_ingest(wrk, url, options, _rate(rows, 14), say)
                rows.append(stream_row)
                if want(16):
                    rows.append(_engine_rss(batch_peaks, stream_peaks, options))
            if want(11):
                rows.append(_auth_cost(wrk, url, options, say))
            if want(7):
                rows.append(asyncio.run(_storage(url)))
            asyncio.run(
                db.run_statements(admin_url, f"DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)")
            )
            batch_rate = _rate(rows, 2) if want(2) else 0.0
            if any(map(want, (8, 10, 12, 13, 17))):
                rows += _fleet(wrk, admin_url, f"bench_fleet_{suffix}", options, batch_rate, say)
            if want(18):
                rows.append(
                    _mqtt_ingest(admin_url, f"bench_mqtt_{suffix}", options, batch_rate, say)
                )
            if want(19) or want(20):
                rows += _queue(wrk, admin_url, f"bench_queue_{suffix}", options, batch_rate, say)
            if want(21) or want(22):
                per_reading = f"bench_queue_reading_{suffix}"
                rows += _queue(wrk, admin_url, per_reading, options, batch_rate, say, READING)
        finally:
            asyncio.run(
                db.run_statements(
                    admin_url,
                    f"DROP DATABASE IF EXISTS {raw_db} WITH (FORCE)",
                    f"DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)",
                    f"DROP DATABASE IF EXISTS bench_fleet_{suffix} WITH (FORCE)",
                    f"DROP DATABASE IF EXISTS bench_mqtt_{suffix} WITH (FORCE)",
                    f"DROP DATABASE IF EXISTS bench_queue_{suffix} WITH (FORCE)",
                    f"DROP DATABASE IF EXISTS bench_queue_reading_{suffix} WITH (FORCE)",
                )
            )
    return sorted(rows, key=lambda row: row.number), version


def _rate(rows: list[Row], number: int) -> float:
    """The leading figure (e.g. readings/s) of the row numbered `number`."""
    (row,) = [row for row in rows if row.number == number]
    return float(row.measured.split()[0].replace(",", ""))


async def _fetchval(url: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(url, server_settings={"timezone": "UTC"})
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


# --- 1. the write statement alone -------------------------------------------------------


def _raw_ceiling(url: str, options: Options, say: Say) -> Row:
    rates = [
        asyncio.run(_raw_round(url, options.raw_seconds, run)) for run in range(options.repeat)
    ]
    rate = median(rates)
    say(f"  {', '.join(f'{r:,.0f}' for r in rates)} readings/s")
    return Row(
        1,
        "Write statement alone (no HTTP): 2 connections as the engine's writers, 10,000 "
        "readings (5,000 meter + 5,000 vehicle) per transaction",
        "reported (the ceiling for 2)",
        f"{rate:,.0f} readings/s",
        None,
        [f"runs: {', '.join(f'{r:,.0f}' for r in rates)} readings/s"],
    )


async def _raw_round(url: str, seconds: int, run: int) -> float:
    settings = Settings(_env_file=None, database_url=url)
    conn = await asyncpg.connect(url)
    try:
        await db.prepare(conn, settings)
    finally:
        await conn.close()
    pool = await db.create_writer_pool(url, settings)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=5)
    deadline = time.perf_counter() + seconds

    async def writer(number: int) -> int:
        written, minute = 0, 0
        while time.perf_counter() < deadline:
            at = start + timedelta(minutes=minute)
            meters = [
                MeterReading.model_construct(
                    meter_id=f"raw{run}-{number}-m{d}",
                    timestamp=at,
                    kwh_consumed_ac=minute * 0.17,
                    voltage=230.0,
                )
                for d in range(5000)
            ]
            vehicles = [
                VehicleReading.model_construct(
                    vehicle_id=f"raw{run}-{number}-v{d}",
                    timestamp=at,
                    soc=50.0,
                    kwh_delivered_dc=minute * 0.15,
                    battery_temp=25.0,
                )
                for d in range(5000)
            ]
            async with pool.acquire() as conn:
                await write_readings(conn, meters, vehicles)
            written += len(meters) + len(vehicles)
            minute += 1
        return written

    began = time.perf_counter()
    try:
        written = await asyncio.gather(*(writer(n) for n in range(2)))
    finally:
        await pool.close()
    return sum(written) / (time.perf_counter() - began)


# --- 2, 3. closed-model HTTP ingest --------------------------------------------------------


async def _stored(url: str, prefix: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(queries.stored_readings, prefix + "-%")
        return count
    finally:
        await conn.close()


def _wrk_ingest(
    wrk: str,
    base: str,
    url: str,
    options: Options,
    *,
    script: str,
    connections: int,
    seconds: int,
    per_request: int,
    say: Say,
    env: dict[str, str] | None = None,
) -> tuple[list[WrkRun], list[str], bool]:
    runs, checks, all_stored = [], [], True
    for _ in range(options.repeat):
        prefix = "b" + uuid.uuid4().hex[:6]
        run_env = {**(env or {}), "BENCH_PREFIX": prefix, "BENCH_BATCH": str(per_request)}
        run = run_wrk(
            wrk,
            options.scripts,
            script,
            base,
            connections=connections,
            seconds=seconds,
            env=run_env,
        )
        stored = asyncio.run(_stored(url, prefix))
        acknowledged = run.acknowledged * per_request
        all_stored &= stored >= acknowledged
        checks.append(f"{acknowledged:,} acknowledged, {stored:,} stored")
        say(
            f"  {run.per_second * per_request:,.0f} readings/s, p50 {run.p50_ms:.1f} ms, "
            f"p99 {run.p99_ms:.1f} ms, errors {run.status_errors}+{run.socket_errors}; "
            f"{checks[-1]}"
        )
        runs.append(run)
    return runs, checks, all_stored


def _batch_ingest(wrk: str, base: str, url: str, options: Options, ceiling: float, say: Say) -> Row:
    say("scenario 2: batches of 1,000 readings, wrk -c8")
    runs, checks, stored = _wrk_ingest(
        wrk,
        base,
        url,
        options,
        script="batch.lua",
        connections=8,
        seconds=options.batch_seconds,
        per_request=1000,
        say=say,
    )
    run = median_run(runs)
    rate = run.per_second * 1000
    share = rate / ceiling
    return Row(
        2,
        "HTTP batch ingest, 1,000 readings per request (mixed), 8 connections",
        "≥ 50,000 readings/s and ≥ 60 % of (1)",
        f"{rate:,.0f} readings/s = {share:.0%} of (1)",
        rate >= 50_000 and share >= 0.6 and stored,
        [_runs_line(runs, 1000), "acknowledged vs stored: " + "; ".join(checks)],
    )


# --- 14, 15. one stream, every reading of a batch a different vehicle ------------------------

STREAM_BATCH = 1000  # readings per request (15) and per statement (14)
STREAM_WORKERS = 2  # engine processes for (15)
WRK_THREADS = 2  # run_wrk's default; stream.lua's devices are per thread


def _stream_ceiling(url: str, options: Options, say: Say) -> Row:
    rates = [
        asyncio.run(_stream_round(url, options.stream_seconds, run, options.stream_devices))
        for run in range(options.repeat)
    ]
    rate = median(rates)
    say(f"  {', '.join(f'{r:,.0f}' for r in rates)} readings/s")
    return Row(
        14,
        f"Write statement alone (no HTTP) for the shape of (15): 2 connections as the engine's "
        f"writers, {STREAM_BATCH:,} vehicle readings of {STREAM_BATCH:,} different vehicles "
        f"(of {options.stream_devices:,}) per statement, {options.stream_seconds} s",
        "reported (the ceiling for (15))",
        f"{rate:,.0f} readings/s",
        None,
        [f"runs: {', '.join(f'{r:,.0f}' for r in rates)} readings/s"],
    )


async def _stream_round(url: str, seconds: int, run: int, devices: int) -> float:
    """The write statement as (15) makes the engine run it: vehicles only, each writer on its
    own half of the vehicles in blocks of STREAM_BATCH, each pass over them a second later
    than the one before (live readings, each a new one)."""
    settings = Settings(_env_file=None, database_url=url)
    conn = await asyncpg.connect(url)
    try:
        await db.prepare(conn, settings)
    finally:
        await conn.close()
    pool = await db.create_writer_pool(url, settings)
    start = datetime.now(UTC).replace(microsecond=0)
    share = devices // 2
    deadline = time.perf_counter() + seconds

    async def writer(number: int) -> int:
        counter = 0
        while time.perf_counter() < deadline:
            vehicles = []
            for _ in range(STREAM_BATCH):
                passed, device = divmod(counter, share)
                counter += 1
                vehicles.append(
                    VehicleReading.model_construct(
                        vehicle_id=f"s{run}-{number}-v{device}",
                        timestamp=start + timedelta(seconds=passed),
                        soc=20.0 + passed % 80,
                        kwh_delivered_dc=passed * 0.0025,
                        battery_temp=25.0 + device % 10,
                    )
                )
            async with pool.acquire() as conn:
                await write_readings(conn, [], vehicles)
        return counter

    began = time.perf_counter()
    try:
        written = await asyncio.gather(*(writer(n) for n in range(2)))
    finally:
        await pool.close()
    return sum(written) / (time.perf_counter() - began)


def _stream_ingest(
    wrk: str, url: str, options: Options, ceiling: float, say: Say
) -> tuple[Row, dict[int, int]]:
    """(15), on an engine of its own with STREAM_WORKERS processes; also the highest memory of
    each of them during the runs."""
    say(
        f"scenario 15: batches of {STREAM_BATCH:,} vehicle readings from "
        f"{options.stream_devices:,} vehicles, --workers {STREAM_WORKERS}, wrk -c8"
    )
    log = options.work / "engine-stream.log"
    with serve(url, workers=STREAM_WORKERS, log=log) as server, rss_peaks(server.pid) as peaks:
        runs, checks, stored = _wrk_ingest(
            wrk,
            server.base,
            url,
            options,
            script="stream.lua",
            connections=8,
            seconds=options.stream_seconds,
            per_request=STREAM_BATCH,
            say=say,
            env={"BENCH_DEVICES": str(options.stream_devices // WRK_THREADS)},
        )
        found = dict(peaks)
    run = median_run(runs)
    rate = run.per_second * STREAM_BATCH
    share = rate / ceiling
    return (
        Row(
            15,
            f"HTTP batch ingest of one stream: {STREAM_BATCH:,} vehicle readings per request, "
            f"each of a different vehicle (of {options.stream_devices:,}, so every request "
            f"touches {STREAM_BATCH:,} hot rows), 8 connections, `--workers {STREAM_WORKERS}`, "
            f"{options.stream_seconds} s",
            "≥ 50,000 readings/s and ≥ 85 % of (14)",
            f"{rate:,.0f} readings/s = {share:.0%} of (14)",
            rate >= 50_000 and share >= 0.85 and stored,
            [_runs_line(runs, STREAM_BATCH), "acknowledged vs stored: " + "; ".join(checks)],
        ),
        found,
    )


# --- 16. engine memory ---------------------------------------------------------------------

RSS_LIMIT_MB = 300


def _megabytes(peaks: dict[int, int]) -> str:
    return ", ".join(f"{rss / 1e6:.0f} MB" for _, rss in sorted(peaks.items()))


def _engine_rss(batch: dict[int, int], stream: dict[int, int], options: Options) -> Row:
    highest = max(batch.values(), default=0) / 1e6
    return Row(
        16,
        "Engine memory during scenario 2 (batch ingest): the highest resident set size (VmRSS) "
        f"of each engine process answering requests (`--workers {options.workers}`), "
        "sampled every 0.2 s",
        f"≤ {RSS_LIMIT_MB} MB per worker",
        f"{highest:.0f} MB at most ({len(batch)} worker{'s' * (len(batch) != 1)}: "
        f"{_megabytes(batch)})",
        bool(batch) and highest <= RSS_LIMIT_MB,
        [
            f"scenario 2, per worker: {_megabytes(batch)}",
            f"scenario 15 (`--workers {STREAM_WORKERS}`), per worker: {_megabytes(stream)}",
        ],
    )


def _single_ingest(wrk: str, base: str, url: str, options: Options, say: Say) -> Row:
    say(f"scenario 3: single readings, wrk -c64 -d{options.single_seconds}s")
    runs, checks, stored = _wrk_ingest(
        wrk,
        base,
        url,
        options,
        script="single.lua",
        connections=64,
        seconds=options.single_seconds,
        per_request=1,
        say=say,
    )
    run = median_run(runs)
    errors = sum(r.status_errors + r.socket_errors for r in runs)
    return Row(
        3,
        f"Single-reading POST, 64 connections, {options.single_seconds} s, committed before "
        "the answer",
        "≥ 5,000 req/s, p99 ≤ 50 ms, 0 errors, 0 lost",
        f"{run.per_second:,.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
        f"{errors} errors, {'0 lost' if stored else 'READINGS LOST'}",
        run.per_second >= 5000 and run.p99_ms <= 50 and errors == 0 and stored,
        [_runs_line(runs, 1), "acknowledged vs stored: " + "; ".join(checks)],
    )


def _auth_cost(wrk: str, url: str, options: Options, say: Say) -> Row:
    """Single readings with API keys checked and with authentication off, one engine after the
    other for each repeat, so that both see the same machine and the same database."""
    seconds = options.single_seconds
    say(f"scenario 11: single readings, authentication on and off, wrk -c64 -d{seconds}s")
    runs: dict[str, list[WrkRun]] = {"on": [], "off": []}
    for _ in range(options.repeat):
        for mode in ("on", "off"):
            os.environ["ENERGY_AUTH"] = mode
            try:
                with engine(url, workers=options.workers, log=options.work / "auth.log") as base:
                    env = {"BENCH_PREFIX": "a" + uuid.uuid4().hex[:6], "BENCH_BATCH": "1"}
                    run = run_wrk(
                        wrk, options.scripts, "single.lua", base, connections=64,
                        seconds=seconds, env=env,
                    )  # fmt: skip
            finally:
                os.environ.pop("ENERGY_AUTH")
            say(f"  auth {mode}: {run.per_second:,.0f} req/s, p99 {run.p99_ms:.1f} ms")
            runs[mode].append(run)
    on, off = median_run(runs["on"]), median_run(runs["off"])
    share = on.per_second / off.per_second
    return Row(
        11,
        "Single-reading POST with API keys checked, against authentication off (interleaved, "
        "64 connections)",
        "≥ 90 % of the requests/s without authentication",
        f"{on.per_second:,.0f} req/s (p99 {on.p99_ms:.1f} ms) against {off.per_second:,.0f} "
        f"(p99 {off.p99_ms:.1f} ms) = {share:.0%}",
        share >= 0.9,
        [f"auth {mode}: " + _runs_line(found, 1) for mode, found in runs.items()],
    )


def _runs_line(runs: list[WrkRun], per_request: int) -> str:
    return "runs (median taken): " + "; ".join(
        f"{r.per_second * per_request:,.0f}/s p99 {r.p99_ms:.1f} ms" for r in runs
    )


# --- 4. open-model load ---------------------------------------------------------------------


def _open_model(base: str, url: str, options: Options, say: Say) -> Row:
    target = options.open_rate * 100
    details = []
    rate = options.open_rate
    held: float | None = None
    first = None
    while rate >= options.open_rate * 0.3:
        say(f"scenario 4: open model, {rate * 100:,.0f} readings/s for {options.open_seconds} s")
        prefix = "o" + uuid.uuid4().hex[:6]
        result = asyncio.run(
            open_load(
                base,
                requests_per_second=rate,
                readings_per_request=100,
                seconds=options.open_seconds,
                prefix=prefix,
            )
        )
        stored = asyncio.run(_stored(url, prefix))
        ok = result.failed == 0 and result.p99_ms <= 100 and stored >= result.acknowledged * 100
        line = (
            f"{rate * 100:,.0f} readings/s offered: {result.readings_per_second:,.0f}/s "
            f"acknowledged, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
            f"{result.failed} failed {result.errors or ''}, {stored:,} stored of "
            f"{result.acknowledged * 100:,} "
            "acknowledged"
        )
        say("  " + line)
        details.append(line)
        first = first or result
        if ok:
            held = rate * 100
            break
        rate *= 0.75  # not held: look for the highest rate that is, in steps of a quarter
    assert first is not None
    measured = (
        f"p99 {first.p99_ms:.1f} ms at {target:,.0f}/s, {first.failed} failed"
        if held == target
        else f"not held at {target:,.0f}/s (p99 {first.p99_ms:.0f} ms); highest held: "
        + (f"{held:,.0f}/s" if held else f"none down to {rate / 0.75 * 100:,.0f}/s")
    )
    return Row(
        4,
        f"Open-model load: {options.open_rate:,.0f} requests/s × 100 readings "
        f"(4,000 gateways × 100 devices), {options.open_seconds} s",
        f"{target:,.0f} readings/s held with p99 ≤ 100 ms",
        measured,
        held == target,
        details,
    )


# --- 5, 6. history for the analytics: simulate, import, then ten times as much ----------------


def _seed_and_import(base: str, url: str, options: Options, say: Say) -> Row:
    sim = options.work / "fleet.ndjson"
    fleet = str(options.fleet)
    say(f"scenario 6: simulate {fleet} meters and {fleet} vehicles × 24 h into {sim}")
    subprocess.run(
        [
            *(sys.executable, "-m", "energy_engine.cli", "simulate", "--meters", fleet),
            *("--vehicles", fleet, "--backfill", "1", "--out", str(sim), "--seed", "7"),
        ],
        check=True,
        capture_output=True,
    )
    lines = sum(1 for _ in sim.open("rb"))
    say(f"  importing {lines:,} readings")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "energy_engine.cli", "import", str(sim), "--quiet"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"import failed:\n{done.stdout}\n{done.stderr}")
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    # The command's own figure (reading, validating, COPY and merge; not the interpreter's
    # start-up and the migrations check), else the wall time of the whole command.
    own = re.search(r"([\d,]+) rows/s", summary)
    rate = float(own[1].replace(",", "")) if own else lines / seconds
    say(f"  {rate:,.0f} readings/s; whole command {lines / seconds:,.0f}/s ({seconds:.1f} s)")
    asyncio.run(post_assignments(base, sim))
    return Row(
        6,
        f"Bulk import: `energy-engine import` of the simulator's NDJSON ({lines:,} readings)",
        "≥ 100,000 readings/s",
        f"{rate:,.0f} readings/s",
        rate >= 100_000,
        [
            f"the command's summary: {summary}",
            f"wall time of the whole command, start-up and migrations check included: "
            f"{seconds:.1f} s = {lines / seconds:,.0f} readings/s",
        ],
    )


async def post_assignments(base: str, sim: Path) -> None:
    """POST the simulator's assignments (written beside `sim`) to the engine at `base`."""
    stats = Stats()
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=api_headers()) as client:
        await send.post_assignments(
            client, files.read_assignments(files.assignments_path(sim)), stats
        )
    if stats.assignment_errors:
        raise RuntimeError(f"assignments failed: {stats.first_error}")


OLDER_HISTORY = (queries.older_meter_history, queries.older_vehicle_history)


async def _add_older_history(url: str, fleet: int, days: int) -> None:
    """`days` more days of history before the simulated day, for the same devices (SQL:
    the simulator would take minutes for what generate_series writes in seconds)."""
    first_day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day -= timedelta(days=days + 1)
    conn = await asyncpg.connect(url)
    try:
        await db.ensure_partitions(conn, first_day.date(), (first_day + timedelta(days)).date())
        for offset in range(days):
            for query in OLDER_HISTORY:
                await conn.execute(query, first_day + timedelta(days=offset), fleet)
        # Written behind the engine's back: have the refresher roll everything up again.
        await conn.execute(queries.roll_up_again)
        await conn.execute("VACUUM ANALYZE meter_readings, vehicle_readings")
    finally:
        await conn.close()


def _analytics(wrk: str, base: str, url: str, options: Options, say: Say) -> Row:
    waited = asyncio.run(fleet.rollups_caught_up(url))
    say(f"  rollups caught up with the imported day {waited:.0f} s after the import")
    asyncio.run(vacuum(url))
    env = {"BENCH_VEHICLES": str(options.fleet)}

    def measure(label: str) -> list[WrkRun]:
        say(f"scenario 5: analytics, {label}, wrk -c10")
        runs = []
        for _ in range(options.repeat):
            run = run_wrk(
                wrk,
                options.scripts,
                "analytics.lua",
                base,
                connections=10,
                seconds=options.analytics_seconds,
                env=env,
            )
            say(f"  {run.per_second:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms")
            runs.append(run)
        return runs

    small = measure("24 h of history")
    say("  ceilings: the report's statement alone (pgbench -c10), GET /health/live (wrk -c10)")
    end = datetime.now(UTC)
    ceiling = ceilings.measure(
        wrk,
        options.scripts,
        base,
        url,
        vehicles=options.fleet,
        start=end - timedelta(hours=24),
        end=end,
        seconds=options.ceiling_seconds,
        work=options.work,
    )
    say(f"  {ceiling.line()}")
    extra = options.history_factor - 1
    say(f"  adding {extra} older days of history for the same fleet")
    asyncio.run(_add_older_history(url, options.fleet, extra))
    rebuilt = asyncio.run(fleet.rollups_caught_up(url))
    say(f"  rollups rebuilt over all {options.history_factor} days in {rebuilt:.0f} s")
    large = measure(f"{options.history_factor}× the history")
    one, ten = median_run(small), median_run(large)
    growth = ten.p50_ms / one.p50_ms - 1
    errors = sum(r.status_errors + r.socket_errors for r in small + large)
    return Row(
        5,
        f"Analytics `GET /v1/analytics/performance/{{id}}`, {options.fleet:,} vehicles × 24 h "
        f"of history, then {options.history_factor}× the history; 10 connections",
        "≥ 2,500 req/s, p99 ≤ 15 ms; latency with more history within 20 %",
        f"{one.per_second:,.0f} req/s, p50 {one.p50_ms:.1f} ms, p99 {one.p99_ms:.1f} ms; "
        f"{options.history_factor}× history: {ten.per_second:,.0f} req/s, "
        f"p50 {ten.p50_ms:.1f} ms ({growth:+.0%}), p99 {ten.p99_ms:.1f} ms",
        one.p99_ms <= 15 and one.per_second >= 2500 and growth <= 0.2 and errors == 0,
        [
            "24 h: " + _runs_line(small, 1),
            ceiling.line(),
            f"{options.history_factor}× history: " + _runs_line(large, 1),
            f"{errors} errors",
            f"measured once the rollups had caught up: {waited:.0f} s after the import of the "
            f"day, {rebuilt:.0f} s to roll up all {options.history_factor} days again",
        ],
    )


async def vacuum(url: str) -> None:
    """VACUUM ANALYZE the whole database: measure on fresh statistics, not on autovacuum's luck."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# --- 7. storage -------------------------------------------------------------------------------

COUNTS = {
    "meter_readings": queries.meter_readings_count,
    "vehicle_readings": queries.vehicle_readings_count,
}


async def _storage(url: str) -> Row:
    conn = await asyncpg.connect(url)
    try:
        sizes = {}
        for table, count in COUNTS.items():
            row = await conn.fetchrow(queries.partition_sizes, table)
            assert row is not None
            sizes[table] = {"heap": row["heap"], "indexes": row["indexes"]}
            sizes[table]["rows"] = await conn.fetchval(count)
    finally:
        await conn.close()
    per_row = {t: (s["heap"] + s["indexes"]) / s["rows"] for t, s in sizes.items()}
    rows = sum(s["rows"] for s in sizes.values())
    overall = sum(s["heap"] + s["indexes"] for s in sizes.values()) / rows
    return Row(
        7,
        "Storage of recent history: heap + every index (primary key and BRIN) of "
        f"meter_readings and vehicle_readings per reading ({rows:,} readings after the runs "
        "above)",
        "≤ 80 bytes",
        f"{overall:.1f} B (meter {per_row['meter_readings']:.1f}, vehicle "
        f"{per_row['vehicle_readings']:.1f})",
        overall <= 80,
        [
            f"{t}: heap {s['heap'] / s['rows']:.1f} B + indexes {s['indexes'] / s['rows']:.1f} B "
            f"over {s['rows']:,} rows"
            for t, s in sizes.items()
        ],
    )


# --- 8-10, 12, 13, 17. fleet analytics over rollups, packed history ------------------------


def _fleet(
    wrk: str, admin_url: str, name: str, options: Options, batch_rate: float, say: Say
) -> list[Row]:
    asyncio.run(db.run_statements(admin_url, f"CREATE DATABASE {name}"))
    url = db.with_database(admin_url, name)
    size = options.fleet_size
    say(
        f"scenarios 8-10, 12, 13, 17: {size:,} meters and {size:,} vehicles from an hour before "
        "yesterday up to now, written by SQL"
    )
    fleet.migrate(url)
    began = time.perf_counter()
    history = asyncio.run(fleet.write_history(url, size))
    readings = history.readings
    say(f"  {readings:,} readings in {time.perf_counter() - began:.0f} s; rolling them up")
    rolled_in = asyncio.run(fleet.roll_up(url))
    roll_rate = readings / rolled_in
    say(f"  rolled up in {rolled_in:.1f} s ({roll_rate:,.0f} readings/s)")
    measured = fleet.measure(
        wrk,
        options.scripts,
        url,
        options.work / "engine-fleet.log",
        fleet=size,
        day=history.day,
        requests=options.fleet_requests,
        repeat=options.repeat,
        seconds=options.analytics_seconds,
        ceiling_seconds=options.ceiling_seconds,
        work=options.work,
    )
    aligned = statistics.median(measured.aligned)
    shifted = statistics.median(measured.shifted)
    default = statistics.median(measured.default)
    say(f"  fleet ranking, calendar day: {fleet.summary_line(measured.aligned)}")
    say(f"  fleet ranking, half past: {fleet.summary_line(measured.shifted)}")
    say(f"  fleet ranking, default window: {fleet.summary_line(measured.default)}")
    month = median_run(measured.month)
    say(f"  30-day summaries: {month.per_second:,.0f} req/s, p99 {month.p99_ms:.1f} ms")
    say(f"  {measured.month_ceilings.line()}")
    say("scenario 17: packing the days before the measured day")
    log = options.work / "engine-fleet.log"
    packed = fleet.pack_and_compare(url, log, fleet=size, day=history.day)
    say(
        f"  {packed.packed:,} readings packed in {packed.seconds:.1f} s: "
        f"{packed.per_reading:.1f} B each; {len(packed.mismatches)} of {packed.requests} "
        "answers changed"
    )
    # Upkeep: rolling a reading up costs 1/roll_rate s of the database, writing it through
    # the API 1/batch_rate s; at the ingest ceiling, that share of the time goes to rollups.
    upkeep = batch_rate / (batch_rate + roll_rate)
    long = min(size, fleet.LONG_HISTORY_VEHICLES)
    errors = sum(r.status_errors + r.socket_errors for r in measured.month)
    in_window = f"{size * 1440:,} vehicle + {size * 1440:,} meter readings in the window"
    data = (
        f"the data: {readings:,} readings in all, up to {fleet.iso(history.written_to)}, "
        f"rolled up in {rolled_in:.1f} s"
    )
    return [
        Row(
            8,
            f"Fleet ranking `GET /v1/analytics/fleet`, {size:,} vehicles, a whole-hour calendar "
            f"day ({in_window}), sequential requests",
            "p50 ≤ 100 ms",
            f"p50 {aligned:.0f} ms, p90 {fleet.percentile(measured.aligned, 0.9):.0f} ms",
            aligned <= 100,
            [f"yesterday, UTC: {fleet.summary_line(measured.aligned)}", data],
        ),
        Row(
            9,
            f"Per-vehicle 30-day summary `GET /v1/analytics/performance/{{id}}?from&to` "
            f"(30 days ending at half past an hour), {long} vehicles with 30 days of "
            "history; 10 connections",
            "≥ 2,500 req/s, p99 ≤ 15 ms",
            f"{month.per_second:,.0f} req/s, p50 {month.p50_ms:.1f} ms, p99 {month.p99_ms:.1f} ms",
            month.per_second >= 2500 and month.p99_ms <= 15 and errors == 0,
            [
                _runs_line(measured.month, 1),
                measured.month_ceilings.line(),
                f"{errors} errors",
                "30 daily points of `/series` for one vehicle: "
                + fleet.summary_line(measured.series),
            ],
        ),
        Row(
            10,
            "Rollup upkeep: share of ingest throughput spent rolling readings up",
            "≤ 25 %",
            f"{upkeep:.0%}",
            upkeep <= 0.25,
            [
                f"rolling up {readings:,} readings took {rolled_in:.1f} s: "
                f"{roll_rate:,.0f} readings/s",
                f"batch ingest through the API (scenario 2): {batch_rate:,.0f} readings/s",
                "ingesting and rolling up each reading at those rates spends "
                f"{upkeep:.0%} of the time on the rollup: ingest with rollups runs at "
                f"{1 / (1 / batch_rate + 1 / roll_rate):,.0f} instead of {batch_rate:,.0f} "
                "readings/s",
                "the write statement's own share (a dirty mark for readings older than the "
                "sealed hour) is inside scenarios 1 and 2",
            ],
        ),
        Row(
            12,
            f"Fleet ranking, {size:,} vehicles, a day starting at half past an hour ({in_window}; "
            "the first and last half hours cut inside their hours, every device's readings in "
            "them counted), sequential requests",
            "p50 ≤ 300 ms",
            f"p50 {shifted:.0f} ms, p90 {fleet.percentile(measured.shifted, 0.9):.0f} ms",
            shifted <= 300,
            [f"yesterday 00:30 to today 00:30, UTC: {fleet.summary_line(measured.shifted)}"],
        ),
        Row(
            13,
            f"Fleet ranking, {size:,} vehicles, the default window (no from/to: the last 24 "
            "whole hours, rarely a calendar day), sequential requests",
            "p50 ≤ 100 ms",
            f"p50 {default:.0f} ms, p90 {fleet.percentile(measured.default, 0.9):.0f} ms",
            default <= 100,
            [f"{measured.default_window}: {fleet.summary_line(measured.default)}", data],
        ),
        _packed_row(packed),
    ]


def _packed_row(packed: fleet.Packed) -> Row:
    raw_before, raw_after = packed.raw_bytes
    changed = len(packed.mismatches)
    complete = packed.packed == packed.raw_readings and packed.raw_left == 0
    return Row(
        17,
        "Storage of packed history: `pack_readings_before` over every day before the fleet's "
        "measured day, then heap + indexes + TOAST of meter_readings_packed and "
        f"vehicle_readings_packed per packed reading ({packed.packed:,} readings); "
        f"{packed.requests} analytics answers over those days compared before and after",
        "≤ 25 bytes, every answer unchanged (exact)",
        f"{packed.per_reading:.1f} B, {changed} of {packed.requests} answers changed"
        + ("" if complete else ", READINGS NOT ALL PACKED"),
        packed.per_reading <= 25 and changed == 0 and complete,
        [
            f"packed before {fleet.iso(packed.before)} in {packed.seconds:.1f} s: "
            f"{packed.packed:,} readings reported packed, {packed.raw_readings:,} raw readings "
            f"there before, {packed.raw_left:,} after",
            f"packed tables: {packed.packed_bytes:,} bytes (pg_total_relation_size of their "
            "partitions, after VACUUM ANALYZE)",
            f"raw tables, heap + indexes + TOAST: {raw_before:,} bytes before packing, "
            f"{raw_after:,} after (VACUUM; the emptied partitions' indexes not rebuilt)",
            "answers compared: per-vehicle reports, series and fleet rankings over those days "
            "(fleet.old_requests), from engines started before and after packing",
            *packed.mismatches,
        ],
    )


# --- 18. MQTT ingest end to end ----------------------------------------------------------------

MQTT_PER_MESSAGE = 100  # readings per message, all of one device (the topic names it)
MQTT_PUBLISHERS = 2  # publisher processes: one Python publisher caps at a core
POLL_S = 0.1  # how often the bench looks whether the readings are stored
STALLED_S = 15.0  # no progress for this long: what is missing is lost


def _mqtt_ingest(admin_url: str, name: str, options: Options, batch_rate: float, say: Say) -> Row:
    """(18): bursts of array payloads published at QoS 1 into a Mosquitto of the bench's own,
    stored by an engine subscribed to it; the clock runs from the first publish until every
    reading the broker acknowledged is in PostgreSQL."""
    messages = options.mqtt_readings // MQTT_PER_MESSAGE
    readings = messages * MQTT_PER_MESSAGE
    asyncio.run(db.run_statements(admin_url, f"CREATE DATABASE {name}"))
    url = db.with_database(admin_url, name)
    say(
        f"scenario 18: MQTT, {readings:,} readings in messages of {MQTT_PER_MESSAGE} at QoS 1 "
        f"from {MQTT_PUBLISHERS} publisher processes"
    )

    def publish(prefix: str) -> mqttload.Published:
        return mqttload.run(
            broker, prefix, publishers=MQTT_PUBLISHERS, messages=messages,
            per_message=MQTT_PER_MESSAGE,
        )  # fmt: skip

    # The broker holds what the engine has not taken yet: a whole run, not Mosquitto's 1,000.
    with brokers.mosquitto(options.work / "mosquitto", max_queued=messages + 1000) as broker:
        alone = publish("c" + uuid.uuid4().hex[:6])
        ceiling = alone.acknowledged * MQTT_PER_MESSAGE / alone.seconds
        say(f"  publishers against the broker alone (no subscriber): {ceiling:,.0f} readings/s")
        log = options.work / "engine-mqtt.log"
        with serve(url, workers=options.workers, log=log, env={"MQTT_URL": broker}):
            _wait_subscribed(broker, url)
            rates, lines, checks, all_stored = [], [], [], True
            for _ in range(options.repeat):
                prefix = "q" + uuid.uuid4().hex[:6]
                sent = publish(prefix)
                acknowledged = sent.acknowledged * MQTT_PER_MESSAGE
                stored, seconds = asyncio.run(_wait_stored(url, prefix, sent, acknowledged))
                rate = stored / seconds
                all_stored &= acknowledged == readings and stored >= acknowledged
                took = sent.seconds
                published = f"published in {took:.1f} s, {acknowledged / took:,.0f}/s"
                rates.append(rate)
                lines.append(f"{rate:,.0f}/s ({published})")
                checks.append(f"{acknowledged:,} acknowledged by the broker, {stored:,} stored")
                say(f"  {rate:,.0f} readings/s, all stored in {seconds:.1f} s; {checks[-1]}")
    rate = median(rates)
    share = rate / batch_rate
    return Row(
        18,
        f"MQTT ingest end to end: {readings:,} readings published as JSON arrays of "
        f"{MQTT_PER_MESSAGE} (one device a message) at QoS 1 by {MQTT_PUBLISHERS} publisher "
        f"processes to Mosquitto, stored by the engine subscribed (`--workers "
        f"{options.workers}`); from the first publish until all are in PostgreSQL",
        "≥ (2)'s readings/s, nothing lost",
        f"{rate:,.0f} readings/s = {share:.0%} of (2)" + ("" if all_stored else ", READINGS LOST"),
        rate >= batch_rate and all_stored,
        [
            "runs (median taken): " + "; ".join(lines),
            f"the publishers alone against the broker alone (no subscriber; the ceiling): "
            f"{ceiling:,.0f} readings/s ({alone.acknowledged:,} messages in {alone.seconds:.1f} s)",
            "acknowledged vs stored: " + "; ".join(checks),
        ],
    )


def _wait_subscribed(broker: str, url: str) -> None:
    """Publish one reading until the engine has stored it: the engine answers /health/ready
    before its MQTT subscription is in place, and the broker drops what no one subscribes to."""
    at = datetime.now(UTC).replace(microsecond=0)
    item = [("energy/meters/probe-m0", orjson.dumps([{
        "meterId": "probe-m0", "kwhConsumedAc": 1.0, "voltage": 230.0,
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }]))]  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        mqttload.run_once(broker, item)
        until = time.monotonic() + 1
        while time.monotonic() < until:
            if asyncio.run(_stored(url, "probe")):
                return
            time.sleep(POLL_S)
        if time.monotonic() > deadline:
            raise BenchError("the engine stored no MQTT reading in 60 s; see engine-mqtt.log")


async def _wait_stored(
    url: str, prefix: str, sent: mqttload.Published, acknowledged: int
) -> tuple[int, float]:
    """Wait until the `acknowledged` readings of the run are stored, or until nothing has
    moved for STALLED_S; returns the readings stored and the seconds since the first publish."""
    last_at = sent.start + timedelta(seconds=MQTT_PER_MESSAGE - 1)
    conn = await asyncpg.connect(url)
    try:
        seen, moved = -1, time.monotonic()
        # Cheap while it lasts: a row a device in the state tables, not one a reading.
        while True:
            devices: int = await conn.fetchval(queries.devices_caught_up, prefix + "-%", last_at)
            if devices >= sent.acknowledged:
                break
            if devices != seen:
                seen, moved = devices, time.monotonic()
            elif time.monotonic() - moved > STALLED_S:
                break
            await asyncio.sleep(POLL_S)
        seen, moved = -1, time.monotonic()
        while True:  # a message's readings may span two of the writer's flushes
            stored: int = await conn.fetchval(queries.stored_readings, prefix + "-%")
            seconds = time.perf_counter() - sent.began
            if stored >= acknowledged:
                break
            if stored != seen:
                seen, moved = stored, time.monotonic()
            elif time.monotonic() - moved > STALLED_S:
                break
            await asyncio.sleep(POLL_S)
        return stored, seconds
    finally:
        await conn.close()


# --- 19, 20. queue mode (NATS JetStream) ---------------------------------------------------------

QUEUE_BATCH = 1000  # readings per request, as (2)


@dataclass(frozen=True, slots=True)
class QueueForm:
    """Which queue-mode rows are measured: the message form and the rows' numbers."""

    message_per: str
    ingest_row: int
    drain_row: int

    @property
    def target(self) -> str:
        """Rows 19-20 hold the issue's targets; the per-reading form's cost is reported."""
        return "≥ (2)'s readings/s, nothing lost" if self.message_per == "request" else "reported"

    @property
    def label(self) -> str:
        """How the row names the form."""
        return f"`ENERGY_QUEUE_MESSAGE_PER={self.message_per}`"

    def verdict(self, rate: float, rate_2: float, all_stored: bool) -> tuple[str, str, bool | None]:
        """A row's target, measured figure and verdict for `rate` readings/s against (2)."""
        measured = f"{rate:,.0f} readings/s = {rate / rate_2:.0%} of (2)"
        measured += "" if all_stored else ", READINGS LOST"
        met = rate >= rate_2 and all_stored if self.message_per == "request" else None
        return self.target, measured, met


@dataclass(frozen=True, slots=True)
class QueueRun:
    """What the queue-mode rows of one form run against: an engine in queue mode and its
    database, the rate of (2) they are a share of, and the form."""

    wrk: str
    base: str
    url: str
    env: dict[str, str]
    options: Options
    rate_2: float
    say: Say
    form: QueueForm


REQUEST = QueueForm("request", 19, 20)
READING = QueueForm("reading", 21, 22)


def _queue(
    wrk: str,
    admin_url: str,
    name: str,
    options: Options,
    batch_rate: float,
    say: Say,
    form: QueueForm = REQUEST,
) -> list[Row]:
    """(19) and (20), or (21) and (22) with a message per reading, on an engine in queue mode,
    a nats-server of the bench's own and a database of their own."""
    asyncio.run(db.run_statements(admin_url, f"CREATE DATABASE {name}"))
    url = db.with_database(admin_url, name)
    with brokers.nats_server(options.work / f"nats-{form.message_per}") as nats:
        env = {
            "ENERGY_INGEST_MODE": "queue",
            "NATS_URL": nats,
            "ENERGY_QUEUE_MESSAGE_PER": form.message_per,
        }
        log = options.work / f"engine-queue-{form.message_per}.log"
        with serve(url, workers=options.workers, log=log, env=env) as server:
            run = QueueRun(wrk, server.base, url, env, options, batch_rate, say, form)
            return [_queue_ingest(run), _queue_drain(run)]


def _fill(wrk: str, base: str, options: Options, prefix: str) -> WrkRun:
    """(2)'s load: batches of QUEUE_BATCH mixed readings, 8 connections, 202 a success."""
    return run_wrk(
        wrk,
        options.scripts,
        "batch.lua",
        base,
        connections=8,
        seconds=options.batch_seconds,
        env={"BENCH_PREFIX": prefix, "BENCH_BATCH": str(QUEUE_BATCH)},
    )


def _queue_lag(base: str) -> int | None:
    """Messages in the stream not yet committed by a worker (the readiness answer's); None
    when the engine could not say (JetStream slow to answer)."""
    with suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        lag: int = httpx.get(f"{base}/health/ready", timeout=10).json()["queueLag"]["messages"]
        return lag
    return None


def _drained(base: str, worker: subprocess.Popen[bytes]) -> tuple[float, float | None]:
    """Wait until the stream is empty, or its lag has not gone down for STALLED_S; returns the
    seconds waited, and those until the lag first went down (None: it never did)."""
    began = time.perf_counter()
    first, moved = None, time.monotonic()
    seen = None
    while True:
        lag = _queue_lag(base)
        if lag == 0:
            break
        if lag is not None and seen is not None and lag < seen:
            first = first or time.perf_counter() - began
            moved = time.monotonic()
        elif time.monotonic() - moved > STALLED_S:
            break
        if worker.poll() is not None:
            raise BenchError(f"energy-engine worker exited ({worker.returncode}); see worker.log")
        seen = lag if lag is not None else seen
        time.sleep(POLL_S)
    return time.perf_counter() - began, first


def _queue_ingest(q: QueueRun) -> Row:
    wrk, base, url, env, options, say, form = q.wrk, q.base, q.url, q.env, q.options, q.say, q.form
    say(
        f"scenario {form.ingest_row}: queue mode ({form.message_per} a message), batches of "
        "1,000 readings, wrk -c8, one worker writing"
    )
    runs, checks, all_stored = [], [], True
    with queue_worker(url, env=env, log=options.work / "worker.log") as worker:
        for _ in range(options.repeat):
            prefix = "j" + uuid.uuid4().hex[:6]
            run = _fill(wrk, base, options, prefix)
            waited, _ = _drained(base, worker)
            stored = asyncio.run(_stored(url, prefix))
            acknowledged = run.acknowledged * QUEUE_BATCH
            all_stored &= stored >= acknowledged > 0
            checks.append(
                f"{acknowledged:,} acknowledged, {stored:,} stored ({waited:.1f} s after the load)"
            )
            say(
                f"  {run.per_second * QUEUE_BATCH:,.0f} readings/s, p50 {run.p50_ms:.1f} ms, "
                f"p99 {run.p99_ms:.1f} ms, errors {run.status_errors}+{run.socket_errors}; "
                f"{checks[-1]}"
            )
            runs.append(run)
    run = median_run(runs)
    rate = run.per_second * QUEUE_BATCH
    return Row(
        form.ingest_row,
        f"Queue mode (`ENERGY_INGEST_MODE=queue`, a NATS JetStream server, {form.label}): HTTP "
        "batch ingest as (2), 1,000 readings per request, 8 connections, answered 202 once in "
        "the stream; one `energy-engine worker` writing to PostgreSQL meanwhile",
        *form.verdict(rate, q.rate_2, all_stored),
        [
            _runs_line(runs, QUEUE_BATCH),
            "acknowledged (202) vs stored once the stream was empty: " + "; ".join(checks),
        ],
    )


def _queue_drain(q: QueueRun) -> Row:
    wrk, base, url, env, options, say, form = q.wrk, q.base, q.url, q.env, q.options, q.say, q.form
    say(
        f"scenario {form.drain_row}: queue mode, a backlog of {options.batch_seconds} s of "
        f"({form.ingest_row})'s load drained"
    )
    rates, lines, checks, all_stored = [], [], [], True
    for _ in range(options.repeat):
        prefix = "k" + uuid.uuid4().hex[:6]
        run = _fill(wrk, base, options, prefix)  # no worker: it all waits in the stream
        backlog = run.acknowledged * QUEUE_BATCH
        with queue_worker(url, env=env, log=options.work / "worker.log") as worker:
            seconds, first = _drained(base, worker)
        stored = asyncio.run(_stored(url, prefix))
        all_stored &= stored >= backlog > 0
        rate = backlog / seconds
        after = (
            f", {backlog / (seconds - first):,.0f}/s from its first commit ({first:.1f} s)"
            if first is not None and seconds > first
            else ""
        )
        rates.append(rate)
        lines.append(f"{rate:,.0f}/s ({backlog:,} readings in {seconds:.1f} s{after})")
        checks.append(f"{backlog:,} acknowledged, {stored:,} stored")
        say(f"  {lines[-1]}; {checks[-1]}")
    rate = median(rates)
    return Row(
        form.drain_row,
        f"Queue mode backlog drain ({form.label}): ({form.ingest_row})'s load for "
        f"{options.batch_seconds} s with no worker running (the backlog in the stream), then "
        "one `energy-engine worker` started; from its start until the stream is empty",
        *form.verdict(rate, q.rate_2, all_stored),
        [
            "runs (median taken; the worker's start-up included): " + "; ".join(lines),
            "acknowledged (202) vs stored: " + "; ".join(checks),
        ],
    )
