"""Queue mode against real nats-server processes started here: HTTP → 202 → JetStream →
`worker` → PostgreSQL, each reading stored exactly once, through a cluster node stopping, a
worker killed with SIGKILL and PostgreSQL stopped for 30 s; a full stream answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

import nats
from energy_engine.app import create_app
from energy_engine.queue import stream
from energy_engine.queue import worker as queue_worker
from energy_engine.settings import IngestMode, QueueMessage, Settings
from tests import nats as nats_servers
from tests.conftest import PrivatePostgres, app_client
from tests.mosquitto import device, mosquitto
from tests.readings import meter, minute_ago, vehicle

Key = tuple[str, str]  # (device, ISO timestamp) as sent


def queue_settings(database_url: str, data_dir: Path, urls: list[str], **more: Any) -> Settings:
    """Queue mode on `urls`, without API keys (auth is not what these tests are about)."""
    fields: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "ingest_mode": IngestMode.QUEUE,
        "nats_url": urls,
        "auth": False,
        "queue_batch": 500,
        "queue_ack_wait": timedelta(seconds=2),
        "request_log": False,
        **more,
    }
    return Settings(_env_file=None, **fields)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The engine in queue mode with its lifespan running, and a client of it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), app_client(app, headers=None) as client:
        yield app, client


@contextlib.asynccontextmanager
async def worker(settings: Settings, url: str) -> AsyncIterator[None]:
    """`energy-engine worker`'s loop in this process."""
    ready = asyncio.Event()
    task = asyncio.create_task(queue_worker.run(settings, url, ready))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED")
    if task.done():
        task.result()  # its failure
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def batch(prefix: str, number: int, size: int) -> tuple[list[dict[str, Any]], list[Key]]:
    """`size` readings (meters and vehicles alternately) distinct across `number`s."""
    readings: list[dict[str, Any]] = []
    for i in range(size):
        at = minute_ago(number + 1)
        if i % 2:
            readings.append(vehicle(f"{prefix}-V{i}", at, kwh=float(number)))
        else:
            readings.append(meter(f"{prefix}-M{i}", at, kwh=float(number)))
    keys = [(r.get("meterId") or r["vehicleId"], r["timestamp"]) for r in readings]
    return readings, keys


async def stored(url: str) -> dict[Key, int]:
    """How often each (device, timestamp) is in PostgreSQL."""
    conn = await asyncpg.connect(url, server_settings={"timezone": "UTC"})
    try:
        rows = await conn.fetch(
            """SELECT device, at, count(*) AS n FROM (
                 SELECT meter_id AS device, read_at AS at FROM meter_readings
                 UNION ALL SELECT vehicle_id, read_at FROM vehicle_readings) r
               GROUP BY device, at"""
        )
    finally:
        await conn.close()
    return {(r["device"], r["at"].isoformat().replace("+00:00", "Z")): r["n"] for r in rows}


