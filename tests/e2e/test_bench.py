"""The benchmark (`python -m benchmarks`, run from the checkout): the quick run end to end,
what it does without wrk, and that the engine never imports it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from energy_engine import sql

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = {"met", "**not met**", "-"}


def _number(pattern: str, text: str) -> float:
    """The first group of `pattern` in `text` as a number ("1,234.5" -> 1234.5)."""
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return float(found[1].replace(",", ""))


def _table(page: str) -> dict[int, tuple[str, str, str, str]]:
    """The results table: number -> (scenario, target, measured, verdict)."""
    rows = {}
    for line in page.splitlines():
        if re.match(r"^\| \d+ \|", line):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            assert len(cells) == 5, line
            rows[int(cells[0])] = (cells[1], cells[2], cells[3], cells[4])
    return rows


@pytest.mark.bench
def test_quick_bench_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out.read_text()
    assert "- Command: `python -m benchmarks --quick --out " in page
    assert "- Git revision: " in page and "- Machine: " in page
    table = _table(page)
    assert list(table) == list(range(1, 11))
    for number, (_, _, _, verdict) in table.items():
        assert verdict in VERDICTS, (number, verdict)
        assert (verdict == "-") == (number == 1), (number, verdict)  # only (1) has no target

    # Every figure measured, not a zero or a placeholder.
    measured = {number: row[2] for number, row in table.items()}
    for number in (1, 2, 6):
        assert _number(r"^([\d,]+) readings/s", measured[number]) > 0, measured[number]
    assert _number(r"= (\d+)% of \(1\)", measured[2]) > 0
    for number in (3, 5, 9):
        assert _number(r"^([\d,]+) req/s", measured[number]) > 0, measured[number]
        assert _number(r"p50 ([\d.]+) ms", measured[number]) > 0, measured[number]
        assert _number(r"p99 ([\d.]+) ms", measured[number]) > 0, measured[number]
    assert re.search(r"p99 [\d.]+ ms at [\d,]+/s|not held at [\d,]+/s", measured[4]), measured[4]
    assert 0 < _number(r"^([\d.]+) B ", measured[7]) < 10_000, measured[7]
    assert _number(r"p50 (\d+) ms", measured[8]) > 0, measured[8]
    assert 0 < _number(r"^(\d+)%$", measured[10]) < 100, measured[10]

    # Each scenario's runs are listed under its number.
    runs = page.split("\n## Runs\n", 1)[1]
    for number in range(1, 11):
        assert re.search(rf"^{number}\. .+\n   - \S", runs, flags=re.MULTILINE), number
    # After each ingest scenario the bench counted in SQL what the server acknowledged.
    checks = re.findall(r"([\d,]+) acknowledged, ([\d,]+) stored", page)
    assert len(checks) == 2
    for acknowledged, stored in checks:
        assert int(stored.replace(",", "")) >= int(acknowledged.replace(",", "")) > 0
    assert "READINGS LOST" not in page


def test_without_wrk_the_bench_says_how_to_install_it(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install wrk" in lines[0], done.stderr
    assert not out.exists()


def test_the_engine_never_imports_the_benchmarks() -> None:
    for path in (ROOT / "src" / "energy_engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "benchmarks" for name in names), path


def test_each_benchmark_statement_is_used_and_each_use_exists() -> None:
    defined = set(sql.load("benchmarks").names())
    used: set[str] = set()
    for module in (ROOT / "benchmarks").glob("*.py"):
        used |= set(re.findall(r"\bqueries\.([a-z_][a-z0-9_]*)\b", module.read_text()))
    assert sorted(used - {"names"}) == sorted(defined)


async def test_the_benchmark_statements_fit_the_engine_schema(conn: asyncpg.Connection) -> None:
    """They write the engine's tables behind its back: a schema change must not break them
    unnoticed until the next benchmark run."""
    queries = sql.load("benchmarks")
    for name in queries.names():
        await conn.prepare(getattr(queries, name))
