"""Drive a simulated fleet: post its readings and assignments over HTTP, or write them to files.

Readings go to POST /v1/ingest as mixed batches from a few concurrent requests; a 503 is
retried after its Retry-After. Assignments go to POST /v1/assignments one at a time, in the
order the vehicles plugged in, so none starts before a boundary already recorded.

`write_files` writes the readings as NDJSON (gzip when the name ends in .gz), one API object a
line, and the plug-ins to `assignments_path(file)`, one POST /v1/assignments body a line;
`read_assignments` and `post_assignments` send those once the readings are imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from energy_engine.simulate.fleet import MINUTE, Fleet, FleetConfig, Plug, Reading, floor_minute

JSON = {"content-type": "application/json"}
OVERLOAD_ATTEMPTS = 60  # a 503 asks for 1 s: a minute of overload is worth waiting out
TRANSPORT_ATTEMPTS = 5
# The API refuses readings older than 30 days; keep the oldest minute clear of that edge.
MAX_BACKFILL = timedelta(days=30) - timedelta(minutes=10)
DEFAULT_REPLAY_DAYS = 1.0  # the history --rate and --speedup replay without --backfill
GZIP_LEVEL = 3  # 7 times smaller than the NDJSON, at half the cost of the default level

Observer = Callable[["Stats"], None]


@dataclass(slots=True)
class Stats:
    """What a run produced and what the API answered."""

    readings: int = 0  # generated: sent, or written to the file
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # in batches the API refused, or given up on
    assignments: int = 0  # created (or written to the side file)
    assignments_unchanged: int = 0
    assignment_conflicts: int = 0  # 409: the database already holds later boundaries
    assignment_errors: int = 0
    first_error: str | None = None

    @property
    def answered(self) -> int:
        """Readings the API has answered for."""
        return self.accepted + self.duplicates + self.rejected

    def fail(self, message: str) -> None:
        """Keep the first failure to show at the end."""
        self.first_error = self.first_error or message


class GaveUp(Exception):
    """The API stayed unreachable or overloaded."""


@dataclass(slots=True)
class Pace:
    """Simulated time: `speedup` times real time from `start`, never past the wall clock."""

    start: datetime
    speedup: float | None  # None: as fast as readings can be made
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def wait_for(self, at: datetime) -> float:
        """Seconds until simulated time reaches `at` (0 when it has)."""
        to_wall = (at - datetime.now(UTC)).total_seconds()
        if self.speedup is None:
            return max(0.0, to_wall)
        to_pace = (at - self.start).total_seconds() / self.speedup
        return max(0.0, to_wall, to_pace - (time.monotonic() - self.started))

    async def until(self, at: datetime) -> None:
        """Sleep until simulated time reaches `at`."""
        # The event loop never wakes a sleeper early by more than its clock's resolution.
        await asyncio.sleep(self.wait_for(at))


async def _post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    """POST, retrying a 503 after its Retry-After and a broken connection after a backoff."""
    overloaded = broken = 0
    while True:
        try:
            response = await client.post(path, content=body, headers=JSON)
        except httpx.TransportError as exc:
            broken += 1
            if broken >= TRANSPORT_ATTEMPTS:
                raise GaveUp(f"POST {path}: {exc!r}") from None
            await asyncio.sleep(0.2 * 2**broken)
            continue
        if response.status_code != 503:
            return response
        overloaded += 1
        if overloaded >= OVERLOAD_ATTEMPTS:
            raise GaveUp(f"POST {path}: still overloaded after {overloaded} tries")
        await asyncio.sleep(_retry_after(response))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def post_readings(client: httpx.AsyncClient, readings: list[Reading], stats: Stats) -> None:
    """Send one mixed batch and count the answer."""
    try:
        response = await _post(client, "/v1/ingest", orjson.dumps(readings))
    except GaveUp as exc:
        stats.rejected += len(readings)
        stats.fail(str(exc))
        return
    if response.status_code == 200:
        answer = response.json()
        stats.accepted += answer["accepted"]
        stats.duplicates += answer["duplicates"]
    else:
        stats.rejected += len(readings)
        stats.fail(f"POST /v1/ingest: {response.status_code} {response.text[:500]}")


async def post_assignments(client: httpx.AsyncClient, plugs: Iterable[Plug], stats: Stats) -> None:
    """Send assignments one at a time, in order: each may close the one before it."""
    for plug in plugs:
        try:
            response = await _post(client, "/v1/assignments", orjson.dumps(plug))
        except GaveUp as exc:
            stats.assignment_errors += 1
            stats.fail(str(exc))
            continue
        if response.status_code == 201:
            stats.assignments += 1
        elif response.status_code == 200:
            stats.assignments_unchanged += 1
        elif response.status_code == 409:
            stats.assignment_conflicts += 1
        else:
            stats.assignment_errors += 1
            stats.fail(f"POST /v1/assignments: {response.status_code} {response.text[:500]}")


async def simulate(
    client: httpx.AsyncClient,
    fleet: Fleet,
    *,
    end: datetime | None,
    speedup: float | None = None,
    batch_size: int = 1000,
    concurrency: int = 4,
    stats: Stats | None = None,
    observe: Observer | None = None,
) -> Stats:
    """Step `fleet` through `end` (forever when None) at `speedup`, posting as it goes."""
    stats = stats if stats is not None else Stats()
    batches: asyncio.Queue[list[Reading] | None] = asyncio.Queue(maxsize=2 * concurrency)
    plugs: asyncio.Queue[Plug | None] = asyncio.Queue()

    async def send_batches() -> None:
        while (batch := await batches.get()) is not None:
            await post_readings(client, batch, stats)
            if observe:
                observe(stats)

    async def send_plugs() -> None:
        while (plug := await plugs.get()) is not None:
            await post_assignments(client, [plug], stats)

    async with asyncio.TaskGroup() as tasks:
        senders = [tasks.create_task(send_batches()) for _ in range(concurrency)]
        tasks.create_task(send_plugs())
        pace = Pace(fleet.now, speedup)
        await _produce(fleet, end, pace, batch_size, batches, plugs, stats)
        for _ in senders:
            await batches.put(None)
        plugs.put_nowait(None)
    return stats


async def _produce(
    fleet: Fleet,
    end: datetime | None,
    pace: Pace,
    batch_size: int,
    batches: asyncio.Queue[list[Reading] | None],
    plugs: asyncio.Queue[Plug | None],
    stats: Stats,
) -> None:
    """Step the fleet and queue its readings: full batches, except when waiting for time.

    At the pace of the simulation a minute's readings go out in a few parts spread over the
    minute, as devices would send them, rather than in one burst on the minute.
    """
    pending: list[Reading] = []

    async def flush(everything: bool) -> None:
        while len(pending) >= batch_size or (everything and pending):
            await batches.put(pending[:batch_size])
            del pending[:batch_size]

    while end is None or fleet.now <= end:
        if pace.wait_for(fleet.now) > 0:
            await flush(everything=True)
            await pace.until(fleet.now)
        minute = fleet.step()
        for plug in minute.plugs:
            plugs.put_nowait(plug)
        stats.readings += len(minute.readings)
        parts = max(1, math.ceil(len(minute.readings) / batch_size))
        size = math.ceil(len(minute.readings) / parts)
        for part in range(parts):
            due = minute.at + part * MINUTE / parts
            if pace.wait_for(due) > 0:
                await flush(everything=True)
                await pace.until(due)
            pending.extend(minute.readings[part * size : (part + 1) * size])
            await flush(everything=False)
        await asyncio.sleep(0)  # let the senders run even when no queue is full
    await flush(everything=True)


def assignments_path(path: Path) -> Path:
    """Where the plug-ins of readings file `path` go: sim.ndjson[.gz] -> sim.assignments.ndjson."""
    name = path.name.removesuffix(".gz")
    for suffix in (".ndjson", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    return path.with_name(name + ".assignments.ndjson")


@contextlib.contextmanager
def _open_for_writing(path: Path) -> Iterator[io.BufferedIOBase]:
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=GZIP_LEVEL) as compressed:
            yield compressed
    else:
        with path.open("wb") as plain:
            yield plain


def write_files(
    fleet: Fleet,
    end: datetime,
    path: Path,
    *,
    stats: Stats | None = None,
    observe: Observer | None = None,
    stop: threading.Event | None = None,
) -> Stats:
    """Step `fleet` through `end` (or until `stop` is set), writing readings to `path` and
    plug-ins beside it."""
    stats = stats if stats is not None else Stats()
    line = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
    with _open_for_writing(path) as out, assignments_path(path).open("wb") as side:
        while fleet.now <= end and not (stop and stop.is_set()):
            minute = fleet.step()
            out.write(b"".join([line(reading) for reading in minute.readings]))
            side.write(b"".join([line(plug) for plug in minute.plugs]))
            stats.readings += len(minute.readings)
            stats.assignments += len(minute.plugs)
            if observe:
                observe(stats)
    return stats


def read_assignments(path: Path) -> list[Plug]:
    """The assignment bodies of a side file written by `write_files`, in plug-in order."""
    with path.open("rb") as lines:
        return [orjson.loads(line) for line in lines if line.strip()]


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


async def _send(url: str, fleet: Fleet, concurrency: int, **options: Any) -> None:
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
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            await _ready(client)
            await simulate(client, fleet, concurrency=concurrency, **options)
    except asyncio.CancelledError:
        if not terminated:
            raise


def run(
    config: FleetConfig,
    *,
    url: str,
    rate: float | None = None,
    speedup: float | None = None,
    backfill_days: float | None = None,
    batch_size: int = 1000,
    concurrency: int = 4,
    out: Path | None = None,
    console: Console | None = None,
) -> Stats:
    """The `energy-engine simulate` command: send (or write) the fleet, show progress, sum up."""
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
                asyncio.run(_send(url, fleet, concurrency, stats=stats, observe=observe, **options))
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
