"""Two revisions of the engine side by side, interleaved in one run: single-reading POST,
batches of 1,000, the 24 h performance report and the fleet ranking, plus one import and one
rollup catch-up of each (a ratio above 1 is better for the new revision in every row). Figures
from different days differ by up to a third on a shared machine; ratios from one interleaved run
do not.

    git worktree add /tmp/base <revision>
    .venv/bin/python -m benchmarks.compare --base /tmp/base/src --new src --rounds 3

One revision against itself under other settings: `--base src --new src --base-env
ENERGY_AUTH=off --loads single --fleet-requests 0` (authentication's cost on the hot path).

Each revision runs against its own database on one embedded PostgreSQL, seeded with the same
simulated fleet (1,000 meters and vehicles × 24 h) through its own `import`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from benchmarks import harness
from benchmarks.fleet import rollups_caught_up
from benchmarks.scenarios import post_assignments, vacuum
from energy_engine import db

SCRIPTS = Path(__file__).resolve().parent
LOADS = [
    # (name, script, connections, readings per request)
    ("single POST", "single.lua", 64, 1),
    ("batch of 1,000", "batch.lua", 8, 1000),
    ("24 h report", "analytics.lua", 10, 0),
]


def _cli(src: str, *args: str, database_url: str | None = None) -> float:
    """Run the engine's command from `src`; the seconds it took."""
    env = {**os.environ, "PYTHONPATH": src}
    if database_url:
        env["DATABASE_URL"] = database_url
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "energy_engine.cli", *args], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - began


