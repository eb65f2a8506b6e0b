"""An import run: files read in a worker thread while PostgreSQL stores the chunk before.

The reader thread parses, validates and packs chunk n+1 while the event loop copies and
merges chunk n, so Python and PostgreSQL work at the same time on a two-core machine. Chunks
commit one by one in file order; an invalid row stops the run before its chunk is written,
and the summary says what was committed until then. Re-running the same files is safe: every
reading already stored counts as a duplicate.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from energy_engine import db
from energy_engine.assignments.models import AssignmentRequest
from energy_engine.importer.assignments import (
    AssignmentReport,
    holds_assignments,
    import_assignments,
    read_assignments,
)
from energy_engine.importer.chunks import Chunk
from energy_engine.importer.files import (
    ReadProgress,
    UnreadableFile,
    UnsupportedFile,
    file_format,
    read_chunks,
)
from energy_engine.importer.layout import UnsupportedHistory
from energy_engine.importer.store import (
    ChunkResult,
    Partitions,
    create_staging_tables,
    history_layouts,
    rollups_exist,
    write_chunk,
)
from energy_engine.importer.validation import InvalidRows
from energy_engine.observability import metrics
from energy_engine.settings import Settings

# For the import's session only. Sorting a chunk and holding it in a TEMP table want more
# memory than PostgreSQL's defaults (4 MB, 8 MB); JIT compiling the merge of a large chunk
# costs more than it saves.
SESSION_SETTINGS = {
    "timezone": "UTC",
    "application_name": "energy-engine import",
    "work_mem": "256MB",
    "temp_buffers": "256MB",
    "jit": "off",
}


@dataclass(slots=True)
class FileReport:
    """What importing one file did."""

    path: Path
    read: int = 0
    inserted: int = 0
    seconds: float = 0.0
    appended: int = 0  # chunk streams that took the path for readings all new (store.py)

    @property
    def duplicates(self) -> int:
        """Readings stored before (by an earlier import, the API, or earlier in the file)."""
        return self.read - self.inserted

    def line(self, name: str | None = None) -> str:
        """One line of the summary."""
        rate = self.read / self.seconds if self.seconds else 0.0
        return (
            f"{name or self.path}: {self.read:,} read, {self.inserted:,} inserted, "
            f"{self.duplicates:,} duplicates, {self.seconds:.2f} s, {rate:,.0f} rows/s"
        )


class ImportStopped(Exception):
    """Invalid rows stopped the run; `reports` holds what was committed before them."""

    def __init__(self, cause: InvalidRows, reports: list[FileReport]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.reports = reports


async def import_files(
    conn: db.Connection,
    paths: Sequence[Path],
    settings: Settings,
    *,
    chunk_rows: int,
    progress: ReadProgress | None = None,
) -> list[FileReport]:
    """Import `paths` in order through `conn` (migrated); one report a file."""
    await create_staging_tables(conn)
    rollups = await rollups_exist(conn)
    partitions = Partitions()
    chunks = read_chunks(paths, settings, chunk_rows, await history_layouts(conn), progress)
    reports = [FileReport(path) for path in paths]
    current = 0
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="energy-engine-import") as reader:
        upcoming = loop.run_in_executor(reader, next, chunks, None)
        try:
            while (chunk := await upcoming) is not None:
                upcoming = loop.run_in_executor(reader, next, chunks, None)
                if chunk.first_day is not None and chunk.last_day is not None:
                    await partitions.ensure(conn, chunk.first_day, chunk.last_day)
                written = await write_chunk(conn, chunk, rollups=rollups)
                _count(chunk, written)
                report = reports[current]
                report.read += chunk.rows
                report.inserted += written.inserted
                report.appended += written.appended
                report.seconds = time.perf_counter() - started
                if chunk.last_of_file:
                    current += 1
                    started = time.perf_counter()
        except InvalidRows as exc:
            metrics.count_rejected("import", "unknown", len({p.line for p in exc.problems}))
            raise ImportStopped(exc, reports[: current + 1]) from None
        finally:
            # The reader may be inside a file: let it stop there before the file is closed.
            await asyncio.wait([upcoming])
            if not upcoming.cancelled():
                upcoming.exception()  # retrieved: an error after the first one says nothing new
            chunks.close()
    return reports


def _count(chunk: Chunk, written: ChunkResult) -> None:
    """The chunk's readings in the metrics (transport `import`)."""
    metrics.observe_batch("import", chunk.rows)
    metrics.count_stored("import", "meter", chunk.meters.read, written.meters_inserted)
    metrics.count_stored("import", "vehicle", chunk.vehicles.read, written.vehicles_inserted)


