"""Authentication in a real `energy-engine serve`: the first start's admin key (printed once,
written 0600), keys made by `energy-engine keys` while it runs, and ENERGY_AUTH=off only on
loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from energy_engine.auth import keyfile
from tests.e2e.test_serve import serve

pytestmark = pytest.mark.e2e

KEY = re.compile(r"ee_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def _stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then everything the process printed."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stdout is not None
    return process.stdout.read().decode()


def _keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "energy_engine.cli", "keys", *args]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_the_first_start_prints_an_admin_key_once_and_keeps_it_for_this_user(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {"DATABASE_URL": "", "ENERGY_DATA_DIR": str(data)}
    with serve(env, tmp_path) as (base, process):
        stored = keyfile.read(data)
        assert stored is not None and KEY.fullmatch(stored)
        assert (data / keyfile.FILE_NAME).stat().st_mode & 0o777 == 0o600
        admin = keyfile.headers(stored)
        assert httpx.get(f"{base}/v1/fleet/status", headers=admin).status_code == 200
        refused = httpx.get(f"{base}/v1/fleet/status")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        # A key made by the command while the engine runs (on the same embedded PostgreSQL)
        # works at once.
        made = _keys(env, "create", "--scope", "read", "--name", "dashboard")
        assert made.returncode == 0, made.stderr
        reader = keyfile.headers(made.stdout.strip())
        assert httpx.get(f"{base}/v1/fleet/status", headers=reader).status_code == 200
        assert httpx.post(f"{base}/v1/ingest", json={}, headers=reader).status_code == 403
        output = _stop(process)
    assert KEY.findall(output) == [stored]  # printed once, and it is the one in the file
    assert "Traceback" not in output

    with serve(env, tmp_path) as (base, process):
        assert httpx.get(f"{base}/v1/fleet/status", headers=admin).status_code == 200
        output = _stop(process)
    assert KEY.findall(output) == []  # not printed again
    assert keyfile.read(data) == stored
    listed = _keys(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["admin", "read"]


def test_auth_off_serves_on_loopback_only(tmp_path: Path, database_url: str) -> None:
    command = [sys.executable, "-m", "energy_engine.cli", "serve", "--host", "0.0.0.0"]
    env = {**os.environ, "ENERGY_AUTH": "off", "DATABASE_URL": database_url}
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: ENERGY_AUTH=off") and line.endswith("not 0.0.0.0")

    with serve({"ENERGY_AUTH": "off", "DATABASE_URL": database_url}, tmp_path) as (base, _):
        assert httpx.get(f"{base}/v1/fleet/status").status_code == 200
