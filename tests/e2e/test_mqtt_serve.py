"""`energy-engine serve` with MQTT_URL and `energy-engine simulate --mqtt`, as real processes,
against a Mosquitto of the test's own."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import AUTH
from tests.e2e.test_serve import serve
from tests.mosquitto import device, mosquitto
from tests.readings import minute_ago, vehicle

pytestmark = pytest.mark.e2e

SELECT_COUNTS = (
    "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
)


async def _stored(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(SELECT_COUNTS)
        return count
    finally:
        await conn.close()


def test_simulate_publishes_over_mqtt_to_a_serving_engine(
    database_url: str, tmp_path: Path
) -> None:
    with mosquitto(tmp_path) as broker:
        env = {"DATABASE_URL": database_url, "MQTT_URL": broker}
        with serve(env, tmp_path) as (base, _):
            command = [sys.executable, "-m", "energy_engine.cli", "simulate", "--url", base]
            command += ["--mqtt", broker, "--meters", "2", "--vehicles", "2", "--backfill", "0.01"]
            key = AUTH["Authorization"].removeprefix("Bearer ")
            done = subprocess.run(
                command,
                env={**os.environ, "ENERGY_API_KEY": key},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            found = re.search(
                r"^readings: accepted ([\d,]+), duplicates 0, rejected 0", done.stderr, re.MULTILINE
            )
            assert found, done.stderr
            published = int(found[1].replace(",", ""))
            assert published > 0
            # The broker has acknowledged them; the engine commits them just after.
            deadline = time.monotonic() + 30
            while (stored := asyncio.run(_stored(database_url))) < published:
                assert time.monotonic() < deadline, f"{stored} of {published} stored"
                time.sleep(0.1)
            assert stored == published


def _mqtt_counts(base: str) -> dict[str, float]:
    """This process's MQTT readings by outcome, from its /metrics."""
    text = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10).text
    counts: dict[str, float] = {}
    for outcome, value in re.findall(
        r'^energy_readings_total\{outcome="(\w+)",stream="\w+",transport="mqtt"\} ([\d.e+]+)$',
        text,
        re.MULTILINE,
    ):
        counts[outcome] = counts.get(outcome, 0.0) + float(value)
    return counts


def test_two_serving_engines_share_one_subscription_and_store_each_reading_once(
    database_url: str, tmp_path: Path
) -> None:
    """Two `serve` processes on one broker: the shared subscription gives each message to
    one of them, so both take a share and no reading is written twice."""
    readings = [
        vehicle(f"V-{i % 10}", minute_ago(1 + i // 10), float(100 - i // 10)) for i in range(200)
    ]
    for name in ("a", "b"):  # each process's working directory, data directory and metrics
        (tmp_path / name).mkdir()
    with mosquitto(tmp_path) as broker:
        env = {"DATABASE_URL": database_url, "MQTT_URL": broker, "ENERGY_LOG_LEVEL": "warning"}
        with serve(env, tmp_path / "a") as (first, _), serve(env, tmp_path / "b") as (second, _):
            time.sleep(1)  # both subscriptions in place before the first message
            with device(broker) as dev:
                for reading in readings:
                    dev.publish(f"energy/vehicles/{reading['vehicleId']}", orjson.dumps(reading))
            deadline = time.monotonic() + 30
            while (stored := asyncio.run(_stored(database_url))) < len(readings):
                assert time.monotonic() < deadline, f"{stored} of {len(readings)} stored"
                time.sleep(0.1)
            shares = [_mqtt_counts(first), _mqtt_counts(second)]
    assert stored == len(readings)
    assert all(share.get("accepted", 0) > 0 for share in shares), shares
    assert sum(share.get("accepted", 0) for share in shares) == len(readings)
    assert sum(share.get("duplicate", 0) for share in shares) == 0