async def until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 30) -> None:
    """Wait for `check` to hold."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.1)


async def drained(url: str, acknowledged: set[Key], within_s: float = 30) -> dict[Key, int]:
    """Wait until every acknowledged reading is in PostgreSQL; what is stored then."""
    rows: dict[Key, int] = {}

    async def all_there() -> bool:
        nonlocal rows
        rows = await stored(url)
        return acknowledged <= rows.keys()

    await until(all_there, f"{len(acknowledged)} acknowledged readings stored", within_s)
    return rows


class Load:
    """Clients posting batches until stopped; what was acknowledged (202) and what not."""

    def __init__(self, client: httpx.AsyncClient, prefix: str, size: int = 20) -> None:
        self.client = client
        self.prefix = prefix
        self.size = size
        self.acknowledged: set[Key] = set()
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._numbers = iter(range(1_000_000))

    async def _send(self, every_s: float) -> None:
        while not self._stop.is_set():
            readings, keys = batch(self.prefix, next(self._numbers), self.size)
            response = await self.client.post("/v1/ingest", json=readings, timeout=30)
            self.statuses.append(response.status_code)
            if response.status_code == 202:
                assert response.json() == {"queued": self.size}
                self.acknowledged.update(keys)
            await asyncio.sleep(every_s)

    def start(self, clients: int = 2, every_s: float = 0.05) -> None:
        """Start `clients` posting a batch each every `every_s`."""
        self._tasks = [asyncio.create_task(self._send(every_s)) for _ in range(clients)]

    async def stop(self) -> None:
        """Stop posting; the requests in flight finish."""
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[nats_servers.NatsServer]:
    with nats_servers.single(tmp_path / "nats") as server:
        yield server


# Messages in the stream after the requests of the next test: a message per request holds a
# request's meters or its vehicles (a retry is the same message, a lone reading one of its own);
# a message per reading is that reading's wherever it is sent.
IN_STREAM = {QueueMessage.REQUEST: 5, QueueMessage.READING: 101}


@pytest.mark.parametrize("per", list(QueueMessage))
async def test_readings_go_through_the_queue_into_postgresql_once(
    nats_server: nats_servers.NatsServer, database_url: str, tmp_path: Path, per: QueueMessage
) -> None:
    settings = queue_settings(database_url, tmp_path, [nats_server.url], queue_message_per=per)
    readings, keys = batch("Q", 0, 100)
    async with running(settings) as (app, client):
        first = await client.post("/v1/ingest", json=readings)
        assert first.status_code == 202
        assert first.json() == {"queued": 100}
        # A client's retry is stored once in the stream (Nats-Msg-Id); with a message per
        # reading, so is a reading of the batch sent again alone or beside a new one.
        assert (await client.post("/v1/ingest", json=readings)).status_code == 202
        one = await client.post("/v1/ingest/meter", json=readings[0])
        assert one.status_code == 202
        assert one.json() == {"queued": 1}
        new, new_keys = batch("Q", 1, 1)
        mixed = await client.post("/v1/ingest", json=[readings[1], *new])
        assert mixed.json() == {"queued": 2}
        keys += new_keys
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        held = IN_STREAM[per]
        assert ready.json()["queueLag"] == {"messages": held, "pending": held, "unacknowledged": 0}
        assert ready.json()["database"] == "ok"
        assert await stored(database_url) == {}  # nothing written before a worker runs
        metrics = (await client.get("/metrics")).text
        assert f'energy_queue_lag_messages{{state="pending"}} {held}.0' in metrics
        assert 'energy_readings_total{outcome="queued",stream="meter",transport="http"}' in metrics
        async with worker(settings, database_url):
            rows = await drained(database_url, set(keys))

            async def no_lag() -> bool:
                return (await stream.lag(app.state.jetstream, settings)).total == 0

            await until(no_lag, "the consumer caught up")
        assert rows == dict.fromkeys(keys, 1)
        openapi = (await client.get("/openapi.json")).json()
        answers = openapi["paths"]["/v1/ingest"]["post"]["responses"]
        assert answers["202"]["content"]["application/json"]["schema"]["$ref"].endswith("Queued")


@pytest.mark.parametrize(
    ("per", "room"),  # messages of two requests of 10 readings: their meters, their vehicles
    [(QueueMessage.REQUEST, 4), (QueueMessage.READING, 20)],
)
async def test_a_full_or_unreachable_queue_answers_503_with_retry_after(
    nats_server: nats_servers.NatsServer,
    database_url: str,
    tmp_path: Path,
    per: QueueMessage,
    room: int,
) -> None:
    settings = queue_settings(
        database_url,
        tmp_path,
        [nats_server.url],
        queue_message_per=per,
        queue_max_messages=room,
        queue_publish_timeout=timedelta(seconds=1),
    )
    async with running(settings) as (_, client):
        for number in range(2):
            readings, _ = batch("F", number, 10)
            assert (await client.post("/v1/ingest", json=readings)).status_code == 202
        more, _ = batch("F", 2, 2)
        full = await client.post("/v1/ingest", json=more)
        assert full.status_code == 503
        assert full.headers["retry-after"].isdigit()
        assert full.json()["error"] == "overloaded"
        assert "full" in full.json()["message"]
        nats_server.stop()
        started = time.monotonic()
        down = await client.post("/v1/ingest", json=more)
        assert down.status_code == 503
        assert down.headers["retry-after"].isdigit()
        assert set(down.json()) == {"error", "message", "errors"}
        assert time.monotonic() - started < 5
        assert (await client.get("/health/ready")).status_code == 503


@pytest.mark.parametrize("per", list(QueueMessage))
async def test_a_cluster_node_stopping_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, database_url: str, per: QueueMessage
) -> None:
    with nats_servers.cluster(tmp_path / "nats") as servers:
        urls = [s.url for s in servers]
        settings = queue_settings(
            database_url, tmp_path, urls, queue_replicas=3, queue_message_per=per
        )
        await _until_jetstream(settings)
        async with running(settings) as (app, client), worker(settings, database_url):
            load = Load(client, "C")
            load.start()
            await asyncio.sleep(1.5)
            leader = (await app.state.jetstream.stream_info(settings.queue_stream)).cluster.leader
            next(s for s in servers if s.name == leader).stop()
            await asyncio.sleep(3)
            await load.stop()
            rows = await drained(database_url, load.acknowledged)
        assert set(load.statuses) == {202}
        assert len(load.statuses) > 20
        assert set(rows.values()) == {1}


async def _until_jetstream(settings: Settings) -> None:
    """Wait for a new cluster to elect its JetStream meta leader (a stream can be made)."""
    nc = await nats.connect(servers=settings.nats_url)
    try:
        js = stream.jetstream(nc, settings)

        async def made() -> bool:
            try:
                await stream.ensure_stream(js, settings)
            except Exception:  # not yet: no meta leader, or too few peers
                return False
            return True

        await until(made, "the JetStream cluster took a stream", within_s=30)
    finally:
        await nc.close()


def _worker_process(settings: Settings, url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "NATS_URL": ",".join(settings.nats_url),
        "ENERGY_INGEST_MODE": "queue",
        "ENERGY_QUEUE_BATCH": str(settings.queue_batch),
        "ENERGY_QUEUE_ACK_WAIT": "PT2S",
        "ENERGY_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "energy_engine.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("per", list(QueueMessage))
async def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    nats_server: nats_servers.NatsServer, database_url: str, tmp_path: Path, per: QueueMessage
) -> None:
    settings = queue_settings(database_url, tmp_path, [nats_server.url], queue_message_per=per)
    async with running(settings) as (_, client):
        load = Load(client, "K", size=100)
        first = _worker_process(settings, database_url)
        try:
            load.start()

            async def writing() -> bool:
                return len(await stored(database_url)) > 0

            await until(writing, "the first worker wrote")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            await asyncio.sleep(1)  # readings pile up while no worker runs
        finally:
            if first.poll() is None:
                first.kill()
        second = _worker_process(settings, database_url)
        try:
            await asyncio.sleep(1)
            await load.stop()
            rows = await drained(database_url, load.acknowledged)
        finally:
            second.terminate()
            assert second.wait(10) == 0
    assert set(load.statuses) == {202}
    assert set(rows.values()) == {1}
    assert len(rows) == len(load.acknowledged)


async def test_postgresql_down_for_30_s_keeps_answering_202_and_the_backlog_drains(
    nats_server: nats_servers.NatsServer, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    postgres = private_postgres
    settings = queue_settings(
        postgres.url,
        tmp_path,
        [nats_server.url],
        connect_timeout=timedelta(seconds=2),
        acquire_timeout=timedelta(seconds=2),
        command_timeout=timedelta(seconds=5),
    )
    async with running(settings) as (_, client), worker(settings, postgres.url):
        load = Load(client, "P")
        load.start(every_s=0.2)
        await asyncio.sleep(1)
        await asyncio.to_thread(postgres.stop)
        down_at = time.monotonic()
        await asyncio.sleep(30)
        during = len(load.statuses)
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["database"].startswith("unreachable")
        assert ready.json()["queueLag"]["messages"] > 0
        await asyncio.to_thread(postgres.start)
        assert time.monotonic() - down_at >= 30
        await asyncio.sleep(1)
        await load.stop()
        rows = await drained(postgres.url, load.acknowledged)
    assert set(load.statuses) == {202}
    assert during > 100  # clients were answered all along
    assert set(rows.values()) == {1}
    assert len(rows) == len(load.acknowledged)


async def test_mqtt_messages_go_through_the_queue_in_queue_mode(
    nats_server: nats_servers.NatsServer, database_url: str, tmp_path: Path
) -> None:
    """In queue mode the MQTT subscriber hands its readings to JetStream like the HTTP routes:
    a message is acknowledged to the broker once the stream stored it, and the worker writes
    it once."""
    prefix = f"q{os.getpid()}/energy"
    (tmp_path / "mosquitto").mkdir()
    with mosquitto(tmp_path / "mosquitto") as broker:
        settings = queue_settings(
            database_url,
            tmp_path,
            [nats_server.url],
            mqtt_url=broker,
            mqtt_topic_prefix=prefix,
            mqtt_shared_group="queue",
        )
        readings, keys = batch("MQ", 0, 20)
        async with running(settings) as (app, _):
            await asyncio.wait_for(app.state.mqtt.subscribed.wait(), 10)
            with device(broker) as dev:
                for reading in readings:
                    kind, device_id = (
                        ("meters", reading["meterId"])
                        if "meterId" in reading
                        else ("vehicles", reading["vehicleId"])
                    )
                    dev.publish(f"{prefix}/{kind}/{device_id}", orjson.dumps(reading))

            async def all_queued() -> bool:
                return (await stream.lag(app.state.jetstream, settings)).total == len(readings)

            await until(all_queued, "every message in the stream")
            assert await stored(database_url) == {}  # nothing written before a worker runs
            async with worker(settings, database_url):
                rows = await drained(database_url, set(keys))
        assert rows == dict.fromkeys(keys, 1)
