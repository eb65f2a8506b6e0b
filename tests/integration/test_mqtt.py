"""MQTT ingestion against a real Mosquitto (started by the tests on a free loopback port):
readings published by devices reach history and the hot store, invalid messages are answered
on the error topic and never stop the subscriber, a shared subscription splits the messages
between engines with each reading stored once, and a message the database could not take is
kept unacknowledged by the engine and stored once the database is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from energy_engine.app import create_app
from energy_engine.cli import cli
from energy_engine.mqtt.client import Broker
from energy_engine.mqtt.subscriber import Subscriber
from energy_engine.settings import Settings
from energy_engine.simulate.fleet import Fleet, FleetConfig, floor_minute
from energy_engine.simulate.publish import publisher
from energy_engine.simulate.send import simulate
from tests.conftest import MakeSettings, PrivatePostgres, app_client
from tests.mosquitto import device, free_port, mosquitto
from tests.readings import meter, minute_ago, vehicle

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mosquitto(tmp_path_factory.mktemp("mosquitto")) as url:
        yield url


@pytest.fixture
def prefix() -> str:
    """A topic prefix of the test's own: tests share the module's broker."""
    return f"t{uuid.uuid4().hex[:8]}/energy"


def _mqtt_settings(broker_url: str, prefix: str, client_id: str) -> dict[str, Any]:
    return {
        "mqtt_url": broker_url,
        "mqtt_topic_prefix": prefix,
        "mqtt_shared_group": prefix.split("/")[0],
        "mqtt_client_id": client_id,
    }


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    """The engine with its lifespan running and its subscription in place."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        subscriber: Subscriber = application.state.mqtt
        await asyncio.wait_for(subscriber.subscribed.wait(), 10)
        yield application


@pytest.fixture
async def engine(make_settings: MakeSettings, broker_url: str, prefix: str) -> AsyncIterator[Any]:
    async with running(make_settings(**_mqtt_settings(broker_url, prefix, "engine-1"))) as app:
        yield app


async def _until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("energy_mqtt_messages_total", {"outcome": outcome}) or 0.0


def _readings(transport: str, outcome: str, stream: str) -> float:
    labels = {"transport": transport, "stream": stream, "outcome": outcome}
    return REGISTRY.get_sample_value("energy_readings_total", labels) or 0.0


def test_broker_urls_carry_credentials_and_tls() -> None:
    assert Broker.from_url("mqtts://dev%40x:p%3Ass@broker.example") == Broker(
        "broker.example", 8883, True, "dev@x", "p:ss"
    )
    assert Broker.from_url("mqtt://10.0.0.1:1884") == Broker("10.0.0.1", 1884, False)
    assert str(Broker.from_url("mqtt://u:secret@h")) == "mqtt://h:1883"
    with pytest.raises(ValueError):
        Broker.from_url("http://h")


def test_mqtt_url_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_URL", "mqtts://u:p@broker:8883")
    assert Settings(_env_file=None).mqtt_url == "mqtts://u:p@broker:8883"
    monkeypatch.setenv("MQTT_URL", "")
    assert Settings(_env_file=None).mqtt_url is None
    monkeypatch.setenv("MQTT_URL", "http://broker")
    with pytest.raises(ValueError, match=r"mqtt:// or mqtts://"):
        Settings(_env_file=None)


