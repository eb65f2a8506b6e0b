"""The engine's Prometheus metrics, and the text `GET /metrics` answers.

One process (`serve`, tests): the metrics live in prometheus_client's default registry.
Several (`serve --workers N`): `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before the workers start, prometheus_client keeps every value in a memory-mapped file per
process there, and a scrape of any worker adds them up (counters and histograms over every
process that ever ran, live gauges over live processes only). prometheus_client chooses its
mode when it is imported, from the environment, so `MULTIPROCESS` is decided then too.

The hot path stays cheap: counts are added once per group commit and stream (not per
reading), a request's latency is one histogram observation, labels never name a device or a
raw path. Gauges that a database query answers (rollup lag, partitions ahead) are computed
at scrape time and never stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from energy_engine import sql
from energy_engine.db import Pool
from energy_engine.errors import log_outage, outage

log = logging.getLogger(__name__)

queries = sql.load("energy_engine.observability")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROCESS_ENV in os.environ

# Every process samples its gauges (queue depth, pool use) this often when several share the
# metrics; a single process samples them when scraped.
SAMPLE_EVERY_S = 1.0

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000)

READINGS = Counter(
    "energy_readings",
    "Readings ingested, by transport (http, mqtt, import), stream (meter, vehicle; unknown for "
    "a rejected mixed body) and outcome: accepted (stored now), duplicate (stored before), "
    "rejected (refused as invalid: each item a 4xx names, or 1 for a body refused whole), "
    "queued (queue mode: stored in the JetStream stream; accepted and duplicate are then "
    "counted by the worker that commits them).",
    ["transport", "stream", "outcome"],
)
BATCH_READINGS = Histogram(
    "energy_ingest_batch_readings",
    "Valid readings per ingest request (per committed chunk for import).",
    ["transport"],
    buckets=SIZE_BUCKETS,
)
COMMIT_READINGS = Histogram(
    "energy_ingest_commit_readings",
    "Readings per group commit (several requests' readings share one).",
    buckets=SIZE_BUCKETS,
)
COMMIT_SECONDS = Histogram(
    "energy_ingest_commit_seconds",
    "Time of one group commit: connection, write statements and commit.",
    buckets=LATENCY_BUCKETS,
)
QUEUE_READINGS = Gauge(
    "energy_ingest_queue_readings",
    "Readings waiting in the group-commit queue (all processes).",
    multiprocess_mode="livesum",
)
REQUEST_SECONDS = Histogram(
    "energy_http_request_duration_seconds",
    "HTTP requests by route template, method and status: time from the request's arrival "
    "at the engine to its last response byte.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
POOL_CONNECTIONS = Gauge(
    "energy_db_pool_connections",
    "Open database connections per pool (request, writer), all processes.",
    ["pool"],
    multiprocess_mode="livesum",
)
POOL_IN_USE = Gauge(
    "energy_db_pool_in_use_connections",
    "Database connections in use per pool (request, writer), all processes.",
    ["pool"],
    multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "energy_db_pool_max_connections",
    "The most connections each pool may open (request, writer), all processes.",
    ["pool"],
    multiprocess_mode="livesum",
)
RETENTION_LAST_RUN = Gauge(
    "energy_retention_last_run_timestamp_seconds",
    "When the retention step of the maintenance loop last ran (Unix time).",
    multiprocess_mode="max",
)

MQTT_MESSAGES = Counter(
    "energy_mqtt_messages",
    "MQTT messages taken by the subscriber, by outcome: accepted (committed, then "
    "acknowledged), rejected (invalid: reported on the error topic and acknowledged), "
    "redelivered (received again after an earlier delivery went unacknowledged; also "
    "counted as accepted or rejected).",
    ["outcome"],
)


@functools.cache
def _readings(transport: str, stream: str, outcome: str) -> Any:
    return READINGS.labels(transport, stream, outcome)


@functools.cache
def _batch(transport: str) -> Any:
    return BATCH_READINGS.labels(transport)


def count_stored(transport: str, stream: str, readings: int, accepted: int) -> None:
    """`readings` of `stream` written, `accepted` of them new (the rest duplicates)."""
    if readings:
        _readings(transport, stream, "accepted").inc(accepted)
        _readings(transport, stream, "duplicate").inc(readings - accepted)


def count_queued(transport: str, stream: str, readings: int) -> None:
    """`readings` of `stream` stored in the JetStream stream (queue mode)."""
    if readings:
        _readings(transport, stream, "queued").inc(readings)


def count_rejected(transport: str, stream: str, readings: int) -> None:
    """`readings` refused as invalid."""
    _readings(transport, stream, "rejected").inc(readings)


def count_mqtt(outcome: str) -> None:
    """One MQTT message accepted, rejected or redelivered."""
    MQTT_MESSAGES.labels(outcome).inc()


def observe_batch(transport: str, readings: int) -> None:
    """One request's (or import chunk's) valid readings."""
    _batch(transport).observe(readings)


def observe_commit(readings: int, seconds: float) -> None:
    """One group commit of `readings`, which took `seconds`."""
    COMMIT_READINGS.observe(readings)
    COMMIT_SECONDS.observe(seconds)


def retention_ran(at: datetime | None = None) -> None:
    """Record that the retention step ran (now, or `at`)."""
    RETENTION_LAST_RUN.set((at or datetime.now(UTC)).timestamp())


def sample(pools: Mapping[str, Pool], queued: int) -> None:
    """Set this process's gauges: the write queue's depth and each pool's use."""
    QUEUE_READINGS.set(queued)
    for name, pool in pools.items():
        size = pool.get_size()
        POOL_CONNECTIONS.labels(name).set(size)
        POOL_IN_USE.labels(name).set(size - pool.get_idle_size())
        POOL_MAX.labels(name).set(pool.get_max_size())


