"""`energy-engine simulate` sending to a real `energy-engine serve`, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH
from tests.e2e.test_serve import serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigterm_stops_a_live_simulation_with_its_summary(
    database_url: str, tmp_path: Path
) -> None:
    with serve({"DATABASE_URL": database_url}, tmp_path) as (base, _):
        command = [sys.executable, "-m", "energy_engine.cli", "simulate", "--url", base]
        command += ["--meters", "3", "--vehicles", "3"]
        # The key the test databases hold, as a user would pass one.
        env = {**os.environ, "ENERGY_API_KEY": AUTH["Authorization"].removeprefix("Bearer ")}
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        # Live, in real time: the current minute's readings go out at once, then it waits.
        deadline = time.monotonic() + 30
        while (
            httpx.get(f"{base}/v1/vehicles/vehicle-00001/status", headers=AUTH).status_code != 200
        ):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert re.search(r"^readings: accepted [1-9]", stderr, re.MULTILINE), stderr
    assert re.search(r"^assignments: created \d+, unchanged", stderr, re.MULTILINE), stderr