async def test_published_readings_reach_history_and_the_hot_store(
    engine: FastAPI, broker_url: str, prefix: str, conn: asyncpg.Connection
) -> None:
    accepted = _count("accepted")
    stored = _readings("mqtt", "accepted", "vehicle")
    at = minute_ago(2)
    with device(broker_url) as dev:
        dev.publish(f"{prefix}/meters/M-1", orjson.dumps(meter("M-1", at, 10.5, 229.5)))
        batch = [vehicle("V-1", at, 3.0, 41.5), vehicle("V-1", at + timedelta(minutes=1), 3.5)]
        dev.publish(f"{prefix}/vehicles/V-1", orjson.dumps(batch))

    async def both_stored() -> bool:
        meters = await conn.fetchval("SELECT count(*) FROM meter_readings")
        vehicles = await conn.fetchval("SELECT count(*) FROM vehicle_readings")
        return bool(meters == 1 and vehicles == 2)

    await _until(both_stored, "the readings stored")
    row = await conn.fetchrow("SELECT * FROM meter_state WHERE meter_id = 'M-1'")
    assert row is not None
    assert (row["read_at"], row["kwh_consumed_ac"], row["voltage"]) == (at, 10.5, 229.5)
    state = await conn.fetchrow("SELECT read_at, soc FROM vehicle_state WHERE vehicle_id = 'V-1'")
    assert state is not None
    assert (state["read_at"], state["soc"]) == (at + timedelta(minutes=1), 50.0)
    await _until(_async(lambda: _count("accepted") == accepted + 2), "both messages counted")
    assert _readings("mqtt", "accepted", "vehicle") == stored + 2


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def test_invalid_messages_land_on_the_error_topic_and_never_stop_the_subscriber(
    engine: FastAPI, broker_url: str, prefix: str, conn: asyncpg.Connection
) -> None:
    rejected = _count("rejected")
    at = minute_ago(1)
    with device(broker_url) as dev:
        dev.subscribe(f"{prefix}/errors/#")
        dev.publish(f"{prefix}/meters/M-1", b'{"meterId": "M-1",')
        error = await dev.next_message()
        assert error.topic == f"{prefix}/errors/meters/M-1"
        body = orjson.loads(error.payload)
        assert body["error"] == "malformed_json"
        assert set(body) == {"error", "message", "errors"}

        bad = [vehicle("V-7", at, 1.0), {**vehicle("V-7", at, 1.0, soc=140.0)}]
        dev.publish(f"{prefix}/vehicles/V-7", orjson.dumps(bad))
        error = await dev.next_message()
        assert error.topic == f"{prefix}/errors/vehicles/V-7"
        body = orjson.loads(error.payload)
        assert body["error"] == "invalid_readings"
        assert body["errors"] == [
            {"index": 1, "field": "soc", "reason": "Input should be less than or equal to 100"}
        ]

        # The subscriber goes on: a valid message after them is stored.
        dev.publish(f"{prefix}/meters/M-1", orjson.dumps(meter("M-1", at, 1.0)))

        async def stored() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM meter_readings") == 1)

        await _until(stored, "the valid reading stored")
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == 0
    assert _count("rejected") == rejected + 2


async def test_a_reading_of_another_device_than_the_topics_is_rejected(
    engine: FastAPI, broker_url: str, prefix: str, conn: asyncpg.Connection
) -> None:
    at = minute_ago(1)
    with device(broker_url) as dev:
        dev.subscribe(f"{prefix}/errors/#")
        mixed = [meter("M-1", at, 1.0), meter("M-2", at, 1.0)]
        dev.publish(f"{prefix}/meters/M-1", orjson.dumps(mixed))
        body = orjson.loads((await dev.next_message()).payload)
        assert body["error"] == "device_mismatch"
        assert body["errors"] == [
            {
                "index": 1,
                "field": "meterId",
                "reason": "the topic is for 'M-1'; publish each device's readings to its own topic",
            }
        ]
        # A vehicle's reading on a meter's topic is not a meter reading.
        dev.publish(f"{prefix}/meters/V-1", orjson.dumps(vehicle("V-1", at, 1.0)))
        error = await dev.next_message()
        assert error.topic == f"{prefix}/errors/meters/V-1"
        body = orjson.loads(error.payload)
        assert body["error"] == "invalid_readings"
        assert {item["field"] for item in body["errors"]} >= {"meterId", "kwhConsumedAc"}
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 0


