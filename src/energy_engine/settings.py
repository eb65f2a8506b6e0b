"""One `Settings` object for the whole engine, read from the environment (prefix `ENERGY_`)."""

from __future__ import annotations

import os
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EnergySemantics(StrEnum):
    """How `kwhConsumedAc` / `kwhDeliveredDc` are to be read."""

    CUMULATIVE = "cumulative"  # a register that only grows, except on a reset
    INTERVAL = "interval"  # the energy since the device's previous reading


class DocsAccess(StrEnum):
    """Who may read `/docs` and `/openapi.json`."""

    OPEN = "open"  # anyone
    AUTH = "auth"  # any valid API key
    OFF = "off"  # not served


class RateLimit(NamedTuple):
    """A token bucket: `per_second` requests on average, up to `burst` at once."""

    per_second: float
    burst: int


def _rate_limit(value: object) -> object:
    """`RATE/BURST` (e.g. `10/60`) or `off`, as the environment spells a rate limit."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("off", "none", ""):
        return None
    rate, slash, burst = text.partition("/")
    try:
        limit = RateLimit(float(rate), int(burst))
    except ValueError:
        limit = None
    if not slash or limit is None or not limit.per_second > 0 or limit.burst < 1:
        raise ValueError("write RATE/BURST (requests a second / at once), e.g. 10/60, or off")
    return limit


# None: no limit.
RateLimitSetting = Annotated[RateLimit | None, NoDecode, BeforeValidator(_rate_limit)]


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"],
    BeforeValidator(lambda level: level.lower() if isinstance(level, str) else level),
]


class IngestMode(StrEnum):
    """Where accepted readings go before PostgreSQL."""

    DIRECT = "direct"  # group commit: answered 200 once committed
    QUEUE = "queue"  # NATS JetStream: answered 202 once the stream stored them (queue/)


class QueueMessage(StrEnum):
    """What one JetStream message holds in queue mode (queue/publisher.py)."""

    REQUEST = "request"  # a request's readings of one stream, up to 1,000: the fast form
    READING = "reading"  # one reading, its id device:timestamp: deduplicated per reading


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
    # A read replica (streaming standby) for the read routes (analytics, status); None: they
    # read DATABASE_URL. Writes, keys, assignments, migrations and upkeep use DATABASE_URL.
    database_read_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_READ_URL", "ENERGY_DATABASE_READ_URL"),
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

    # Queue mode (queue/): ingest publishes each reading to a JetStream stream and answers 202;
    # `energy-engine worker` processes write them. NATS_URL: one server or a cluster's,
    # comma-separated.
    ingest_mode: IngestMode = IngestMode.DIRECT
    nats_url: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = Field(
        default=["nats://127.0.0.1:4222"],
        validation_alias=AliasChoices("NATS_URL", "ENERGY_NATS_URL"),
        min_length=1,
    )
    queue_stream: str = Field(default="ENERGY_READINGS", pattern=r"^[A-Za-z0-9_-]+$")
    queue_subject_prefix: str = Field(
        default="energy.readings", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )
    queue_consumer: str = Field(default="energy-writer", pattern=r"^[A-Za-z0-9_-]+$")
    queue_replicas: int = Field(default=1, ge=1, le=5)
    # A message per request (one id for its readings) or per reading (`device:timestamp`,
    # deduplicated in the stream per reading, at about three times the Python per reading).
    queue_message_per: QueueMessage = QueueMessage.REQUEST
    # The stream's limits; at either, publishing is refused and ingest answers 503. A reading
    # takes about 250 bytes in the stream (payload, subject, message id).
    queue_max_bytes: PositiveInt = 4 * 1024**3
    queue_max_messages: PositiveInt | None = None
    # A reading published twice within this window (a client's retry) is stored in the stream
    # once (`Nats-Msg-Id` stream:device:timestamp); later duplicates are still stored once by
    # PostgreSQL. nats-server holds each id of the window in memory.
    queue_duplicate_window: timedelta = Field(default=timedelta(minutes=2), gt=timedelta(0))
    # How long ingest waits for JetStream to store a request's readings, retrying through a
    # reconnect or a leader election, before answering 503.
    queue_publish_timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    # Worker: messages per pull, pulled again while more are there up to max_flush_readings
    # readings a commit; and how long a pulled message may stay
    # unacknowledged before JetStream delivers it again (a worker that died).
    queue_batch: PositiveInt = 500
    queue_ack_wait: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))

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

    # Partitions are created this many days ahead by start-up and by the maintenance loop,
    # which runs this often (lifecycle.maintenance, one process at a time).
    partition_days_ahead: PositiveInt = 3
    partition_upkeep_every: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))

    # Retention (lifecycle.maintenance). None keeps everything. The maintenance loop drops the
    # day partitions of history that lie wholly before now - history_retention, and deletes
    # hour and day rollups wholly before now - rollup_retention (None: kept).
    history_retention: timedelta | None = None
    rollup_retention: timedelta | None = None
    # Packed history (migrations/0005_packed_history.sql): the maintenance loop rewrites each
    # day partition of history lying wholly before now - pack_after as one row per device and
    # hour (about 20 instead of 110 bytes a reading); None (`off`) keeps history raw. Late readings
    # for a packed day are still accepted and counted.
    pack_after: timedelta | None = Field(default=timedelta(days=2), gt=timedelta(0))
    # How long a partition drop waits for its table lock (DROP takes an ACCESS EXCLUSIVE lock on
    # the partitioned table, and ingest queues behind a waiting DROP); a drop that times out is
    # retried at the next round.
    retention_lock_timeout: timedelta = Field(default=timedelta(seconds=1), gt=timedelta(0))

    # Database bounds (hardening): no request waits on PostgreSQL without a limit.
    # Each statement of the request pool (reads, assignments) is cancelled by PostgreSQL after
    # `statement_timeout`; a read that runs out of time answers 503 (errors.unavailable).
    statement_timeout: timedelta = timedelta(seconds=5)
    # The fleet ranking reads every device's window in one statement: a window starting
    # mid-hour reads every device's raw edge rows and takes seconds over 10,000 vehicles
    # (docs/performance.md), so it gets a bound of its own, below command_timeout.
    fleet_statement_timeout: timedelta = Field(default=timedelta(seconds=20), gt=timedelta(0))
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

    # API keys (auth/). With `auth` off every route is open, and `serve` binds to loopback only.
    auth: bool = True
    # Each worker reloads the keys this often: a revoked key is refused within it everywhere.
    auth_refresh_every: timedelta = Field(default=timedelta(seconds=2), gt=timedelta(0))
    docs: DocsAccess = DocsAccess.OPEN
    # Requests per key and worker (see auth/limits.py). A key with several scopes gets its most
    # generous scope's limit; a device-bound key gets `rate_limit_device` whatever its scopes.
    # Ingest: 10,000 devices reporting together at the top of a minute on one shared key take
    # half the burst, and the bucket is full again 20 s later.
    rate_limit_ingest: RateLimitSetting = RateLimit(1000, 20_000)
    rate_limit_read: RateLimitSetting = RateLimit(200, 1000)
    rate_limit_metrics: RateLimitSetting = RateLimit(10, 20)
    rate_limit_admin: RateLimitSetting = None
    # A device reports once a minute; this leaves room for retries and a backlog after an outage.
    rate_limit_device: RateLimitSetting = RateLimit(10, 60)
    # Origins (e.g. `https://dashboard.example.com`, comma-separated) whose browser pages may
    # call the API; none by default (no CORS headers at all).
    cors_origins: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = []
    # Logs (observability.logs): the least severe level written, the line format, and the one
    # line per request that the RequestLog middleware writes (logger energy_engine.request).
    log_level: LogLevel = "info"
    log_format: LogFormat = LogFormat.JSON
    request_log: bool = True

    # MQTT ingestion (mqtt/, docs/mqtt.md). None: off. `mqtt://user:password@host:port`, or
    # `mqtts://` for TLS (the CA and client certificate files below, else the system's CAs).
    mqtt_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MQTT_URL", "ENERGY_MQTT_URL")
    )
    # Topics: {prefix}/meters/{meterId}, {prefix}/vehicles/{vehicleId}; errors go to
    # {prefix}/errors/{meters|vehicles}/{id}. Every engine process joins one MQTT v5 shared
    # subscription of this group, so the broker hands each message to one of them.
    mqtt_topic_prefix: str = Field(default="energy", pattern=r"^[^#+]+$")
    mqtt_shared_group: str = Field(default="energy-engine", pattern=r"^[^/#+]+$")
    # With a client id set, the broker keeps this process's session (its unacknowledged and
    # queued messages) for mqtt_session_expiry after the connection drops and hands them back
    # when the same id connects again: give each engine process a stable id of its own (one
    # process per id). None: energy-engine-{host}-{pid} with no session kept (a crash loses
    # the messages in flight to the process; see docs/mqtt.md).
    mqtt_client_id: str | None = None
    mqtt_session_expiry: timedelta = Field(default=timedelta(minutes=5), ge=timedelta(0))
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_keepalive: timedelta = Field(default=timedelta(seconds=60), ge=timedelta(seconds=5))
    # Messages the broker may have in flight to this process unacknowledged (MQTT v5 Receive
    # Maximum): they are validated and committed concurrently, sharing group commits.
    mqtt_max_inflight: int = Field(default=1000, ge=1, le=65535)

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if not value:  # MQTT_URL= (empty) is off too
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("give an mqtt:// or mqtts:// URL with a host")
        parts.port  # noqa: B018  # raises on a port out of range or not a number
        return value

    @field_validator("pack_after", mode="before")
    @classmethod
    def _pack_off(cls, value: object) -> object:
        # ENERGY_PACK_AFTER=off keeps history raw (an environment variable cannot be None).
        return None if isinstance(value, str) and value.strip().lower() == "off" else value

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        if self.warning_efficiency > self.healthy_efficiency:
            raise ValueError("warning_efficiency must not exceed healthy_efficiency")
        return self

    @model_validator(mode="after")
    def _retention_ordered(self) -> Settings:
        # Ingest accepts readings up to max_reading_age old and creates their partitions: a
        # shorter retention would drop the days it still writes to. Readers take hours before
        # the `rolled` watermark from rollups, so rollups must outlive the raw rows they
        # summarise, or a window would silently lose them while history still holds them.
        history, rollups = self.history_retention, self.rollup_retention
        if history is not None and history < self.max_reading_age:
            raise ValueError("history_retention must be at least max_reading_age")
        if rollups is not None and (history is None or rollups < history):
            raise ValueError("rollup_retention needs a history_retention and must not be shorter")
        return self

    @property
    def online_within(self) -> timedelta:
        """A device is online when its latest reading is at most this old."""
        return self.heartbeat * self.online_heartbeats