def _fleet_ms(base: str, requests: int) -> dict[str, float]:
    """Median milliseconds of the fleet ranking over the default window (the last 24 whole
    hours) and over a day starting at half past an hour, `requests` sequential requests each."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    windows = {
        "fleet, default window": {},
        "fleet, half-past day": {
            "from": (hour - timedelta(hours=23, minutes=30)).isoformat(),
            "to": hour.isoformat(),
        },
    }
    medians = {}
    with httpx.Client(base_url=base, timeout=60, headers=harness.api_headers()) as http:
        for label, params in windows.items():
            times = []
            for _ in range(requests):
                began = time.perf_counter()
                response = http.get("/v1/analytics/fleet", params=params)
                if response.status_code != 200:  # e.g. 503 database_timeout: said, not timed
                    print(f"{label}: {response.status_code} {response.text[:200]}", flush=True)
                    continue
                times.append((time.perf_counter() - began) * 1000)
            medians[label] = statistics.median(times) if times else float("nan")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="src/ of the revision compared against")
    parser.add_argument("--new", required=True, help="src/ of the revision measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--fleet-requests", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the results as Markdown here")
    parser.add_argument(
        "--base-env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for the base revision's engine only (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--loads", default="single,batch,report",
        help="which wrk loads to run, of single, batch, report (comma-separated)",
    )  # fmt: skip
    options = parser.parse_args()
    base_env = dict(item.split("=", 1) for item in options.base_env)
    chosen = options.loads.split(",")
    loads = [load for load, key in zip(LOADS, ("single", "batch", "report"), strict=True)
             if key in chosen]  # fmt: skip
    trees = {"base": str(Path(options.base).resolve()), "new": str(Path(options.new).resolve())}
    wrk = harness.ensure_wrk()
    results: dict[tuple[str, str], list[harness.WrkRun]] = {}
    once: dict[tuple[str, str], float] = {}  # readings/s of the import and the rollup catch-up
    fleet_ms: dict[tuple[str, str], list[float]] = {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="energy-compare-") as work:
        fleet = Path(work) / "fleet.ndjson"
        _cli(trees["new"], "simulate", "--meters", "1000", "--vehicles", "1000", "--backfill",
             "1", "--out", str(fleet), "--seed", "7")  # fmt: skip
        with db.embedded_postgres(Path(work) / "pgdata", cleanup=True) as admin:
            urls = {}
            readings = sum(1 for _ in fleet.open(encoding="utf-8"))
            for name, src in trees.items():
                database = f"compare_{name}_{uuid.uuid4().hex[:6]}"
                asyncio.run(db.run_statements(admin, f"CREATE DATABASE {database}"))
                urls[name] = db.with_database(admin, database)
                took = _cli(src, "import", str(fleet), "--quiet", database_url=urls[name])
                once[("import", name)] = readings / took
                lines.append(f"import {name:4} {readings:,} readings in {took:.1f} s")
                print(lines[-1], flush=True)
            for round_ in range(options.rounds):
                for name, src in trees.items():
                    os.environ["PYTHONPATH"] = src
                    extra = base_env if name == "base" else {}
                    os.environ.update(extra)
                    log = Path(work) / f"{name}.log"
                    with harness.engine(urls[name], log=log) as base:
                        if round_ == 0:
                            asyncio.run(post_assignments(base, fleet))
                            waited = asyncio.run(rollups_caught_up(urls[name]))
                            once[("rollups", name)] = readings / waited
                            lines.append(f"rollups {name:4} caught up in {waited:.1f} s")
                            print(lines[-1], flush=True)
                            asyncio.run(vacuum(urls[name]))
                        ranked = (
                            _fleet_ms(base, options.fleet_requests)
                            if options.fleet_requests
                            else {}
                        )
                        for label, ms in ranked.items():
                            fleet_ms.setdefault((label, name), []).append(ms)
                            lines.append(f"round {round_ + 1} {name:4} {label:22} p50 {ms:7.1f} ms")
                            print(lines[-1], flush=True)
                        for label, script, connections, _ in loads:
                            env = {
                                "BENCH_PREFIX": f"c{uuid.uuid4().hex[:6]}",
                                "BENCH_BATCH": "1000",
                                "BENCH_VEHICLES": "1000",
                            }
                            run = harness.run_wrk(
                                wrk, SCRIPTS, script, base, connections=connections,
                                seconds=options.seconds, env=env,
                            )  # fmt: skip
                            results.setdefault((label, name), []).append(run)
                            lines.append(
                                f"round {round_ + 1} {name:4} {label:15} {run.per_second:9,.0f} "
                                f"req/s p50 {run.p50_ms:6.2f} ms p99 {run.p99_ms:6.2f} ms "
                                f"errors {run.status_errors}+{run.socket_errors}"
                            )
                            print(lines[-1], flush=True)
                    for variable in extra:
                        os.environ.pop(variable)
    table = ["| load | base (median) | new (median) | new / base |", "|---|---|---|---|"]
    for label, _, _, per_request in loads:
        medians = {}
        for name in trees:
            runs = results[(label, name)]
            rate = statistics.median(r.per_second for r in runs) * max(per_request, 1)
            p99 = statistics.median(r.p99_ms for r in runs)
            medians[name] = (rate, p99)
        unit = "readings/s" if per_request > 1 else "req/s"
        (b_rate, b_p99), (n_rate, n_p99) = medians["base"], medians["new"]
        table.append(
            f"| {label} | {b_rate:,.0f} {unit}, p99 {b_p99:.1f} ms | "
            f"{n_rate:,.0f} {unit}, p99 {n_p99:.1f} ms | {n_rate / b_rate:.2f} |"
        )
    for label in ("fleet, default window", "fleet, half-past day") if fleet_ms else ():
        b_ms, n_ms = (statistics.median(fleet_ms[(label, name)]) for name in ("base", "new"))
        # NaN (every request of a revision failed) prints as nan: the runs below say why.
        table.append(f"| {label} (p50) | {b_ms:,.0f} ms | {n_ms:,.0f} ms | {b_ms / n_ms:.2f} |")
    for key, label in (("import", "import (one run)"), ("rollups", "rollup catch-up (one run)")):
        b_rate, n_rate = once[(key, "base")], once[(key, "new")]
        table.append(
            f"| {label} | {b_rate:,.0f} readings/s | {n_rate:,.0f} readings/s | "
            f"{n_rate / b_rate:.2f} |"
        )
    print("\n" + "\n".join(table))
    if options.out:
        revisions = {name: harness.git_revision(Path(src).parent) for name, src in trees.items()}
        options.out.write_text(
            "# Two revisions, one run\n\n"
            "Generated by `python -m benchmarks.compare`; do not edit by hand, re-run it.\n\n"
            f"- Command: `{shlex.join(['python', *sys.argv])}`\n"
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
            f"- Machine: {harness.machine()}\n"
            f"- Revisions: base {revisions['base']}, new {revisions['new']}"
            + (f" (base with {', '.join(options.base_env)})" if base_env else "")
            + "\n"
            f"- Medians of {options.rounds} interleaved runs of {options.seconds} s each\n\n"
            + "\n".join(table)
            + "\n\n## Runs\n\n```\n"
            + "\n".join(lines)
            + "\n```\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
