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
import pytest

from tests.conftest import AUTH
from tests.e2e.test_serve import serve
from tests.mosquitto import mosquitto

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