async def sample_forever(pools: Mapping[str, Pool], queued: Callable[[], int]) -> None:
    """Sample every SAMPLE_EVERY_S, so that another process's scrape sees this one's gauges;
    `queued` tells the write queue's depth."""
    while True:
        sample(pools, queued())
        await asyncio.sleep(SAMPLE_EVERY_S)


class _Families(Collector):
    """A collector of metric families computed beforehand (the database gauges)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        """The families given."""
        return self.families


def _database_families(
    oldest_dirty_hour: datetime | None, last_partition_day: date | None, now: datetime
) -> list[Metric]:
    """The gauges the database answers: rollup lag (0 without dirty hours) and the days of
    history partitions after today (negative when today's is missing; absent with none)."""
    lag = GaugeMetricFamily(
        "energy_rollup_lag_seconds",
        "Age of the oldest device-hour whose rollup a late reading made stale (0: none); "
        "the refresher redoes them every ENERGY_ROLLUP_REFRESH_EVERY.",
        value=0.0 if oldest_dirty_hour is None else (now - oldest_dirty_hour).total_seconds(),
    )
    families: list[Metric] = [lag]
    if last_partition_day is not None:
        ahead = GaugeMetricFamily(
            "energy_partitions_ahead_days",
            "Days after today (UTC) that both history tables have partitions for.",
            value=(last_partition_day - now.date()).days,
        )
        families.append(ahead)
    return families


async def _from_database(pool: Pool) -> list[Metric]:
    """The database gauges, or none while the database cannot answer (the process's own
    metrics matter most then)."""
    try:
        async with pool.acquire(timeout=2.0) as conn:
            row = await conn.fetchrow(queries.scrape)
    except Exception as exc:
        found = outage(exc)
        if found is None:
            raise
        log_outage("metrics", found)
        return []
    assert row is not None
    return _database_families(
        row["oldest_dirty_hour"], row["last_partition_day"], datetime.now(UTC)
    )


def queue_lag_family(pending: int, unacknowledged: int) -> Metric:
    """Queue mode: the messages in the stream that no worker has committed yet."""
    family = GaugeMetricFamily(
        "energy_queue_lag_messages",
        "Queue mode: messages in the JetStream stream not yet committed to PostgreSQL (each "
        "one reading or up to 1,000 of one request), by state: pending (not yet fetched by a "
        "worker) and unacknowledged (fetched, not yet committed; delivered again after "
        "ENERGY_QUEUE_ACK_WAIT).",
        labels=["state"],
    )
    family.add_metric(["pending"], pending)
    family.add_metric(["unacknowledged"], unacknowledged)
    return family


async def render(
    pool: Pool, pools: Mapping[str, Pool], queued: int, more: Iterable[Metric] = ()
) -> bytes:
    """The Prometheus text of every metric: all processes' when several share them; `more`:
    families computed by the caller (the queue's lag)."""
    sample(pools, queued)
    families = await _from_database(pool) + list(more)
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    computed = CollectorRegistry(auto_describe=False)
    computed.register(_Families(families))
    return text + generate_latest(computed)


# --- serve --workers N ------------------------------------------------------------------------


def fresh_directory(data_dir: Path) -> Path:
    """An empty directory for this supervisor's workers' metrics, under `data_dir/metrics`,
    named by its pid; directories of supervisors no longer running are removed."""
    parent = data_dir / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if not old.name.isdigit() or not _running(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = parent / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return pid != os.getpid()


def process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (queue depth, pool use); its counts stay."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
