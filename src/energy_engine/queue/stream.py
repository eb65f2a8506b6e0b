"""The JetStream side of queue mode: connecting, the stream and its consumer, and the lag.

One stream holds every reading accepted and not yet committed (work-queue retention: a reading
leaves the stream when a worker acknowledges it after its commit). Discard policy `new`: at its
limits the stream refuses a publish instead of dropping old readings, so ingest answers 503.
One durable pull consumer is shared by every worker process; JetStream hands each reading to
one of them and delivers it again when its `ack_wait` passes without an acknowledgement.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

import nats
from energy_engine.settings import Settings

log = logging.getLogger(__name__)


async def connect(settings: Settings, name: str) -> Client:
    """A NATS connection to the configured servers that reconnects for ever."""

    async def disconnected() -> None:
        log.warning("NATS disconnected; reconnecting")

    async def reconnected() -> None:
        log.info("NATS reconnected")

    async def error(exc: Exception) -> None:
        # A refused reconnection is retried every half second: one line per attempt at most.
        level = logging.INFO if isinstance(exc, OSError) else logging.WARNING
        log.log(level, "NATS: %s: %s", type(exc).__name__, exc)

    return await nats.connect(
        servers=settings.nats_url,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )


async def close(nc: Client) -> None:
    """Send what is buffered (acknowledgements) and close; a server gone meanwhile is no
    error at this point."""
    with contextlib.suppress(OSError, nats.errors.Error):
        await nc.flush(timeout=2)
    with contextlib.suppress(OSError, nats.errors.Error):
        await nc.close()


def jetstream(nc: Client, settings: Settings) -> JetStreamContext:
    """The JetStream context for publishing and for the stream's administration."""
    return nc.jetstream(timeout=settings.queue_publish_timeout.total_seconds())


def stream_config(settings: Settings) -> StreamConfig:
    """The stream as the settings describe it."""
    return StreamConfig(
        name=settings.queue_stream,
        subjects=[settings.queue_subject_prefix + ".>"],
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_bytes=settings.queue_max_bytes,
        max_msgs=settings.queue_max_messages or -1,
        storage=StorageType.FILE,
        num_replicas=settings.queue_replicas,
        duplicate_window=settings.queue_duplicate_window.total_seconds(),
    )


def consumer_config(settings: Settings) -> ConsumerConfig:
    """The workers' durable pull consumer: explicit acknowledgements, redelivered for ever."""
    return ConsumerConfig(
        durable_name=settings.queue_consumer,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.queue_ack_wait.total_seconds(),
        max_deliver=-1,
        # Pulled and not yet acknowledged, over every worker: a few commits' worth.
        max_ack_pending=max(10_000, 4 * settings.writer_connections * settings.max_flush_readings),
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream and the consumer, or bring them to the settings (idempotent)."""
    config = stream_config(settings)
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with another configuration (e.g. other limits)
        await js.update_stream(config)
    consumer = consumer_config(settings)
    try:
        await js.add_consumer(settings.queue_stream, consumer)
    except BadRequestError:  # exists with another configuration: a create may not change it
        await js.delete_consumer(settings.queue_stream, settings.queue_consumer)
        await js.add_consumer(settings.queue_stream, consumer)


@dataclass(frozen=True, slots=True)
class Lag:
    """Messages in the stream the workers have not committed (a reading each): not yet
    fetched, and fetched but not yet acknowledged."""

    pending: int
    unacknowledged: int

    @property
    def total(self) -> int:
        """All messages not yet in PostgreSQL."""
        return self.pending + self.unacknowledged


async def lag(js: JetStreamContext, settings: Settings, wait_s: float = 2.0) -> Lag:
    """The consumer's lag, as JetStream counts it."""
    info = await js.consumer_info(settings.queue_stream, settings.queue_consumer, timeout=wait_s)
    return Lag(info.num_pending or 0, info.num_ack_pending or 0)
