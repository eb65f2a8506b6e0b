"""Binary COPY: how a stream's rows are packed for tables shaped like its history.

A chunk leaves the importer as byte strings in PostgreSQL's binary COPY format, which asyncpg
sends as they are. Binary COPY takes every value in its column's exact type, so the float
columns' types come from the database (`store.history_layouts`); packing a double as `real`
rounds it as PostgreSQL's cast from double does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The columns of a stream's rows in the order they are packed: the history table's own names.
METER_COLUMNS = ("read_at", "kwh_consumed_ac", "voltage", "meter_id")
VEHICLE_COLUMNS = ("read_at", "soc", "kwh_delivered_dc", "battery_temp", "vehicle_id")
METER_HOUR_COLUMNS = ("hour", "meter_id")
VEHICLE_HOUR_COLUMNS = ("hour", "vehicle_id")

# Binary COPY: a signature and header, then per row the field count and (length, value) for
# each field, then -1. The device id, the one variable-length field, is packed last.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # hour-aligned, so hours align in microseconds
ONE_MICROSECOND = timedelta(microseconds=1)
ONE_HOUR = 3_600_000_000  # microseconds
HOUR_ROW = struct.Struct("!hiq")  # (hour, device id): an hour whose rollup may need redoing
# The struct code, byte size and underflow limit of the float types a history column may have:
# PostgreSQL refuses to cast a double to `real` when it would round to zero (2^-150 and less).
_FLOAT_TYPES = {"double precision": ("d", 8, 0.0), "real": ("f", 4, 2.0**-150)}


@dataclass(frozen=True, slots=True)
class Layout:
    """How one stream's rows are packed for a binary COPY into tables shaped like its history."""

    columns: tuple[str, ...]  # read_at, the values, the device id
    row: struct.Struct  # the field count and every field but the id, the lengths included
    sizes: tuple[int, ...]  # byte size of each value
    tiny: tuple[float, ...]  # per value: a magnitude this small, but not 0, does not fit

    @classmethod
    def of(cls, columns: Sequence[str], types: Mapping[str, str]) -> Layout:
        """The layout of `columns` (read_at first, the device id last) given their SQL types."""
        try:
            floats = [_FLOAT_TYPES[types[column]] for column in columns[1:-1]]
        except KeyError as exc:
            raise UnsupportedHistory(
                f"the importer packs double precision and real values; {types}"
            ) from exc
        row = struct.Struct("!hiq" + "".join("i" + code for code, _, _ in floats))
        return cls(
            tuple(columns),
            row,
            tuple(size for _, size, _ in floats),
            tuple(limit for _, _, limit in floats),
        )


class UnsupportedHistory(ValueError):
    """History columns of a type the importer cannot pack."""


# What a history migrated by this package holds; tests and tools without a database use it.
DOUBLE_LAYOUTS = (
    Layout.of(METER_COLUMNS, dict.fromkeys(METER_COLUMNS[1:-1], "double precision")),
    Layout.of(VEHICLE_COLUMNS, dict.fromkeys(VEHICLE_COLUMNS[1:-1], "double precision")),
)


def pg_micros(at: datetime) -> int:
    """PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC."""
    return (at - PG_EPOCH) // ONE_MICROSECOND


def id_field(device_id: str) -> bytes:
    """A device id as a packed COPY field: its length, then its bytes."""
    raw = device_id.encode("ascii")
    return struct.pack("!i", len(raw)) + raw


def id_of_field(field: bytes) -> bytes:
    """The device id of a packed COPY field."""
    return field[4:]
