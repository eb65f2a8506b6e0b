"""Files of readings: format by name, rows validated as the API validates them, COPY data.

A file is read in chunks of rows. Each valid row is packed at once into PostgreSQL's binary
COPY format, in the column types of the history tables, and kept by device; a chunk leaves
here as byte strings sorted by (device, time) that asyncpg sends as they are.

Validation takes two paths. Nearly every row of a real file takes the fast one: orjson, exact
type checks, the models' own bounds and id pattern (read from `ingest/models.py` below), and
caches of the few distinct device ids and timestamps a file holds. A row the fast path is not
sure of (a missing or unknown field, a string for a number, a timestamp written another way,
a value out of range, malformed JSON) goes to the referee: the API's Pydantic models, which
accept it or say why not in the API's own words, so every error message is the API's. On the
development machine Pydantic's validation alone takes about 4.2 µs a row, the fast path's
parsing, checks and packing together about 2.9 µs, and the reader shares two cores with
PostgreSQL. tests/unit/test_import_files.py checks that the fast path accepts nothing the
models reject and packs the models' values.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import re
import struct
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from energy_engine.bounds import duration_text
from energy_engine.errors import reason_of
from energy_engine.ingest.models import AnyReading, MeterReading, VehicleReading
from energy_engine.settings import Settings

Format = Literal["csv", "ndjson"]
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}

# More problems than this in one chunk and reading stops: the file needs fixing first.
MAX_PROBLEMS = 20

# The columns of a stream's rows in the order they are packed: the history table's own names.
METER_COLUMNS = ("read_at", "kwh_consumed_ac", "voltage", "meter_id")
VEHICLE_COLUMNS = ("read_at", "soc", "kwh_delivered_dc", "battery_temp", "vehicle_id")
METER_HOUR_COLUMNS = ("hour", "meter_id")
VEHICLE_HOUR_COLUMNS = ("hour", "vehicle_id")

# Binary COPY: a signature and header, then per row the field count and (length, value) for
# each field, then -1. The device id, the one variable-length field, is packed last.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # hour-aligned, so hours align in microseconds
_ONE_MICROSECOND = timedelta(microseconds=1)
_ONE_HOUR = 3_600_000_000  # microseconds
_HOUR_ROW = struct.Struct("!hiq")  # (hour, device id): an hour whose rollup may need redoing
# The struct code, byte size and underflow limit of the float types a history column may have:
# PostgreSQL refuses to cast a double to `real` when it would round to zero (2^-150 and less).
_FLOAT_TYPES = {"double precision": ("d", 8, 0.0), "real": ("f", 4, 2.0**-150)}

# The one timestamp spelling the fast path parses itself (with `datetime.fromisoformat`, which
# reads it exactly as Pydantic does); every other spelling is the referee's to judge.
_FAST_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
# A number as JSON writes it: what a CSV cell must look like to be read as one.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

Referee = TypeAdapter[MeterReading | VehicleReading]
_ANY_READING: Referee = TypeAdapter(AnyReading)
_METER_READING: Referee = TypeAdapter(MeterReading)
_VEHICLE_READING: Referee = TypeAdapter(VehicleReading)
_STREAM_TAGS = ("meter", "vehicle")


def _bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The closed range a float field of `model` allows, from its `Field(ge=, le=)`."""
    low, high = -math.inf, math.inf
    for constraint in model.model_fields[name].metadata:
        if (ge := getattr(constraint, "ge", None)) is not None:
            low = float(ge)
        elif (le := getattr(constraint, "le", None)) is not None:
            high = float(le)
        else:  # a new kind of rule (gt, multiple_of, …) must be taught to the fast path
            raise TypeError(f"{model.__name__}.{name}: the importer does not know {constraint!r}")
    # Finite bounds, so that a range check also rejects infinities (the models forbid them).
    return max(low, -sys.float_info.max), min(high, sys.float_info.max)


