"""Chunks: a run of one file's validated rows, per stream as COPY data sorted by device and time.

Rows are kept by device as they are packed, so that they leave sorted by (device, time): the
order the history insert takes them in, so PostgreSQL's sort (which checks for sorted input
first) costs one pass, and the order a COPY straight into history needs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from energy_engine.importer.layout import (
    COPY_HEADER,
    COPY_TRAILER,
    HOUR_ROW,
    ONE_HOUR,
    ONE_MICROSECOND,
    PG_EPOCH,
    id_of_field,
)


@dataclass(frozen=True, slots=True)
class Batch:
    """One stream's rows of a chunk as binary COPY data, sorted by device and time."""

    read: int  # valid rows read, repeats of one (device, time) included
    kept: int  # rows in `copy`: the first row of each (device, time)
    copy: bytes
    # Each device's oldest, second newest and newest row of `copy`: enough to tell whether
    # all its rows are newer than its hot row, and to update the hot row when they are.
    ends: bytes
    # The (hour, device) pairs of the rows, for hours whose rollups must be redone.
    hours: bytes
    oldest: datetime | None  # the oldest row's time


@dataclass(frozen=True, slots=True)
class Chunk:
    """Validated rows of lines [first_line, last_line] of one file, ready for COPY."""

    path: Path
    first_line: int
    last_line: int
    meters: Batch
    vehicles: Batch
    first_day: date | None
    last_day: date | None
    last_of_file: bool

    @property
    def rows(self) -> int:
        """Valid readings read, both streams."""
        return self.meters.read + self.vehicles.read


class Staged:
    """One stream's packed rows of a chunk, kept by device (see the module docstring)."""

    def __init__(self) -> None:
        self.by_device: dict[bytes, tuple[list[int], list[bytes]]] = {}
        self.read = 0
        self.in_order = True  # each device's rows came in strictly increasing time

    def add(self, device: bytes, micros: int, row: bytes) -> None:
        """One packed row of `device` (its packed id field) at `micros`."""
        found = self.by_device.get(device)
        if found is None:
            self.by_device[device] = ([micros], [row])
        else:
            times, rows = found
            if micros <= times[-1]:
                self.in_order = False
            times.append(micros)
            rows.append(row)
        self.read += 1

    def batch(self) -> Batch:
        """The rows as binary COPY data, the first of each (device, time) only."""
        if not self.read:
            return Batch(0, 0, b"", b"", b"", None)
        copy, ends, hours = [COPY_HEADER], [COPY_HEADER], [COPY_HEADER]
        oldest = sys.maxsize
        # Ids are ASCII, so byte order is the order of PostgreSQL's C and C.UTF-8 collations;
        # under another collation the merge's sort merely does all the work.
        for device in sorted(self.by_device, key=id_of_field):
            times, rows = self.by_device[device]
            if not self.in_order:
                rows = _first_by_time(times, rows)
            copy += rows
            ends += [rows[i] for i in sorted({0, max(len(rows) - 2, 0), len(rows) - 1})]
            hours += [
                HOUR_ROW.pack(2, 8, hour) + device
                for hour in sorted({t - t % ONE_HOUR for t in times})
            ]
            oldest = min(oldest, min(times))
        kept = len(copy) - 1
        for parts in (copy, ends, hours):
            parts.append(COPY_TRAILER)
        return Batch(
            self.read,
            kept,
            b"".join(copy),
            b"".join(ends),
            b"".join(hours),
            PG_EPOCH + oldest * ONE_MICROSECOND,
        )


def _first_by_time(times: list[int], rows: list[bytes]) -> list[bytes]:
    """`rows` in time order (a stable sort: the first line first), one row per time."""
    kept: list[bytes] = []
    last = None
    for index in sorted(range(len(rows)), key=times.__getitem__):
        if times[index] != last:
            kept.append(rows[index])
            last = times[index]
    return kept