async def test_two_engines_on_one_shared_subscription_store_each_reading_once(
    make_settings: MakeSettings, broker_url: str, prefix: str, conn: asyncpg.Connection
) -> None:
    duplicates = _readings("mqtt", "duplicate", "meter")
    first = make_settings(**_mqtt_settings(broker_url, prefix, "engine-a"))
    second = make_settings(**_mqtt_settings(broker_url, prefix, "engine-b"))
    messages = 60
    async with running(first) as one, running(second) as two:
        with device(broker_url) as dev:
            for number in range(messages):
                reading = meter(f"M-{number}", minute_ago(1), float(number))
                dev.publish(f"{prefix}/meters/M-{number}", orjson.dumps(reading))

        async def all_stored() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM meter_readings")
            return bool(count == messages)

        await _until(all_stored, "every reading stored")
        both = _async(lambda: one.state.writer.flushes > 0 and two.state.writer.flushes > 0)
        await _until(both, "both engines took a share of the messages")
    assert await conn.fetchval("SELECT count(DISTINCT meter_id) FROM meter_readings") == messages
    assert _readings("mqtt", "duplicate", "meter") == duplicates


async def test_a_message_the_database_could_not_take_is_stored_once_it_is_back(
    private_postgres: PrivatePostgres, broker_url: str, prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        database_url=private_postgres.url,
        data_dir=tmp_path,
        auth=False,
        connect_timeout=timedelta(seconds=1),
        acquire_timeout=timedelta(seconds=1),
        **_mqtt_settings(broker_url, prefix, "engine-outage"),
    )
    redelivered = _count("redelivered")
    at = minute_ago(1)
    with device(broker_url) as dev:
        # Stored after an outage within one engine: retried until the database is back.
        async with running(settings) as app:
            private_postgres.stop()
            dev.publish(f"{prefix}/meters/M-1", orjson.dumps(meter("M-1", at, 1.0)))
            await asyncio.sleep(1.0)  # submitted and refused at least once
            private_postgres.start()
            await _until(_async(lambda: app.state.writer.flushes >= 1), "stored after the outage")

        # Kept by the broker across an engine's stop: the engine stops while the database is
        # down, the message unacknowledged; the same client id gets it again (DUP) and stores it.
        async with running(settings):
            private_postgres.stop()
            dev.publish(f"{prefix}/meters/M-2", orjson.dumps(meter("M-2", at, 2.0)))
            await asyncio.sleep(0.5)
        private_postgres.start()
        async with running(settings) as app:
            await _until(_async(lambda: app.state.writer.flushes >= 1), "stored after a restart")
    assert _count("redelivered") == redelivered + 1
    stored = await asyncpg.connect(private_postgres.url)
    try:
        rows = await stored.fetch("SELECT meter_id FROM meter_readings ORDER BY meter_id")
    finally:
        await stored.close()
    assert [row["meter_id"] for row in rows] == ["M-1", "M-2"]


async def test_the_simulator_publishes_its_readings_over_mqtt(
    engine: FastAPI, broker_url: str, prefix: str, conn: asyncpg.Connection
) -> None:
    start = floor_minute(datetime.now(UTC)) - timedelta(minutes=9)
    fleet = Fleet(FleetConfig(meters=3, vehicles=3, seed=1), start)
    settings = Settings(_env_file=None, mqtt_topic_prefix=prefix)
    async with app_client(engine) as http, publisher(broker_url, settings) as readings:
        stats = await simulate(
            http, fleet, end=start + timedelta(minutes=9), send_readings=readings.send
        )
    assert stats.readings == 60
    assert (stats.accepted, stats.rejected, stats.first_error) == (60, 0, None)

    async def all_stored() -> bool:
        meters = await conn.fetchval("SELECT count(*) FROM meter_readings")
        vehicles = await conn.fetchval("SELECT count(*) FROM vehicle_readings")
        return bool(meters + vehicles == 60)

    await _until(all_stored, "every published reading stored")


def test_simulate_refuses_a_broker_url_of_another_scheme() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--mqtt", "http://broker:1883"])
    assert result.exit_code == 2
    assert "mqtt:// or mqtts://" in result.output


