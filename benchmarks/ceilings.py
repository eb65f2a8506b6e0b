"""The physical ceilings of the per-vehicle report (scenarios 5 and 9): the report's statement
alone, driven by pgbench, and the HTTP layer alone, wrk on a route with no database work.

Both run right after the scenario's own wrk runs, on the same data, PostgreSQL and engine, with
as many connections, so that a row short of its target shows how far the parts allow it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.harness import WrkRun, ensure_pgbench, run_pgbench, run_wrk
from energy_engine import sql
from energy_engine.settings import EnergySemantics, Settings

REPORT = sql.load("energy_engine.analytics").performance
CONNECTIONS = 10  # as the scenarios' wrk runs
LIVE_PATH = "/health/live"

# What the request pool sets on every session (energy_engine.db.create_pool) and that changes
# how the statement is planned or what its times mean.
SESSION = {"plan_cache_mode": "force_generic_plan", "timezone": "UTC", "jit": "off"}

# The statement's parameters (analytics.store.performance) as pgbench variables. pgbench binds
# each `:name` as a parameter of its own, so every use of one becomes a parameter with the same
# value. The id is built in SQL: pgbench's own variables are numbers (analytics.lua's ids).
PARAMETERS = {
    "$1": "('vehicle-' || lpad(:vehicle, 5, '0'))",
    "$2": ":window_from",
    "$3": ":window_to",
    "$4": ":baseline_lookback",
    "$5": ":max_power_kw",
    "$6": ":interval_semantics",
}


@dataclass(frozen=True, slots=True)
class Ceilings:
    """The report's statement alone (transactions/s) and the HTTP layer alone (wrk's run)."""

    statement_per_second: float
    http: WrkRun

    def line(self) -> str:
        """The detail line of the scenario's row."""
        return (
            f"ceilings, same run: PostgreSQL alone (pgbench -c{CONNECTIONS}, the same statement) "
            f"{self.statement_per_second:,.0f} tx/s; HTTP layer alone (wrk -c{CONNECTIONS} "
            f"GET {LIVE_PATH}) {self.http.per_second:,.0f} req/s"
        )


def report_script(vehicles: int) -> str:
    """A pgbench script running the report's statement for a random vehicle of
    vehicle-00001 … vehicle-<vehicles>, the others of its parameters given with -D."""
    if not 1 <= vehicles <= 99_999:
        raise ValueError(f"ids have five digits, as analytics.lua writes them: not {vehicles}")
    # Comments go: pgbench would read a colon in them as a variable.
    statement = re.sub(r"--[^\n]*", "", REPORT)
    statement = re.sub(r"\$\d+\b", lambda found: PARAMETERS[found[0]], statement)
    return f"\\set vehicle random(1, {vehicles})\n{statement.strip()};\n"


def variables(settings: Settings, start: datetime, end: datetime) -> dict[str, str]:
    """The window and the settings' values of the statement's other parameters, as text."""
    return {
        "window_from": start.isoformat(),
        "window_to": end.isoformat(),
        "baseline_lookback": f"{settings.baseline_lookback.total_seconds()} seconds",
        "max_power_kw": repr(settings.max_power_kw),
        "interval_semantics": str(settings.energy_semantics is EnergySemantics.INTERVAL).lower(),
    }


def measure(
    wrk: str,
    scripts: Path,
    base: str,
    url: str,
    *,
    vehicles: int,
    start: datetime,
    end: datetime,
    seconds: int,
    work: Path,
) -> Ceilings:
    """The statement alone for `vehicles` over [start, end) on the database at `url`, then
    `LIVE_PATH` of the engine at `base`; each run once, `seconds` long."""
    script = work / "report.pgbench"
    script.write_text(report_script(vehicles), encoding="utf-8")
    statement = run_pgbench(
        ensure_pgbench(),
        url,
        script,
        clients=CONNECTIONS,
        threads=2,
        seconds=seconds,
        variables=variables(Settings(_env_file=None, database_url=url), start, end),
        settings=SESSION,
    )
    http = run_wrk(
        wrk, scripts, "live.lua", base + LIVE_PATH, connections=CONNECTIONS, seconds=seconds, env={}
    )
    return Ceilings(statement, http)
