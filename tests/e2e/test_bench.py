"""The benchmark (`python -m benchmarks`, run from the checkout): the quick run end to end,
what it does without wrk, and that the engine never imports it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from benchmarks import brokers, ceilings, fleet, harness, scenarios
from energy_engine import db, sql
from energy_engine.analytics import store
from energy_engine.settings import EnergySemantics, Settings

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


# The write statements alone (ceilings), and queue mode with a message per reading (its cost):
# no target of their own.
REPORTED_ONLY = {1, 14, 21, 22}
LAST = 22  # the highest row number


def check_page(page: str) -> None:
    """What every results page must hold (also usable on a page written by hand:
    `python -c 'from tests.e2e.test_bench import check_page; ...'`)."""
    assert "- Git revision: " in page and "- Machine: " in page
    table = _table(page)
    assert list(table) == list(range(1, LAST + 1))
    for number, (_, _, _, verdict) in table.items():
        assert verdict in VERDICTS, (number, verdict)
        assert (verdict == "-") == (number in REPORTED_ONLY), (number, verdict)

    # Every figure measured, not a zero or a placeholder.
    measured = {number: row[2] for number, row in table.items()}
    for number in (1, 2, 6, 14, 15, 18, 19, 20, 21, 22):
        assert _number(r"^([\d,]+) readings/s", measured[number]) > 0, measured[number]
    for number in (18, 19, 20, 21, 22):  # MQTT and queue mode, against direct HTTP batches
        assert _number(r"= (\d+)% of \(2\)", measured[number]) > 0, measured[number]
    assert _number(r"= (\d+)% of \(1\)", measured[2]) > 0
    assert _number(r"= (\d+)% of \(14\)", measured[15]) > 0
    for number in (3, 5, 9):
        assert _number(r"^([\d,]+) req/s", measured[number]) > 0, measured[number]
        assert _number(r"p50 ([\d.]+) ms", measured[number]) > 0, measured[number]
        assert _number(r"p99 ([\d.]+) ms", measured[number]) > 0, measured[number]
    assert re.search(r"p99 [\d.]+ ms at [\d,]+/s|not held at [\d,]+/s", measured[4]), measured[4]
    assert 0 < _number(r"^([\d.]+) B ", measured[7]) < 10_000, measured[7]
    for number in (8, 12, 13):
        assert _number(r"p50 (\d+) ms", measured[number]) > 0, measured[number]
    assert 0 < _number(r"^(\d+)%$", measured[10]) < 100, measured[10]
    assert 10 < _number(r"^(\d+) MB at most", measured[16]) < 10_000, measured[16]
    assert 0 < _number(r"^([\d.]+) B, ", measured[17]) < 10_000, measured[17]
    # Packing changes no answer and packs every reading it was given.
    assert re.search(r"B, 0 of [1-9]\d* answers changed$", measured[17]), measured[17]

    # Each scenario's runs are listed under its number.
    runs = page.split("\n## Runs\n", 1)[1]
    for number in range(1, LAST + 1):
        assert re.search(rf"^{number}\. .+\n   - \S", runs, flags=re.MULTILINE), number
    # After each ingest scenario (2, 3, 15; in queue mode 19-22 once the stream was empty) the
    # bench counted in SQL what the server acknowledged.
    checks = re.findall(r"([\d,]+) acknowledged, ([\d,]+) stored", page)
    assert len(checks) == 7
    for acknowledged, stored in checks:
        assert int(stored.replace(",", "")) >= int(acknowledged.replace(",", "")) > 0
    # MQTT (18): what the broker acknowledged to the publishers, counted in SQL.
    published = re.findall(r"([\d,]+) acknowledged by the broker, ([\d,]+) stored", page)
    assert published
    for acknowledged, stored in published:
        assert int(stored.replace(",", "")) >= int(acknowledged.replace(",", "")) > 0
    assert "READINGS LOST" not in page
    # The default window is the last 24 whole hours, answered as such.
    default = re.search(r"^13\. .+\n   - \[(\S+), (\S+)\): ", runs, flags=re.MULTILINE)
    assert default, runs
    span = datetime.fromisoformat(default[2]) - datetime.fromisoformat(default[1])
    assert span == timedelta(hours=24) and default[2].endswith(":00:00Z"), default[0]


@pytest.mark.bench
def test_quick_bench_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out.read_text()
    assert "- Command: `python -m benchmarks --quick --out " in page
    check_page(page)


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


def test_a_missing_broker_is_a_bench_error_saying_what_to_install() -> None:
    with pytest.raises(harness.BenchError, match=r"apt-get install no-such-package"):
        brokers.ensure_binary("no-such-broker", "no-such-package")
    assert brokers.ensure_binary("mosquitto", "mosquitto").endswith("/mosquitto")


def test_a_partial_run_measures_the_rows_asked_for_and_those_they_are_measured_against() -> None:
    everything = scenarios.wanted(None)
    assert all(everything(row) for row in range(1, LAST + 1))
    queue = scenarios.wanted(frozenset({19, 20}))
    assert [row for row in range(1, LAST + 1) if queue(row)] == [1, 2, 19, 20]
    rss = scenarios.wanted(frozenset({16}))
    assert [row for row in range(1, LAST + 1) if rss(row)] == [1, 2, 14, 15, 16]


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


def test_the_old_windows_lie_in_the_packed_days_and_end_off_the_hour() -> None:
    """Scenario 17 compares answers over the days it packs: every window starts there, and
    neither end is a whole hour (the edges come from readings, not rollups)."""
    day = fleet.window_day()
    requests = fleet.old_requests(10_000, day)
    assert len(requests) == 26 and len(set(map(str, requests))) == 26
    for path, params in requests:
        start, end = (datetime.fromisoformat(params[key]) for key in ("from", "to"))
        assert day - timedelta(days=fleet.LONG_HISTORY_DAYS - 1) < start < end, (path, params)
        assert start < day and end <= day + timedelta(days=1), (path, params)
        assert start.minute % 60 and end.minute % 60, (path, params)
        vehicle = re.search(r"vehicle-(\d+)", path)
        assert vehicle is None or 1 <= int(vehicle[1]) <= fleet.LONG_HISTORY_VEHICLES


def _bound(statement: str, values: dict[str, str]) -> str:
    """`statement` with each `:variable` its value as a literal of no declared type."""
    return re.sub(r":([a-z_]+)", lambda found: f"'{values[found[1]]}'", statement)


@pytest.mark.parametrize("semantics", list(EnergySemantics))
async def test_the_ceiling_runs_the_report_statement_under_pgbench(
    conn: asyncpg.Connection,
    database_url: str,
    make_settings: Callable[..., Settings],
    semantics: EnergySemantics,
    tmp_path: Path,
) -> None:
    """The statement given to pgbench answers as the engine's report does, each variable a
    text of no declared type as pgbench sends it; pgbench runs it."""
    settings = make_settings(energy_semantics=semantics)
    end = datetime.now(UTC)
    start = end - timedelta(hours=3)
    bench = sql.load("benchmarks")
    await db.ensure_partitions(conn, start.date() - timedelta(days=1), end.date())
    for query in (bench.fleet_meter_history, bench.fleet_vehicle_history):
        await conn.execute(query, start - timedelta(minutes=10), 200, 3, 0)
    await conn.execute(bench.fleet_assignments, start - timedelta(days=1), 3)

    script = ceilings.report_script(3)
    first, statement = script.split("\n", 1)
    assert first == "\\set vehicle random(1, 3)" and "$" not in statement
    values = ceilings.variables(settings, start, end)
    for number in (1, 2, 3):
        found = await conn.fetchrow(_bound(statement, {**values, "vehicle": str(number)}))
        expected = await store.performance(conn, f"vehicle-{number:05d}", start, end, settings)
        assert expected is not None and expected.dc.readings > 0
        assert found is not None
        assert (found["readings"], found["kwh"]) == (expected.dc.readings, expected.dc.kwh)
        assert (found["meter_ids"], found["meter_kwh"]) == (expected.meter_ids, expected.meter_kwh)

    (tmp_path / "report.pgbench").write_text(script)
    rate = harness.run_pgbench(
        harness.ensure_pgbench(),
        database_url,
        tmp_path / "report.pgbench",
        clients=2,
        threads=1,
        seconds=1,
        variables=values,
        settings=ceilings.SESSION,
    )
    assert rate > 0