def test_only_a_stable_client_id_keeps_its_session() -> None:
    writer: Any = None  # not started: only the connection's parameters are read
    stable = Settings(_env_file=None, mqtt_url="mqtt://h", mqtt_client_id="engine-1")
    assert Subscriber(stable, writer).session_expiry_s == 300
    default = Subscriber(Settings(_env_file=None, mqtt_url="mqtt://h"), writer)
    assert default.session_expiry_s == 0
    assert default.client_id.startswith("energy-engine-")


def _documented_acl() -> str:
    """The ACL file docs/mqtt.md gives (its block starting `# energy.acl`)."""
    doc = (Path(__file__).parents[2] / "docs" / "mqtt.md").read_text()
    head = "```text\n# energy.acl\n"
    assert head in doc
    return "# energy.acl\n" + doc.split(head, 1)[1].split("```", 1)[0]


async def test_the_documented_acl_lets_a_device_publish_only_to_its_own_topic(
    make_settings: MakeSettings, tmp_path: Path, conn: asyncpg.Connection
) -> None:
    acl = tmp_path / "energy.acl"
    acl.write_text(_documented_acl())
    passwords = tmp_path / "energy.passwd"
    passwords.touch(mode=0o600)
    for user in ("energy-engine", "M-1"):
        add = [MOSQUITTO_PASSWD, "-b", str(passwords), user, f"{user}-pw"]
        await asyncio.to_thread(subprocess.run, add, check=True)
    access = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    at = minute_ago(1)
    with mosquitto(tmp_path, access) as url:
        engine_url = url.replace("mqtt://", "mqtt://energy-engine:energy-engine-pw@")
        async with running(make_settings(mqtt_url=engine_url, mqtt_client_id="engine-acl")):
            with device(url, "M-1", "M-1-pw") as dev:
                dev.subscribe("energy/errors/meters/M-1")
                dev.publish("energy/meters/M-2", orjson.dumps(meter("M-2", at, 1.0)))
                dev.publish("energy/meters/M-1", orjson.dumps(meter("M-1", at, 1.0)))
                dev.publish("energy/meters/M-1", orjson.dumps(meter("M-2", at, 2.0)))
                # The engine may answer on the device's error topic, and the device read it.
                error = await dev.next_message()
                assert orjson.loads(error.payload)["error"] == "device_mismatch"

                async def stored() -> bool:
                    return bool(await conn.fetchval("SELECT count(*) FROM meter_readings") == 1)

                await _until(stored, "M-1's reading stored")
    # The engine has stopped, storing what it had received: the broker dropped M-1's publish
    # to M-2's topic, it never reached the engine.
    assert [r["meter_id"] for r in await conn.fetch("SELECT meter_id FROM meter_readings")] == [
        "M-1"
    ]