def _id_pattern(model: type[BaseModel], name: str) -> re.Pattern[str]:
    (constraint,) = model.model_fields[name].metadata
    pattern: str = constraint.pattern
    return re.compile(pattern)


_DEVICE_ID = _id_pattern(MeterReading, "meter_id")
assert _DEVICE_ID == _id_pattern(VehicleReading, "vehicle_id"), "one id rule for both streams"
_KWH_AC = _bounds(MeterReading, "kwh_consumed_ac")
_VOLTAGE = _bounds(MeterReading, "voltage")
_SOC = _bounds(VehicleReading, "soc")
_KWH_DC = _bounds(VehicleReading, "kwh_delivered_dc")
_BATTERY_TEMP = _bounds(VehicleReading, "battery_temp")

METER_FIELDS = tuple(f.alias or n for n, f in MeterReading.model_fields.items())
VEHICLE_FIELDS = tuple(f.alias or n for n, f in VehicleReading.model_fields.items())
_NUMBER_FIELDS = frozenset(
    f.alias or n
    for model in (MeterReading, VehicleReading)
    for n, f in model.model_fields.items()
    if f.annotation is float
)


class UnsupportedFile(ValueError):
    """A file whose name does not say CSV or NDJSON."""


class UnreadableFile(Exception):
    """A file that cannot be read to its end (gone, truncated, not gzip after all)."""


def file_format(path: Path) -> tuple[Format, bool]:
    """The format a file's name announces, and whether it is gzip-compressed."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes.pop()
    found = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise UnsupportedFile(
            f"{path}: name it *.csv, *.ndjson or *.jsonl, optionally followed by .gz"
        )
    return found, compressed


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one row (or a CSV header) cannot be imported."""

    path: Path
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}"
        return f"{where}, {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class InvalidRows(Exception):
    """Rows that failed validation; nothing of the chunk that holds them gets stored."""

    def __init__(self, problems: list[Problem], first_line: int) -> None:
        self.problems = problems
        self.path = problems[0].path
        self.first_line = first_line
        super().__init__(f"{len(problems)} invalid rows in {self.path}")


@dataclass(frozen=True, slots=True)
class Layout:
    """How one stream's rows are packed for a binary COPY into tables shaped like its history.

    Binary COPY takes every value in its column's exact type, so the float columns' types come
    from the database (`store.history_layouts`). Packing a double as `real` rounds it as
    PostgreSQL's cast from double does.
    """

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


def _micros(at: datetime) -> int:
    """PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC."""
    return (at - _PG_EPOCH) // _ONE_MICROSECOND


def _id_field(device_id: str) -> bytes:
    raw = device_id.encode("ascii")
    return struct.pack("!i", len(raw)) + raw


def _id_of_field(field: bytes) -> bytes:
    return field[4:]


