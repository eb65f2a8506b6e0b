"""`energy-engine bench --quick` runs every scenario end to end and writes its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "energy_engine.cli", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out.read_text()
    rows = re.findall(r"^\| (\d+) \|", page, flags=re.MULTILINE)
    assert rows == [str(n) for n in range(1, 11)]
    assert "- Git revision: " in page and "- Machine: " in page
    # After each ingest scenario the bench counted in SQL what the server acknowledged.
    checks = re.findall(r"([\d,]+) acknowledged, ([\d,]+) stored", page)
    assert len(checks) == 2
    for acknowledged, stored in checks:
        assert int(stored.replace(",", "")) >= int(acknowledged.replace(",", "")) > 0
    assert "READINGS LOST" not in page
