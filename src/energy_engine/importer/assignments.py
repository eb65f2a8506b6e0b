"""Files of assignments: NDJSON, one POST /v1/assignments body a line, applied in file order.

`energy-engine simulate --out FILE` writes its plug-ins this way beside the readings. A file
is one of assignments when its first row names both a `vehicleId` and a `meterId` (a reading
names one of them). Every row is validated before any is applied; rows are then applied one at
a time exactly as the API applies them (`assignments.store.assign`), because each may close the
assignment before it. A row identical to a stored assignment counts as unchanged, so importing
a file again changes nothing.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError

from energy_engine import db, sql
from energy_engine.assignments import store
from energy_engine.assignments.models import AssignmentRequest
from energy_engine.importer.files import UnreadableFile, file_format
from energy_engine.importer.validation import InvalidRows, Problem
from energy_engine.settings import Settings

queries = sql.load("energy_engine.importer")


@dataclass(slots=True)
class AssignmentReport:
    """What importing one file of assignments did."""

    path: Path
    read: int = 0
    created: int = 0
    unchanged: int = 0

    def line(self) -> str:
        """One line of the summary."""
        return (
            f"{self.path}: {self.read:,} assignments read, {self.created:,} created, "
            f"{self.unchanged:,} unchanged"
        )


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of `path` (gzip or not) with their numbers."""
    _, compressed = file_format(path)
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as lines:
            for number, text in enumerate(lines, 1):
                if not text.isspace():
                    yield number, text
    except (OSError, EOFError) as exc:
        raise UnreadableFile(f"{path}: {exc}") from exc


def holds_assignments(path: Path) -> bool:
    """Whether the NDJSON file `path` is one of assignments (see the module docstring)."""
    if file_format(path)[0] != "ndjson":
        return False
    for _, text in _lines(path):
        try:
            first = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False  # the readings' importer words the error
        return isinstance(first, dict) and "vehicleId" in first and "meterId" in first
    return False


def read_assignments(path: Path, settings: Settings) -> list[tuple[int, AssignmentRequest]]:
    """Every row of `path` validated as the API validates it, or InvalidRows."""
    rows: list[tuple[int, AssignmentRequest]] = []
    problems: list[Problem] = []
    latest = datetime.now(UTC) + settings.max_future_skew
    for number, text in _lines(path):
        try:
            row = AssignmentRequest.model_validate_json(text)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                field = ".".join(str(part) for part in error["loc"]) or None
                problems.append(Problem(path, number, field, error["msg"]))
            continue
        if row.valid_from is not None and row.valid_from > latest:
            problems.append(Problem(path, number, "validFrom", "lies in the future"))
            continue
        rows.append((number, row))
    if problems:
        raise InvalidRows(problems, problems[0].line)
    return rows


async def import_assignments(
    conn: db.Connection, path: Path, rows: list[tuple[int, AssignmentRequest]]
) -> AssignmentReport:
    """Apply `rows` of `path` in order; InvalidRows at the first one that conflicts with the
    stored history (the rows before it stay applied)."""
    report = AssignmentReport(path)
    for number, row in rows:
        report.read += 1
        stored = row.valid_from is not None and await conn.fetchval(
            queries.assignment_stored, row.vehicle_id, row.meter_id, row.valid_from
        )
        if stored:
            report.unchanged += 1
            continue
        try:
            _, created = await store.assign(conn, row.vehicle_id, row.meter_id, row.valid_from)
        except store.Conflict as exc:
            problem = Problem(path, number, "validFrom", str(exc) + " (overlaps it)")
            raise InvalidRows([problem], number) from None
        if created:
            report.created += 1
        else:
            report.unchanged += 1
    return report
