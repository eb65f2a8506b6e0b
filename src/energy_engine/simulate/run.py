"""The `energy-engine simulate` command: a fleet sent to the API (or written to files) at the
chosen pace, with a progress display and a summary."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from energy_engine.auth import keyfile
from energy_engine.settings import Settings
from energy_engine.simulate.files import assignments_path, write_files
from energy_engine.simulate.fleet import MINUTE, Fleet, FleetConfig, floor_minute
from energy_engine.simulate.publish import publisher
from energy_engine.simulate.send import GaveUp, simulate
from energy_engine.simulate.stats import Observer, Stats

# The API refuses readings older than 30 days; keep the oldest minute clear of that edge.
MAX_BACKFILL = timedelta(days=30) - timedelta(minutes=10)
DEFAULT_REPLAY_DAYS = 1.0  # the history --rate and --speedup replay without --backfill


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f}/s", style="progress.data.speed")


@contextlib.contextmanager
def _progress(console: Console, total: int | None, sending: bool) -> Iterator[Observer]:
    """A progress display; the observer it yields updates it from the running totals."""
    fields = (
        "ok {task.fields[accepted]:,} dup {task.fields[duplicates]:,} "
        "rejected {task.fields[rejected]:,} plug-ins {task.fields[assignments]:,}"
        if sending
        else "plug-ins {task.fields[assignments]:,}"
    )
    columns: list[ProgressColumn] = [TextColumn("[progress.description]{task.description}")]
    if total is not None:
        columns.append(BarColumn(bar_width=20))
    columns += [
        TextColumn("{task.completed:,.0f}"),
        _Rate(),
        TextColumn(fields),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(
            "sending" if sending else "writing",
            total=total,
            accepted=0,
            duplicates=0,
            rejected=0,
            assignments=0,
        )

        def observe(stats: Stats) -> None:
            progress.update(
                task,
                completed=stats.answered if sending else stats.readings,
                accepted=stats.accepted,
                duplicates=stats.duplicates,
                rejected=stats.rejected,
                assignments=stats.assignments,
            )

        yield observe


async def _ready(client: httpx.AsyncClient) -> None:
    try:
        response = await client.get("/health/ready")
    except httpx.TransportError as exc:
        raise GaveUp(f"cannot reach {client.base_url}: {exc!r}") from None
    if response.status_code != 200:
        raise GaveUp(f"{client.base_url} is not ready: {response.status_code} {response.text}")


async def _send(
    url: str,
    api_key: str | None,
    fleet: Fleet,
    concurrency: int,
    mqtt: tuple[str, Settings] | None,
    **options: Any,
) -> None:
    """Send until done, Ctrl-C or SIGTERM (both stop the run as asyncio stops it on Ctrl-C:
    by cancelling it; the totals so far still get printed)."""
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    timeout = httpx.Timeout(60.0, connect=5.0)  # a 10,000-reading batch under load takes a while
    limits = httpx.Limits(max_connections=concurrency + 1)
    try:
        async with httpx.AsyncClient(
            base_url=url, timeout=timeout, limits=limits, headers=keyfile.headers(api_key)
        ) as client:
            await _ready(client)
            if mqtt is None:
                await simulate(client, fleet, concurrency=concurrency, **options)
                return
            async with publisher(*mqtt) as readings:
                await simulate(
                    client, fleet, concurrency=concurrency, send_readings=readings.send, **options
                )
    except asyncio.CancelledError:
        if not terminated:
            raise


def run(
    config: FleetConfig,
    *,
    url: str,
    api_key: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    backfill_days: float | None = None,
    batch_size: int = 1000,
    concurrency: int = 4,
    out: Path | None = None,
    console: Console | None = None,
    mqtt: tuple[str, Settings] | None = None,
) -> Stats:
    """The `energy-engine simulate` command: send (or write) the fleet, show progress, sum up.
    `mqtt` (broker URL, settings with the topic prefix and TLS files): publish the readings
    there instead of POSTing them."""
    console = console or Console(stderr=True)
    paced = rate is not None or speedup is not None
    if backfill_days is None:
        # Simulated time never runs past the wall clock, so a faster pace needs history.
        backfill_days = DEFAULT_REPLAY_DAYS if paced else 0.0
        flat_out = False
    else:
        flat_out = not paced  # a backfill alone runs as fast as it can and stops at now
    now = floor_minute(datetime.now(UTC))
    history = min(timedelta(days=backfill_days), MAX_BACKFILL) // MINUTE * MINUTE
    fleet = Fleet(config, now - history)
    if rate is not None:
        speedup = rate * 60 / max(1, fleet.devices)
    end = now if flat_out else None
    total = fleet.devices * (history // MINUTE + 1) if end else None
    stats = Stats()
    started = time.monotonic()
    with _progress(console, total, sending=out is None) as observe:
        if out is not None:
            stop = threading.Event()  # SIGTERM: end the files after the current minute
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                write_files(fleet, now, out, stats=stats, observe=observe, stop=stop)
            finally:
                signal.signal(signal.SIGTERM, previous)
        else:
            options = {"end": end, "speedup": speedup, "batch_size": batch_size}
            try:
                asyncio.run(
                    _send(
                        url,
                        api_key,
                        fleet,
                        concurrency,
                        mqtt,
                        stats=stats,
                        observe=observe,
                        **options,
                    )
                )
            except KeyboardInterrupt:
                pass  # live runs end with Ctrl-C; the totals still get printed
            except GaveUp as exc:
                stats.fail(str(exc))
    _summarise(console, stats, time.monotonic() - started, out)
    return stats


def _summarise(console: Console, stats: Stats, seconds: float, out: Path | None) -> None:
    rate = stats.readings / seconds if seconds else 0.0
    console.print(f"{stats.readings:,} readings in {seconds:,.1f} s ({rate:,.0f} readings/s)")
    if out is not None:
        console.print(f"readings: {out}")
        console.print(f"assignments ({stats.assignments:,}): {assignments_path(out)}")
    else:
        console.print(
            f"readings: accepted {stats.accepted:,}, duplicates {stats.duplicates:,}, "
            f"rejected {stats.rejected:,}"
        )
        console.print(
            f"assignments: created {stats.assignments:,}, "
            f"unchanged {stats.assignments_unchanged:,}, "
            f"conflicting {stats.assignment_conflicts:,}, failed {stats.assignment_errors:,}"
        )
    if stats.first_error:
        console.print(Text("first error: ", style="red") + Text(stats.first_error))
