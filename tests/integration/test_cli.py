"""The commands' options are validated, and a PostgreSQL that cannot be used is one line."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from energy_engine.cli import cli
from tests.conftest import admin, with_database

REFUSED = "postgresql://engine@127.0.0.1:1/energy"  # nothing listens on port 1


def _invoke(args: list[str], database_url: str) -> Result:
    return CliRunner().invoke(cli, args, env={"DATABASE_URL": database_url})


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["serve", "--port", "70000"], "'--port': Input should be less than or equal to 65535"),
        (["serve", "--port", "-1"], "'--port': Input should be greater than or equal to 0"),
        (["serve", "--workers", "0"], "'--workers': Input should be greater than or equal to 1"),
        (["serve", "--log-level", "chatty"], "'chatty' is not one of 'critical', 'error', "),
        (["simulate", "--url", "127.0.0.1:8000"], "give an http:// or https:// URL"),
        (["simulate", "--url", "http://127.0.0.1:99999"], "'--url': Port out of range"),
        (["simulate", "--concurrency", "0"], "'--concurrency': Input should be greater than"),
        (["simulate", "--seed", "x"], "'--seed': Input should be a valid integer"),
        (["simulate", "--faulty-share", "1.5"], "'--faulty-share': Input should be less than"),
        (["import", "--chunk-rows", "0", "x.ndjson"], "'--chunk-rows': Input should be greater"),
    ],
)
def test_an_invalid_option_is_refused_before_anything_runs(args: list[str], complaint: str) -> None:
    result = _invoke(args, REFUSED)
    assert result.exit_code == 2
    # The message as one line, without the box typer draws around it.
    assert complaint in " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())


def test_an_invalid_setting_is_one_line_per_setting() -> None:
    result = CliRunner().invoke(
        cli, ["migrate"], env={"DATABASE_URL": REFUSED, "ENERGY_HTTP_HEADER_TIMEOUT": "soon"}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ENERGY_HTTP_HEADER_TIMEOUT: Input should be a valid")
    assert len(result.stderr.splitlines()) == 1


def _one_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no other exception escaped
    assert "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: ") and line.endswith("; check DATABASE_URL")
    return line


@pytest.mark.parametrize(
    "args",
    [["serve"], ["serve", "--workers", "2"], ["migrate"], ["import", "--quiet", "FILE"]],
)
def test_an_unreachable_database_is_one_line(args: list[str], tmp_path: Path) -> None:
    readings = tmp_path / "readings.ndjson"
    readings.write_text("")
    args = [str(readings) if arg == "FILE" else arg for arg in args]
    line = _one_line(_invoke(args, REFUSED))
    assert line.startswith("error: cannot reach PostgreSQL at 127.0.0.1:1 (connection refused)")


def test_an_unreachable_read_replica_is_one_line(postgres_url: str) -> None:
    env = {"DATABASE_URL": postgres_url, "DATABASE_READ_URL": REFUSED}
    result = CliRunner().invoke(cli, ["serve"], env=env)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output == (
        "error: cannot reach PostgreSQL at 127.0.0.1:1 (connection refused); "
        "check DATABASE_READ_URL\n"
    )


def test_a_database_that_refuses_the_login_is_one_line(postgres_url: str) -> None:
    line = _one_line(_invoke(["migrate"], with_database(postgres_url, "no_such_database")))
    assert 'refused the login (database "no_such_database" does not exist)' in line


def test_a_malformed_database_url_is_one_line() -> None:
    line = _one_line(_invoke(["serve"], "mysql://engine@localhost/energy"))
    assert line.startswith("error: DATABASE_URL is not a PostgreSQL URL (invalid DSN: scheme")


def test_the_real_process_prints_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "energy_engine.cli", "serve", "--workers", "2"],
        env={"DATABASE_URL": REFUSED, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "error: cannot reach PostgreSQL at 127.0.0.1:1 (connection refused); check DATABASE_URL\n"
    )


RETENTION = {"ENERGY_HISTORY_RETENTION": "P20D", "ENERGY_MAX_READING_AGE": "P10D"}
PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
"""
CATALOG = "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"


def _names(database_url: str, query: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return {row[0] for row in await conn.fetch(query)}
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_retention_dry_run_lists_what_would_go_and_a_round_drops_it(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, **RETENTION}
    catalog = _names(database_url, CATALOG)
    partitions = _names(database_url, PARTITIONS)

    dry = CliRunner().invoke(cli, ["retention", "--dry-run"], env=env)

    assert dry.exit_code == 0, dry.output
    assert _names(database_url, CATALOG) == catalog
    listed = set(re.findall(r"^  (\w+_readings_p\d{8})  ", dry.stdout, re.MULTILINE))
    assert listed and listed < partitions
    total = re.search(r"^would drop (\d+) partitions, ([\d,]+) bytes", dry.stdout, re.MULTILINE)
    assert total is not None and int(total[1]) == len(listed) and int(total[2].replace(",", ""))
    assert "rollup retention: not set" in dry.stdout

    done = CliRunner().invoke(cli, ["retention"], env=env)

    assert done.exit_code == 0, done.output
    assert f"dropped {len(listed)} partitions" in done.stdout
    assert _names(database_url, PARTITIONS) == partitions - listed


def test_retention_without_a_period_drops_nothing(database_url: str) -> None:
    partitions = _names(database_url, PARTITIONS)
    result = CliRunner().invoke(cli, ["retention"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "history retention: not set" in result.stdout
    assert "dropped 0 partitions, 0 bytes" in result.stdout
    assert _names(database_url, PARTITIONS) == partitions


def test_retention_refuses_while_another_process_holds_the_maintenance_lock(
    database_url: str,
) -> None:
    from energy_engine.lifecycle.maintenance import MAINTENANCE_LOCK_KEY

    # The other process: a session on its own event loop, holding the lock while the command,
    # on another loop, runs.
    loop = asyncio.new_event_loop()
    other = loop.run_until_complete(asyncpg.connect(database_url))
    try:
        loop.run_until_complete(other.execute("SELECT pg_advisory_lock($1)", MAINTENANCE_LOCK_KEY))
        partitions = _names(database_url, PARTITIONS)
        result = _invoke(["retention"], database_url)
        assert result.exit_code == 1
        assert result.stderr == "error: another process is running a maintenance round; try again\n"
        assert _names(database_url, PARTITIONS) == partitions
    finally:
        loop.run_until_complete(other.close())
        loop.close()


def test_retention_works_on_the_embedded_postgres(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "", "ENERGY_DATA_DIR": str(tmp_path / "data"), **RETENTION}
    done = CliRunner().invoke(cli, ["retention"], env=env)
    assert done.exit_code == 0, done.output
    assert "dropped 0 partitions" in done.stdout  # a new database holds nothing that old
    dry = CliRunner().invoke(cli, ["retention", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "would drop 0 partitions, 0 bytes" in dry.stdout
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").read_text().strip() == "16"


def test_a_dry_run_on_a_database_without_schema_is_one_line(postgres_url: str) -> None:
    name = f"retention_empty_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    try:
        env = {"DATABASE_URL": with_database(postgres_url, name), **RETENTION}
        env["ENERGY_ROLLUP_RETENTION"] = "P30D"
        result = CliRunner().invoke(cli, ["retention", "--dry-run"], env=env)
        assert result.exit_code == 1, result.output
        assert result.stderr == "error: the database has no schema yet: nothing to drop\n"
        assert _names(with_database(postgres_url, name), CATALOG) == set()
    finally:
        asyncio.run(admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