class _Staged:
    """One stream's packed rows of a chunk, kept by device so that they leave sorted by device
    and time: the order the merge inserts in, so PostgreSQL's sort (which checks for sorted
    input first) costs one pass, and the order a COPY straight into history needs."""

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
        copy, ends, hours = [_COPY_HEADER], [_COPY_HEADER], [_COPY_HEADER]
        oldest = sys.maxsize
        # Ids are ASCII, so byte order is the order of PostgreSQL's C and C.UTF-8 collations;
        # under another collation the merge's sort merely does all the work.
        for device in sorted(self.by_device, key=_id_of_field):
            times, rows = self.by_device[device]
            if not self.in_order:
                rows = _first_by_time(times, rows)
            copy += rows
            ends += [rows[i] for i in sorted({0, max(len(rows) - 2, 0), len(rows) - 1})]
            hours += [
                _HOUR_ROW.pack(2, 8, hour) + device
                for hour in sorted({t - t % _ONE_HOUR for t in times})
            ]
            oldest = min(oldest, min(times))
        kept = len(copy) - 1
        for parts in (copy, ends, hours):
            parts.append(_COPY_TRAILER)
        return Batch(
            self.read,
            kept,
            b"".join(copy),
            b"".join(ends),
            b"".join(hours),
            _PG_EPOCH + oldest * _ONE_MICROSECOND,
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


class _Encoder:
    """Validates rows and packs them into one chunk's COPY data at a time."""

    def __init__(self, settings: Settings, layouts: tuple[Layout, Layout]) -> None:
        self.settings = settings
        self.meter_row, self.vehicle_row = layouts[0].row.pack, layouts[1].row.pack
        self.meter_sizes, self.vehicle_sizes = layouts[0].sizes, layouts[1].sizes
        self.meter_tiny, self.vehicle_tiny = layouts[0].tiny, layouts[1].tiny
        self.ids: dict[str, bytes] = {}  # device id -> its packed COPY field
        self.start_chunk()

    def start_chunk(self) -> None:
        """Empty payloads; time limits from the clock now, as the API takes them per request."""
        now = datetime.now(UTC)
        self.oldest = _micros(now - self.settings.max_reading_age)
        self.latest = _micros(now + self.settings.max_future_skew)
        # Per chunk, so that the days this chunk spans can be read off the cache's misses.
        self.stamps: dict[str, int] = {}
        self.low, self.high = sys.maxsize, -sys.maxsize
        self.meters = _Staged()
        self.vehicles = _Staged()
        self.problems: list[Problem] = []
        if len(self.ids) > 1_000_000:  # a file of endless distinct ids should not grow memory
            self.ids.clear()

    def meter(self, item: dict[str, Any], line: int) -> bool:
        """Pack a meter reading the fast path is sure of; False leaves it to the referee."""
        kwh = item.get("kwhConsumedAc")
        voltage = item.get("voltage")
        tiny_kwh, tiny_voltage = self.meter_tiny
        if (
            len(item) != 4
            or (type(kwh) is not float and type(kwh) is not int)  # bool is no number
            or (type(voltage) is not float and type(voltage) is not int)
            or not (_KWH_AC[0] <= kwh <= _KWH_AC[1] and _VOLTAGE[0] <= voltage <= _VOLTAGE[1])
            or not (kwh == 0 or kwh > tiny_kwh or kwh < -tiny_kwh)
            or not (voltage == 0 or voltage > tiny_voltage or voltage < -tiny_voltage)
        ):
            return False
        device = self.ids.get(item.get("meterId"))  # type: ignore[arg-type]
        if device is None and (device := self._device(item.get("meterId"))) is None:
            return False
        micros = self.stamps.get(item.get("timestamp"))  # type: ignore[arg-type]
        if micros is None and (micros := self._timestamp(item.get("timestamp"))) is None:
            return False
        size_kwh, size_voltage = self.meter_sizes
        row = self.meter_row(4, 8, micros, size_kwh, kwh, size_voltage, voltage)
        self.meters.add(device, micros, row + device)
        return True

    def vehicle(self, item: dict[str, Any], line: int) -> bool:
        """Pack a vehicle reading the fast path is sure of; False leaves it to the referee."""
        soc = item.get("soc")
        kwh = item.get("kwhDeliveredDc")
        temp = item.get("batteryTemp")
        tiny_soc, tiny_kwh, tiny_temp = self.vehicle_tiny
        if (
            len(item) != 5
            or (type(soc) is not float and type(soc) is not int)
            or (type(kwh) is not float and type(kwh) is not int)
            or (type(temp) is not float and type(temp) is not int)
            or not (
                _SOC[0] <= soc <= _SOC[1]
                and _KWH_DC[0] <= kwh <= _KWH_DC[1]
                and _BATTERY_TEMP[0] <= temp <= _BATTERY_TEMP[1]
            )
            or not (soc == 0 or soc > tiny_soc or soc < -tiny_soc)
            or not (kwh == 0 or kwh > tiny_kwh or kwh < -tiny_kwh)
            or not (temp == 0 or temp > tiny_temp or temp < -tiny_temp)
        ):
            return False
        device = self.ids.get(item.get("vehicleId"))  # type: ignore[arg-type]
        if device is None and (device := self._device(item.get("vehicleId"))) is None:
            return False
        micros = self.stamps.get(item.get("timestamp"))  # type: ignore[arg-type]
        if micros is None and (micros := self._timestamp(item.get("timestamp"))) is None:
            return False
        size_soc, size_kwh, size_temp = self.vehicle_sizes
        row = self.vehicle_row(5, 8, micros, size_soc, soc, size_kwh, kwh, size_temp, temp)
        self.vehicles.add(device, micros, row + device)
        return True

    def _device(self, value: object) -> bytes | None:
        if type(value) is not str or not _DEVICE_ID.fullmatch(value):
            return None
        field = self.ids[value] = _id_field(value)
        return field

    def _timestamp(self, value: object) -> int | None:
        if type(value) is not str or not _FAST_TIMESTAMP.fullmatch(value):
            return None
        try:
            micros = _micros(datetime.fromisoformat(value))
        except ValueError:  # 2026-02-30 and the like: the referee words the error
            return None
        if not self.oldest <= micros <= self.latest:
            return None
        self._note_time(micros)
        self.stamps[value] = micros
        return micros

    def _note_time(self, micros: int) -> None:
        if micros < self.low:
            self.low = micros
        if micros > self.high:
            self.high = micros

    def referee(
        self, path: Path, line: int, text: bytes | str, referee: Referee = _ANY_READING
    ) -> bool:
        """Judge a row with the API's models: pack it, or record why not; False if not packed."""
        try:
            reading = referee.validate_json(text)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                loc = list(error["loc"])
                if loc and loc[0] in _STREAM_TAGS:
                    loc.pop(0)
                field = ".".join(str(part) for part in loc) or None
                self.problems.append(Problem(path, line, field, reason_of(error)))
            return False
        micros = _micros(reading.timestamp)
        # The same limits and words as the API's `ingest/parse.py`.
        if micros > self.latest:
            reason = f"more than {duration_text(self.settings.max_future_skew)} in the future"
            self.problems.append(Problem(path, line, "timestamp", reason))
            return False
        if micros < self.oldest:
            reason = f"older than the maximum age of {duration_text(self.settings.max_reading_age)}"
            self.problems.append(Problem(path, line, "timestamp", reason))
            return False
        values: tuple[float, ...]
        names: tuple[str, ...]
        if isinstance(reading, MeterReading):
            values = (reading.kwh_consumed_ac, reading.voltage)
            names, tiny, sizes = ("kwhConsumedAc", "voltage"), self.meter_tiny, self.meter_sizes
        else:
            values = (reading.soc, reading.kwh_delivered_dc, reading.battery_temp)
            names = ("soc", "kwhDeliveredDc", "batteryTemp")
            tiny, sizes = self.vehicle_tiny, self.vehicle_sizes
        unstorable = [
            Problem(path, line, name, "too close to 0 for the history column (real); write 0")
            for name, value, limit in zip(names, values, tiny, strict=True)
            if value != 0 and -limit <= value <= limit
        ]
        if unstorable:  # the API takes such a value and then fails to store it
            self.problems += unstorable
            return False
        self._note_time(micros)
        fields = [x for pair in zip(sizes, values, strict=True) for x in pair]
        if isinstance(reading, MeterReading):
            device = self.ids.get(reading.meter_id) or _id_field(reading.meter_id)
            self.meters.add(device, micros, self.meter_row(4, 8, micros, *fields) + device)
        else:
            device = self.ids.get(reading.vehicle_id) or _id_field(reading.vehicle_id)
            self.vehicles.add(device, micros, self.vehicle_row(5, 8, micros, *fields) + device)
        return True

    def take(self, path: Path, first_line: int, last_line: int, last_of_file: bool) -> Chunk:
        """The chunk read so far, or InvalidRows; starts the next chunk."""
        if self.problems:
            raise InvalidRows(self.problems, first_line)
        days: tuple[date | None, date | None] = (None, None)
        if self.meters.read or self.vehicles.read:
            days = (
                (_PG_EPOCH + self.low * _ONE_MICROSECOND).date(),
                (_PG_EPOCH + self.high * _ONE_MICROSECOND).date(),
            )
        chunk = Chunk(
            path=path,
            first_line=first_line,
            last_line=last_line,
            meters=self.meters.batch(),
            vehicles=self.vehicles.batch(),
            first_day=days[0],
            last_day=days[1],
            last_of_file=last_of_file,
        )
        self.start_chunk()
        return chunk


ReadProgress = Callable[[Path, int, int], None]
"""Called now and then with a file, the bytes of it read so far and the rows read so far."""

_REPORT_EVERY = 0x3FFF  # lines between progress reports, minus one
# Lines between explicit releases of the GIL, minus one. Reading runs in a thread while the
# event loop sends the chunk before it to PostgreSQL; without these releases the event loop
# thread waited up to 0.4 s at a time to get the GIL back after a socket call (measured with a
# 1 ms asyncio.sleep beside the reader: 381 ms worst wake-up, 37 ms with them), and PostgreSQL
# waited with it. About 3 ms of reading between two releases.
_YIELD_EVERY = 0x3FF


def _ndjson_chunks(
    path: Path,
    lines: Iterable[bytes],
    encoder: _Encoder,
    chunk_rows: int,
    report: Callable[[int], None],
) -> Iterator[Chunk]:
    meter, vehicle, loads = encoder.meter, encoder.vehicle, orjson.loads
    first = 1
    line = rows = in_chunk = 0
    for line, text in enumerate(lines, 1):
        try:
            item = loads(text)
            stored = type(item) is dict and (
                meter(item, line) if "meterId" in item else vehicle(item, line)
            )
        except (orjson.JSONDecodeError, TypeError):  # TypeError: an unhashable id or timestamp
            stored = False
        if not stored:
            if text.isspace():  # blank lines (a trailing one, above all) hold nothing
                continue
            stored = encoder.referee(path, line, text)
        if stored:
            rows += 1
            in_chunk += 1
        elif len(encoder.problems) >= MAX_PROBLEMS:
            break
        if not line & _YIELD_EVERY:
            time.sleep(0)  # see _YIELD_EVERY
        if not line & _REPORT_EVERY:
            report(rows)
        if in_chunk >= chunk_rows:
            yield encoder.take(path, first, line, last_of_file=False)
            first = line + 1
            in_chunk = 0
    report(rows)
    yield encoder.take(path, first, max(line, first), last_of_file=True)


def _csv_header(path: Path, header: list[str]) -> tuple[Callable[..., bool], Referee]:
    """The fast check and the referee for a CSV file's stream, or InvalidRows."""
    columns = set(header)
    if ("meterId" in columns) == ("vehicleId" in columns):
        problem = Problem(path, 1, None, "the header must name meterId or vehicleId, not both")
        raise InvalidRows([problem], 1)
    fields = METER_FIELDS if "meterId" in columns else VEHICLE_FIELDS
    problems = [Problem(path, 1, name, "missing column") for name in fields if name not in columns]
    problems += [
        Problem(path, 1, name, "not a column of this stream (Extra inputs are not permitted)")
        for name in header
        if name not in fields
    ]
    problems += [
        Problem(path, 1, name, "column named twice")
        for name in sorted(columns)
        if header.count(name) > 1
    ]
    if problems:
        raise InvalidRows(problems, 1)
    if "meterId" in columns:
        return _Encoder.meter, _METER_READING
    return _Encoder.vehicle, _VEHICLE_READING


def _csv_item(header: Sequence[str], cells: Sequence[str]) -> dict[str, Any] | None:
    """A CSV row as the JSON object it stands for, numbers parsed; None if any cell is odd."""
    item: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if name in _NUMBER_FIELDS:
            if not _JSON_NUMBER.fullmatch(cell):
                return None
            item[name] = float(cell)
        else:
            item[name] = cell
    return item


def _csv_as_json(header: Sequence[str], cells: Sequence[str]) -> str:
    """The JSON object a CSV row stands for, for the referee: an empty cell is a missing field,
    a cell that is not a JSON number stays a string (and is refused as one)."""
    parts = []
    for name, cell in zip(header, cells, strict=False):
        if cell == "":
            continue
        if name in _NUMBER_FIELDS and _JSON_NUMBER.fullmatch(cell):
            parts.append(f'"{name}":{cell}')
        else:
            parts.append(f'"{name}":{orjson.dumps(cell).decode()}')
    return "{" + ",".join(parts) + "}"


def _csv_chunks(
    path: Path, stream: IO[bytes], encoder: _Encoder, chunk_rows: int, report: Callable[[int], None]
) -> Iterator[Chunk]:
    with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as text:
        yield from _csv_rows(path, csv.reader(text, strict=True), encoder, chunk_rows, report)


def _csv_rows(
    path: Path,
    reader: Any,
    encoder: _Encoder,
    chunk_rows: int,
    report: Callable[[int], None],
) -> Iterator[Chunk]:
    try:
        header = next(reader)
    except StopIteration:
        yield encoder.take(path, 1, 1, last_of_file=True)
        return
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InvalidRows([Problem(path, 1, None, f"not a CSV header: {exc}")], 1) from None
    fast, referee = _csv_header(path, header)
    first = 2
    line = rows = in_chunk = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except (csv.Error, UnicodeDecodeError) as exc:
            encoder.problems.append(Problem(path, reader.line_num + 1, None, f"not CSV: {exc}"))
            break
        line = reader.line_num
        if not cells:
            continue
        if len(cells) != len(header):
            reason = f"{len(cells)} cells where the header names {len(header)} columns"
            encoder.problems.append(Problem(path, line, None, reason))
            stored = False
        else:
            item = _csv_item(header, cells)
            stored = (item is not None and fast(encoder, item, line)) or encoder.referee(
                path, line, _csv_as_json(header, cells), referee
            )
        if stored:
            rows += 1
            in_chunk += 1
        elif len(encoder.problems) >= MAX_PROBLEMS:
            break
        if not line & _YIELD_EVERY:
            time.sleep(0)  # see _YIELD_EVERY
        if not line & _REPORT_EVERY:
            report(rows)
        if in_chunk >= chunk_rows:
            yield encoder.take(path, first, line, last_of_file=False)
            first = line + 1
            in_chunk = 0
    report(rows)
    yield encoder.take(path, first, max(line, first), last_of_file=True)


def read_chunks(
    paths: Sequence[Path],
    settings: Settings,
    chunk_rows: int,
    layouts: tuple[Layout, Layout] = DOUBLE_LAYOUTS,
    progress: ReadProgress | None = None,
) -> Generator[Chunk, None, None]:
    """Validated chunks of at most `chunk_rows` readings, file after file, packed for
    history tables of these (meter, vehicle) layouts.

    Every file ends with a chunk flagged `last_of_file` (empty when the file's rows filled the
    chunks before it). Raises InvalidRows at the first chunk holding an invalid row.
    """
    encoder = _Encoder(settings, layouts)
    for path in paths:
        found, compressed = file_format(path)
        try:
            with contextlib.ExitStack() as opened:
                raw = opened.enter_context(path.open("rb"))

                def report(rows: int, path: Path = path, raw: IO[bytes] = raw) -> None:
                    if progress is not None:
                        progress(path, raw.tell(), rows)

                stream: IO[bytes] = raw
                if compressed:  # buffered again so that lines are split in C, not in GzipFile
                    gunzip = gzip.GzipFile(fileobj=raw, mode="rb")
                    stream = opened.enter_context(io.BufferedReader(gunzip, 1 << 20))
                if found == "ndjson":
                    yield from _ndjson_chunks(path, stream, encoder, chunk_rows, report)
                else:
                    yield from _csv_chunks(path, stream, encoder, chunk_rows, report)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise UnreadableFile(f"{path}: {exc}") from exc