def test_serve_refuses_one_client_id_for_several_workers() -> None:
    env = {"DATABASE_URL": "postgresql://engine@127.0.0.1:1/energy", "MQTT_URL": "mqtt://h"}
    result = CliRunner().invoke(
        cli, ["serve", "--workers", "2"], env={**env, "ENERGY_MQTT_CLIENT_ID": "engine-1"}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ENERGY_MQTT_CLIENT_ID names one MQTT session")


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed (openssl)."""
    files = {name: directory / name for name in ("ca.crt", "ca.key")}

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", files["ca.key"], "-out", files["ca.crt"],
            "-days", "1", "-subj", "/CN=energy test CA")  # fmt: skip
    for name, subject in (("server", "127.0.0.1"), ("client", "energy-engine")):
        extensions = directory / f"{name}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "")
        request = directory / f"{name}.csr"
        files[f"{name}.key"] = directory / f"{name}.key"
        files[f"{name}.crt"] = directory / f"{name}.crt"
        openssl("req", *key, "-keyout", files[f"{name}.key"], "-out", request,
                "-subj", f"/CN={subject}")  # fmt: skip
        openssl("x509", "-req", "-in", request, "-CA", files["ca.crt"], "-CAkey", files["ca.key"],
                "-CAcreateserial", "-days", "1", "-out", files[f"{name}.crt"],
                "-extfile", extensions)  # fmt: skip
    return files


async def test_the_engine_connects_over_tls_with_a_client_certificate(
    make_settings: MakeSettings, tmp_path: Path, conn: asyncpg.Connection
) -> None:
    certs = await asyncio.to_thread(_certificates, tmp_path)
    tls_port = free_port()
    # Devices publish on the plain listener; the engine must come in over TLS.
    access = (
        f"allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {certs['ca.crt']}\n"
        f"certfile {certs['server.crt']}\nkeyfile {certs['server.key']}\n"
        "require_certificate true\n"
    )
    settings = make_settings(
        mqtt_url=f"mqtts://127.0.0.1:{tls_port}",
        mqtt_ca_file=certs["ca.crt"],
        mqtt_cert_file=certs["client.crt"],
        mqtt_key_file=certs["client.key"],
        mqtt_client_id="engine-tls",
    )
    with mosquitto(tmp_path, access) as url:
        async with running(settings):
            with device(url) as dev:
                dev.publish("energy/meters/M-1", orjson.dumps(meter("M-1", minute_ago(1), 1.0)))

            async def stored() -> bool:
                return bool(await conn.fetchval("SELECT count(*) FROM meter_readings") == 1)

            await _until(stored, "the reading stored through the TLS subscription")


async def test_the_engine_waits_for_the_broker_and_reconnects_after_it_restarts(
    make_settings: MakeSettings, tmp_path: Path, conn: asyncpg.Connection
) -> None:
    port = free_port()
    settings = make_settings(mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_client_id="engine-re")
    application = create_app(settings)
    async with application.router.lifespan_context(application):  # no broker yet: it starts
        subscriber: Subscriber = application.state.mqtt
        await asyncio.sleep(0.3)
        assert not subscriber.subscribed.is_set()
        for minute in (2, 1):  # the broker comes up; then it restarts
            with mosquitto(tmp_path, port=port) as url:
                await asyncio.wait_for(subscriber.subscribed.wait(), 15)
                with device(url) as dev:
                    reading = meter("M-1", minute_ago(minute), float(10 - minute))
                    dev.publish("energy/meters/M-1", orjson.dumps(reading))

                async def stored(count: int = 3 - minute) -> bool:
                    found = await conn.fetchval("SELECT count(*) FROM meter_readings")
                    return bool(found == count)

                await _until(stored, f"the reading of {minute} minutes ago stored")
            await _until(_async(lambda: not subscriber.subscribed.is_set()), "the broker gone")


async def test_a_broker_that_stops_answering_is_left_within_the_keepalive_and_rejoined(
    make_settings: MakeSettings, tmp_path: Path, conn: asyncpg.Connection
) -> None:
    with mosquitto(tmp_path) as url:
        settings = make_settings(
            mqtt_url=url, mqtt_client_id="engine-ka", mqtt_keepalive=timedelta(seconds=5)
        )
        async with running(settings) as application:
            subscriber: Subscriber = application.state.mqtt
            broker = int((tmp_path / "mosquitto.pid").read_text())
            os.kill(broker, signal.SIGSTOP)  # frozen: its socket stays open, nothing answers
            try:
                lost = _async(lambda: not subscriber.subscribed.is_set())
                # A PINGREQ after 5 s without traffic, no PINGRESP within another 5 s.
                await _until(lost, "the frozen broker given up", within_s=20)
            finally:
                os.kill(broker, signal.SIGCONT)
            await asyncio.wait_for(subscriber.subscribed.wait(), 30)
            with device(url) as dev:
                dev.publish("energy/meters/M-1", orjson.dumps(meter("M-1", minute_ago(1), 1.0)))

            async def stored() -> bool:
                return bool(await conn.fetchval("SELECT count(*) FROM meter_readings") == 1)

            await _until(stored, "the reading stored after the broker came back")
