"""One `Settings` object for the whole engine, read from the environment (prefix `ENERGY_`)."""

from __future__ import annotations

import os
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class EnergySemantics(StrEnum):
    """How `kwhConsumedAc` / `kwhDeliveredDc` are to be read."""

    CUMULATIVE = "cumulative"  # a register that only grows, except on a reset
    INTERVAL = "interval"  # the energy since the device's previous reading


LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"],
    BeforeValidator(lambda level: level.lower() if isinstance(level, str) else level),
]


class LogFormat(StrEnum):
    """How log lines are written to stderr."""

    JSON = "json"  # one JSON object a line, for log collectors
    PLAIN = "plain"  # one readable line, for a terminal


class Settings(BaseSettings):
    """Engine configuration; every field can be set as `ENERGY_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="ENERGY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # None means: start the embedded PostgreSQL under `data_dir`.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "ENERGY_DATABASE_URL")
    )
    data_dir: Path = Path(".energy-engine")
    pool_min_size: PositiveInt = 2
    # Request connections per process: twice the cores. More connections than that only make
    # PostgreSQL's backends preempt each other: 30-day reports at 10 concurrent requests on 2
    # cores, pool of 10: p99 31-36 ms; of 4: 15-20 ms and a third more requests per second.
    pool_max_size: PositiveInt = Field(default_factory=lambda: max(4, 2 * (os.cpu_count() or 1)))

    # Ingestion limits.
    max_batch_items: PositiveInt = 10_000
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    max_future_skew: timedelta = timedelta(minutes=5)
    max_reading_age: timedelta = timedelta(days=30)

    # Group commit: writer tasks (one connection each), queue bound, readings per flush.
    writer_connections: PositiveInt = 2
    max_queued_readings: PositiveInt = 200_000
    max_flush_readings: PositiveInt = 20_000

    # Energy semantics and plausibility.
    energy_semantics: EnergySemantics = EnergySemantics.CUMULATIVE
    max_power_kw: PositiveFloat = 500.0
    # How far before a window the baseline reading is looked for; bounds the partitions touched.
    baseline_lookback: timedelta = timedelta(days=7)

    # Live status.
    heartbeat: timedelta = timedelta(seconds=60)
    online_heartbeats: PositiveInt = 3

    # Analytics.
    default_window: timedelta = timedelta(hours=24)
    max_window: timedelta = timedelta(days=90)
    # A 90-day window in hours, and the first and last hour cut to it.
    max_series_points: PositiveInt = 90 * 24 + 1
    # Bodies of the routes other than ingest (assignments): small JSON objects.
    max_request_body_bytes: PositiveInt = 64 * 1024
    healthy_efficiency: float = Field(default=0.85, gt=0, le=1)
    warning_efficiency: float = Field(default=0.75, gt=0, le=1)
    min_ac_kwh: float = Field(default=1.0, ge=0)

    # Hourly rollups: an hour is sealed and rolled up this long after it ends; the refresher
    # runs this often.
    rollup_grace: timedelta = timedelta(minutes=2)
    rollup_refresh_every: timedelta = timedelta(seconds=30)

    # Partitions are created this many days ahead by start-up and by the maintenance task,
    # which runs this often.
    partition_days_ahead: PositiveInt = 3
    partition_upkeep_every: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))

    # Database bounds (hardening): no request waits on PostgreSQL without a limit.
    # Each statement of the request pool (reads, assignments) is cancelled by PostgreSQL after
    # `statement_timeout`; a read that runs out of time answers 503 (errors.unavailable).
    statement_timeout: timedelta = timedelta(seconds=5)
    # Temporary files (sorts and hashes spilled to disk) one session may write, in MB; 0 for
    # no limit. A superuser-only setting: a role that may not set it gets a warning, no limit.
    temp_file_limit_mb: int = Field(default=512, ge=0)
    # Opening a connection, waiting for a pooled one, and any one command on the client side
    # (also the writers'), so a database that stops answering cannot hold a request forever.
    connect_timeout: timedelta = timedelta(seconds=5)
    acquire_timeout: timedelta = timedelta(seconds=10)
    command_timeout: timedelta = timedelta(seconds=30)
    # What `Retry-After` says while the database is unavailable.
    unavailable_retry_after: timedelta = timedelta(seconds=5)

    # HTTP server limits, per process (`serve`). A client gets http_header_timeout to send a
    # request's line and headers (counted from the connection's opening, or from a keep-alive
    # request's first byte) and then http_body_timeout for its body; it is answered 408 and
    # disconnected after that. Beyond http_max_connections open connections, requests are
    # answered 503. A stop waits at most shutdown_timeout for requests in progress.
    http_header_timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    http_body_timeout: timedelta = Field(default=timedelta(seconds=60), gt=timedelta(0))
    # Idle keep-alive connections close after this (whole seconds). Longer than the 5 s httpx
    # and many device stacks keep an idle connection, so that they, not the server, close it.
    http_keep_alive: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    http_max_connections: PositiveInt = 1000
    http_backlog: PositiveInt = 2048  # connections the kernel queues before they are accepted
    shutdown_timeout: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))

    # Logs (observability.logs): the least severe level written, the line format, and the one
    # line per request that the RequestLog middleware writes (logger energy_engine.request).
    log_level: LogLevel = "info"
    log_format: LogFormat = LogFormat.JSON
    request_log: bool = True

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        if self.warning_efficiency > self.healthy_efficiency:
            raise ValueError("warning_efficiency must not exceed healthy_efficiency")
        return self

    @property
    def online_within(self) -> timedelta:
        """A device is online when its latest reading is at most this old."""
        return self.heartbeat * self.online_heartbeats
