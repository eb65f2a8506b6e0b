"""`python -m benchmarks` (`make bench`): run every benchmark scenario on this machine and
write the results table (benchmarks/RESULTS.md unless --out says otherwise)."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from benchmarks import harness, report, scenarios

HERE = Path(__file__).resolve().parent

cli = typer.Typer(add_completion=False)


@cli.command(help=__doc__)
def bench(
    out: Annotated[
        Path,
        typer.Option(help="Where to write the results.", show_default="benchmarks/RESULTS.md"),
    ] = HERE / "RESULTS.md",
    scripts: Annotated[
        Path, typer.Option(help="The wrk Lua scripts.", show_default="benchmarks/")
    ] = HERE,
    quick: Annotated[
        bool, typer.Option(help="Seconds-long runs at small sizes: checks the bench, not speed.")
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(help="Measure on this PostgreSQL server (default: a fresh embedded one)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Engine processes to measure.")] = 1,
    only: Annotated[
        str | None,
        typer.Option(
            help="Rows to measure, comma-separated (e.g. 18,19,20), with the rows they are "
            "measured against; write them somewhere other than RESULTS.md."
        ),
    ] = None,
) -> None:
    """Run every scenario, write the page to `out` and print it."""
    console = Console(stderr=True)
    # Stopped with SIGTERM, still stop the engine and the embedded PostgreSQL it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="energy-bench-") as work:
        make = scenarios.Options.quick if quick else scenarios.Options
        options = make(scripts=scripts.resolve(), work=Path(work), database_url=database_url)
        rows_wanted = None
        if only is not None:
            try:
                rows_wanted = frozenset(int(row) for row in only.split(","))
            except ValueError:
                typer.echo(
                    f"error: --only takes row numbers such as 18,19,20, not {only!r}", err=True
                )
                raise typer.Exit(2) from None
        options = dataclasses.replace(options, workers=workers, only=rows_wanted)
        try:
            rows, postgres = scenarios.run_all(options, console)
        except harness.BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    page = report.render(
        rows,
        command=shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]]),
        machine=harness.machine(),
        revision=harness.git_revision(HERE.parent),
        postgres=postgres,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    console.print(page)


def main() -> None:
    """Entry point of `python -m benchmarks`."""
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    cli()


if __name__ == "__main__":
    main()