class _RowsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rows: int = task.fields.get("rows", 0)
        rate = rows / task.elapsed if task.elapsed else 0.0
        return Text(f"{rows:,} rows, {rate:,.0f} rows/s")


class _ProgressBar:
    """One rich progress bar per file, fed from the reader thread (bytes and rows read)."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),  # of the file's bytes (compressed ones for .gz)
            _RowsColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[Path, TaskID] = {}

    def __call__(self, path: Path, position: int, rows: int) -> None:
        task = self.tasks.get(path)
        if task is None:
            task = self.tasks[path] = self.bar.add_task(path.name, total=path.stat().st_size)
        self.bar.update(task, completed=position, rows=rows)


async def _import(
    url: str, paths: Sequence[Path], settings: Settings, chunk_rows: int, quiet: bool
) -> list[FileReport]:
    conn = await asyncpg.connect(url, server_settings=SESSION_SETTINGS)
    try:
        await db.prepare(conn, settings)
        if quiet:
            return await import_files(conn, paths, settings, chunk_rows=chunk_rows)
        progress = _ProgressBar(Console(stderr=True))
        with progress.bar:
            return await import_files(
                conn, paths, settings, chunk_rows=chunk_rows, progress=progress
            )
    finally:
        await conn.close()


def _summary(reports: Sequence[FileReport]) -> list[str]:
    lines = [report.line() for report in reports]
    if len(reports) > 1:
        total = FileReport(
            Path("total"),
            read=sum(r.read for r in reports),
            inserted=sum(r.inserted for r in reports),
            seconds=sum(r.seconds for r in reports),
        )
        lines.append(total.line("total"))
    return lines


def run(paths: Sequence[Path], settings: Settings, *, chunk_rows: int, quiet: bool) -> int:
    """The `import` command: import, print a summary; the exit status (2: invalid input)."""
    for path in paths:  # every name checked before anything is stored
        try:
            file_format(path)
        except UnsupportedFile as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    try:
        kinds = [holds_assignments(path) for path in paths]
        readings = [path for path, kind in zip(paths, kinds, strict=True) if not kind]
        plugs = [(path, read_assignments(path, settings)) for path in paths if path not in readings]
    except InvalidRows as exc:
        _print_problems(exc)
        print(f"stopped: nothing was stored; fix {exc.path} and import again", file=sys.stderr)
        return 2
    except UnreadableFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assigned: list[AssignmentReport] = []
    try:
        with db.database_url(settings) as url:
            reports = (
                asyncio.run(_import(url, readings, settings, chunk_rows, quiet)) if readings else []
            )
            if plugs:
                asyncio.run(_assign(url, plugs, settings, assigned))
    except ImportStopped as exc:
        _print_problems(exc.cause)
        print(
            f"stopped: nothing from line {exc.cause.first_line} of {exc.cause.path} on was "
            "stored; fix the file and import it again (readings stored already count as "
            "duplicates)",
            file=sys.stderr,
        )
        for line in _summary(exc.reports):
            print(f"committed before: {line}", file=sys.stderr)
        return 2
    except InvalidRows as exc:  # an assignment overlapping the stored history
        _print_problems(exc)
        print(
            f"stopped: the assignments before line {exc.first_line} of {exc.path} are stored; "
            "importing the file again skips them",
            file=sys.stderr,
        )
        for report in assigned:
            print(f"committed before: {report.line()}", file=sys.stderr)
        return 2
    except (UnreadableFile, UnsupportedHistory) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in _summary(reports):
        print(line)
    for report in assigned:
        print(report.line())
    return 0


def _print_problems(error: InvalidRows) -> None:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)


async def _assign(
    url: str,
    files: Sequence[tuple[Path, list[tuple[int, AssignmentRequest]]]],
    settings: Settings,
    reports: list[AssignmentReport],
) -> None:
    """Apply files of assignments in order, appending a report as each file is done."""
    conn = await asyncpg.connect(url, server_settings=SESSION_SETTINGS)
    try:
        await db.prepare(conn, settings)
        for path, rows in files:
            reports.append(await import_assignments(conn, path, rows))
    finally:
        await conn.close()
